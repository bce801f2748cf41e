"""Training: state, optimizer, step, data adaptors, checkpoints, metrics and the loop."""
