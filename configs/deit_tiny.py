"""UVC on deit_tiny_patch16_224, ImageNet, with the values the seed README's commands set."""
from configs.common import base_config


def get_config(stage: str = "joint"):
    c = base_config(stage)
    c.model_type = "deit_tiny_patch16_224"
    c.enable_deit = False
    c.model_path = "https://dl.fbaipublicfiles.com/deit/deit_tiny_patch16_224-a1311bcf.pth"
    c.lock()
    return c
