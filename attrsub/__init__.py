"""attrsub: mine per-factor LoRA subspaces (the paper's attribute subspaces) of a VGGT model.

The sub-packages are the pipeline's stages, in dependency order (``STAGES``): each imports
only the foundation modules (``FOUNDATIONS``) and the stages before it, never one after it,
so the tree reads as the pipeline does (README, "Architecture"). ``cli`` sits on top of
them all. The library never imports Ray; sweeps in ``sweeps/`` fan its functions out.
"""

__version__ = "0.1.0"

STAGES = ("scenes", "data", "model", "eval", "tasks", "train", "adapters", "subspace", "methods")
FOUNDATIONS = ("errors", "checks", "fsio", "storage", "fetch", "size")
