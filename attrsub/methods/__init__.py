"""Stage 9, fine-tuning methods: each one object behind one contract (``base.Method``), so a
sweep swaps them with one string and a new method is one module here.

``none`` (zero-shot), ``full``, ``lora``/``pissa`` (PEFT LoRA of rank r on the frame and
global blocks' four linears), and the basis family on ``reduced/`` (dW = U M V^T, only M
trained): ``reduced`` (a mined bank's bases, integrated from ``factors`` with per-factor
``ranks``, orthogonalised by ``ortho``, optionally truncated to ``total_rank``), ``psv``
(top singular vectors of each pretrained W, the paper's ablation) and ``random`` (seeded
random orthonormal bases). ``finetune`` runs one method on one task; ``export`` writes any
trained adapter as a plain PEFT LoRA folder.

AdaLoRA is not offered: PEFT's AdaLoRA adds its orthogonality regulariser to ``outputs.loss``
inside ``PeftModel.forward``, which our model (a dict of predictions, no ``loss``) does not
have, so it would silently train without it; its rank allocation also needs
``update_and_allocate(step)`` with the gradients still present after every optimiser step,
and a ``total_step`` fixed in the config. Supporting it means a loss hook and a schedule
hook in attrsub.train.loop, which the other methods do not need.
"""

from attrsub.methods.base import Context, Method
from attrsub.methods.finetune import (
    FinetuneSpec,
    check_new_run,
    finetune,
    load_trained,
    run,
)
from attrsub.methods.registry import (
    METHODS,
    PAPER_METHOD,
    REGISTRY,
    check_method,
    get_method,
    prepare,
)

__all__ = [
    "METHODS",
    "PAPER_METHOD",
    "REGISTRY",
    "Context",
    "FinetuneSpec",
    "Method",
    "check_method",
    "check_new_run",
    "finetune",
    "get_method",
    "load_trained",
    "prepare",
    "run",
]
