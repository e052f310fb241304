"""MLflow: the training run, lineage, the registry, promotion and its audit trail."""
