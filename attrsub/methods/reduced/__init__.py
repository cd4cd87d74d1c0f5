"""The reduced-subspace adapter, dW = U M V^T with frozen bases U, V and only M trained, in
PEFT's three parts: ``config`` (settings), ``layer`` (``ReducedLinear``), ``model``
(injection, saving M, merging), with the bases it can carry beside them (``bases``) and the
three methods built on it (``method``: reduced, psv, random).

PEFT 0.21 has no layer with frozen custom bases and a trainable middle matrix; VeRA is the
closest (frozen projections as buffers, small trained tensors), so this follows its shape.
"""

from attrsub.methods.reduced.bases import basis_hash, named_basis_hash, psv_bases, random_bases
from attrsub.methods.reduced.config import GeneratedBasisConfig, ReducedConfig
from attrsub.methods.reduced.layer import ReducedLinear
from attrsub.methods.reduced.method import WEIGHTS_FILE, Psv, RandomBasis, Reduced
from attrsub.methods.reduced.model import (
    KIND,
    apply_reduced,
    load_reduced,
    merge,
    reduced_layers,
    save_reduced,
    trainable_count,
)

__all__ = [
    "KIND",
    "WEIGHTS_FILE",
    "GeneratedBasisConfig",
    "Psv",
    "RandomBasis",
    "Reduced",
    "ReducedConfig",
    "ReducedLinear",
    "apply_reduced",
    "basis_hash",
    "load_reduced",
    "merge",
    "named_basis_hash",
    "psv_bases",
    "random_bases",
    "reduced_layers",
    "save_reduced",
    "trainable_count",
]
