"""Small grey-image sets held in memory (digits, MNIST): one dataset class and one
transform, parameterised by the set's native size, shift padding and normalisation."""
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2


class RepeatChannels(torch.nn.Module):
    """(1, H, W) -> (n, H, W), so grey images feed an RGB model."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(self.n, -1, -1).contiguous()


def grey_transform(is_training: bool, native_size: int, shift: int, mean: float, std: float,
                   img_size: int, in_chans: int) -> v2.Compose:
    """Shift by up to `shift` pixels when training, normalise, then fit the model's input.

    Args:
        native_size: the set's own image side (8 for digits, 28 for MNIST).
        shift: padding of the training random crop (0: no augmentation).
        mean, std: normalisation over the fixed train split.
        img_size, in_chans: what the model expects (resized bilinearly, channels repeated).
    """
    steps = [v2.RandomCrop(native_size, padding=shift)] if is_training and shift else []
    steps.append(v2.Normalize([mean], [std]))
    if img_size != native_size:
        steps.append(v2.Resize((img_size, img_size), interpolation=v2.InterpolationMode.BILINEAR,
                               antialias=True))
    if in_chans != 1:
        steps.append(RepeatChannels(in_chans))
    return v2.Compose(steps)


class GreyImages(Dataset):
    """Images (n, 1, H, W) in [0, 1] and int64 labels; items are (image tensor, int label)."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, transform=None):
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        x = self.images[index]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.targets[index])

