"""UVC on deit_base_patch16_224, ImageNet, seed README values."""
from configs.common import base_config


def get_config(stage: str = "joint"):
    c = base_config(stage)
    c.model_type = "deit_base_patch16_224"
    c.enable_deit = 0
    c.model_path = "https://dl.fbaipublicfiles.com/deit/deit_base_patch16_224-b5f2ef4d.pth"
    c.train_batch_size = 256 if stage == "joint" else 128
    c.lock()
    return c
