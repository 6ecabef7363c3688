"""A fixed probe of training images, drawn the same way at every start and resume.

The indices come from a generator seeded with --seed, and the (random) training
transforms run under their own seed with the global torch, numpy and Python
random states saved and restored around them: drawing the probe changes no other
random stream, so a resumed run draws the same probe and continues exactly.
"""
import random
from typing import Tuple

import numpy as np
import torch
from torch.utils.data import Dataset


def probe_batch(dataset: Dataset, size: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(images (n, C, H, W), targets (n,)) of n = min(size, len(dataset)) training samples."""
    n = min(int(size), len(dataset))
    if n <= 0:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    index = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        try:
            samples = [dataset[i] for i in index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
    images = torch.stack([torch.as_tensor(x) for x, _ in samples])
    targets = torch.tensor([int(y) for _, y in samples], dtype=torch.long)
    return images, targets
