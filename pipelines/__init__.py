"""The KFP training pipeline: compile, local run, submit."""
