"""Stage 1, scenes: procedural scene specs, the attribute families, and the ray caster."""
