"""Images into training and evaluation.

The torch Dataset, shard streaming, epoch samplers, augmentations and the one shared
preprocessing.
"""
