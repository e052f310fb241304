"""The training loop, DDP launch and rank-aware helpers, multi-node TrainJobs."""
