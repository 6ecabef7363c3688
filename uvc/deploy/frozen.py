"""Stage 2's side of the engine's arch_step: the architecture is fixed and removed weights stay
exactly zero."""
from typing import Dict

from uvc.deploy.architecture import Architecture
from uvc.deploy.freeze import apply_spec, param_keep_masks, zero_removed_weights
from uvc.search.masked_model import MaskedViT


class FrozenArchitecture:
    """Stage 2: a fixed spec; removed weights are zeroed and re-zeroed after every step,
    so neither momentum nor weight decay can bring them back. A skipped block takes no part in
    the forward: its parameters are frozen (requires_grad False) before the optimizer and DDP are
    built, which DDP needs (it refuses parameters that get no gradient)."""

    def __init__(self, model: MaskedViT, spec: dict):
        self.spec, self.arch = spec, Architecture.from_dict(spec)
        self.keep = param_keep_masks(model.vit, spec)
        zero_removed_weights(model.vit, self.keep)
        for block, b in zip(model.vit.blocks, self.arch.blocks):
            if b.skipped:
                block.requires_grad_(False)

    def prepare(self, model: MaskedViT, training: bool = True) -> None:
        apply_spec(model, self.spec)

    def step(self, model: MaskedViT, lr: float) -> Dict[str, float]:
        zero_removed_weights(model.vit, self.keep)
        return {}

    def skip_step(self, model: MaskedViT) -> None:
        """The weights' step was skipped (AMP): they did not move, so the removed ones are still zero."""
