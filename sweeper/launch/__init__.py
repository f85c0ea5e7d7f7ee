"""Launching jobs on a cluster: the SLURM helpers the launcher plugin uses."""
