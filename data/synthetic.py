"""Random images for smoke tests: deterministic, nothing stored or downloaded."""
import torch
from torch.utils.data import Dataset


class Synthetic(Dataset):
    """`size` images of shape (in_chans, img_size, img_size), labels in range(num_classes).

    Image i is drawn from a generator seeded with seed + i, so any item can be
    rebuilt on its own (in any worker) and costs no memory until asked for.
    """

    def __init__(self, size: int, img_size: int, in_chans: int, num_classes: int = 10, seed: int = 0):
        self.shape = (in_chans, img_size, img_size)
        self.seed = seed
        gen = torch.Generator().manual_seed(seed)
        self.targets = torch.randint(num_classes, (size,), generator=gen)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        gen = torch.Generator().manual_seed(self.seed + 1 + index)
        return torch.randn(self.shape, generator=gen), int(self.targets[index])
