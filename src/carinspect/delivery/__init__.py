"""Progressive delivery: a rollout's analysis against Prometheus, and the loop that steps it."""
