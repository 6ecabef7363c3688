"""UVC on deit_small_patch16_224 with the distillation token (--enable_deit 1), ImageNet, with the values the seed README's commands set."""
from configs.common import base_config


def get_config(stage: str = "joint"):
    c = base_config(stage)
    c.model_type = "deit_small_patch16_224"
    c.enable_deit = True
    c.model_path = "https://dl.fbaipublicfiles.com/deit/deit_small_distilled_patch16_224-649709d9.pth"
    c.lock()
    return c
