"""Fitting a model: the configuration, the loop, checkpoints, the run folder and whole-slice validation."""
