"""The CPU demo: a 0.4M-parameter ViT (width 64, depth 8, 4 heads, 8x8 input,
patch 2) on scikit-learn's bundled handwritten digits. Runs on a laptop.

Stage "dense" trains the teacher (post_train.py with --pretrained 0 and no
--checkpoint_dir); "joint" is the UVC search; "post" fine-tunes the result.

One process, batch 64. post_train.py (dense and post) peaks at learning_rate x
64 / 512, so their learning_rate is 8x the rate they run at; joint_train.py runs
at learning_rate as given.
"""
from configs.common import base_config


def get_config(stage: str = "joint"):
    c = base_config("post" if stage == "dense" else stage)
    c.model_type = "vit_digits_patch2_8"
    c.model_path = ""  # the demo fills in the dense teacher it trained
    c.dataset = "digits"
    c.data_dir = ""
    c.num_workers = 0
    c.pin_mem = False
    c.drop_path = 0.0
    # digits are 8x8 grey images: light augmentation, no RandAugment / erasing
    c.aa = ""
    c.reprob = 0.0
    c.color_jitter = 0.0
    c.mixup = 0.0
    c.cutmix = 0.0
    c.smoothing = 0.1
    c.train_batch_size = 64
    c.eval_batch_size = 512
    c.weight_decay = 0.05
    c.clip_grad = 1.0
    c.min_lr = 1e-6  # cosine floor of every stage
    c.lr_warmup_lr = 1e-6  # where the schedule's warm-up starts
    c.eval_every = 0  # evaluate at epoch ends only
    c.log_interval = 10
    c.round_to = 1  # any width: heads of 16 dims would only have widths 8 and 16 at round_to 8
    c.token_step = 1  # every token counts: 17 tokens would only have counts 8, 16 and 17 at steps of 8
    c.output_dir = "runs/digits"
    if stage == "dense":
        c.pretrained = False
        c.distillation_type = "none"
        c.epochs = 100
        c.learning_rate = 1.6e-2  # peak 1.6e-2 x 64 / 512 = 2e-3
        c.lr_warmup_epochs = 5
    elif stage == "joint":
        c.epochs = 30
        c.learning_rate = 5e-4  # stage 1: unscaled
        c.warmup_epochs = 2
        c.warmup_lr = 5e-4
    else:
        c.epochs = 30
        c.learning_rate = 8e-3  # peak 8e-3 x 64 / 512 = 1e-3
        c.lr_warmup_epochs = 2
    c.lock()
    return c
