"""Stage 8, subspaces: extraction, the bank, integration, disentanglement, mining."""
