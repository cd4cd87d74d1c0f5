"""Stage 2, data: rendered datasets, bring-your-own folders and the real captures."""
