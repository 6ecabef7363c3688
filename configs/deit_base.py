"""UVC on deit_base_patch16_224, ImageNet, with the values the seed README's commands set."""
from configs.common import base_config


def get_config(stage: str = "joint"):
    c = base_config(stage)
    c.model_type = "deit_base_patch16_224"
    c.enable_deit = False
    c.model_path = "https://dl.fbaipublicfiles.com/deit/deit_base_patch16_224-b5f2ef4d.pth"
    c.train_batch_size = 128 if stage == "joint" else 64  # per process: 256 / 128 images a step on 2 GPUs
    c.lock()
    return c
