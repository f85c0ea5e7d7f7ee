"""The config of a sweep: the schema Hydra checks, the job spec built from it, and the presets' helpers."""
