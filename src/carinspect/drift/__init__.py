"""Drift: how far served photos have moved from the photos a model was trained on."""
