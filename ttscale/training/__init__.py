"""Training: optimiser, objectives, the resumable loop, checkpoints."""
