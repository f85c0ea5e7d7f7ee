"""Hydra sweeps around lora_core: plan jobs, name folders, render grids, log to MLflow, sheets and reports."""
