"""Stage 7, adapters: the LoRA adapters that mining trains, one per factor dataset."""
