"""One training loop for every model, metrics, floors, checkpoints and run directories."""
