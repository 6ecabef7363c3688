"""Any other timm VisionTransformer (--model_type vit_small_patch16_224, deit3_small_patch16_224,
vit_little_patch16_reg4_gap_256, ...): the seed README's values, no weights named.

Pass the dense model's weights with --model_path (a local file or URL in timm's or DeiT's
layout), or train a teacher first with post_train.py --pretrained 0.
"""
from configs.common import base_config


def get_config(stage: str = "joint"):
    c = base_config(stage)
    c.model_path = ""
    c.lock()
    return c
