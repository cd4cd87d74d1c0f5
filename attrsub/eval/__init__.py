"""Stage 4, evaluation: alignment, the paper's metrics, and the evaluation loop."""
