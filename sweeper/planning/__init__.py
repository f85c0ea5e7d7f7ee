"""Planning a sweep: the grid of cells, the plan written before any job runs, and the Hydra callback."""
