"""Metrics, calibration, figures, the operating-point search and the decision rule."""
