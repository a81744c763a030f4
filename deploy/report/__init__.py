"""Evaluation, benchmark, calibration-set sweep and the side-by-side report."""
