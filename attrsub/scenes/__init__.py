"""Stage 1, scenes: procedural scene specs, the factor families, and the ray caster."""
