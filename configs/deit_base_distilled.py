"""UVC on deit_base_patch16_224 with the distillation token (--enable_deit 1), ImageNet, with the values the seed README's commands set."""
from configs.common import base_config


def get_config(stage: str = "joint"):
    c = base_config(stage)
    c.model_type = "deit_base_patch16_224"
    c.enable_deit = True
    c.model_path = "https://dl.fbaipublicfiles.com/deit/deit_base_distilled_patch16_224-df68dfff.pth"
    c.train_batch_size = 128 if stage == "joint" else 64  # per process: 256 / 128 images a step on 2 GPUs
    c.lock()
    return c
