"""The human step of the feedback loop: kept photos reviewed in Label Studio, and back."""
