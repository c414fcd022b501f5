"""Slurm clusters: one array job per sweep, run with the sweep's image."""
