"""Helpers shared by the unit tests (plain functions; fixtures live in conftest.py)."""
import torch

from models import create_model

TINY_MODEL = "vit_digits_tiny_patch2_8"  # D=32, L=4, H=2, d=16, M=128, 16 patches


def noisy_tiny_vit(seed: int = 0, scale: float = 0.05):
    """The tiny test model with noise on every weight (timm inits biases to 0, norms to 1)."""
    torch.manual_seed(seed)
    vit = create_model(TINY_MODEL)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return vit
