"""attrsub: mine attribute LoRA subspaces of a VGGT-style 3D foundation model.

The library never imports Ray; sweeps in ``sweeps/`` fan its functions out.
"""

__version__ = "0.1.0"
