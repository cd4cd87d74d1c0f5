"""Stage 6, training: the losses, the loop every method shares, and pretraining."""
