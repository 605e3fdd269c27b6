"""Training: precision, distributed runs, checkpoints, the Trainer setup and the task metrics."""
