"""The pipeline stages: each a ``run(...)`` the CLI and the KFP components call."""
