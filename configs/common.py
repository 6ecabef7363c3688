"""Every hyperparameter of UVC's two stages, with the seed README's values.

Variant files (`deit_tiny.py`, ...) start from `base_config(stage)` and change
only what differs. Keys are flat and named after the seed's flags, so
`--budget 0.6`, `--config.budget 0.6` and a config file all set the same key.
`stage` is "joint" (stage 1, joint_train.py) or "post" (stage 2, post_train.py).
"""
import ml_collections


def base_config(stage: str = "joint") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    # --- model -----------------------------------------------------------
    c.model_type = "deit_tiny_patch16_224"  # a name from models.MODEL_TYPES
    c.model_path = ""  # https URL (torch.hub cache) or local file of the dense weights
    c.pretrained = 1  # stage 2 / dense path: 1 loads --model_path, 0 starts from scratch
    c.enable_deit = 0  # 1: use the distillation-token variant of model_type
    c.drop_path = 0.1  # stochastic depth of the student
    c.teacher_model = ""  # teacher architecture (default: the dense starting model)
    c.teacher_path = ""  # teacher weights (default: --model_path)

    # --- data ------------------------------------------------------------
    c.dataset = "imagenet"  # imagenet | cifar10 | cifar100 | digits | synthetic
    c.data_dir = "data/imagenet"  # ImageFolder root with train/ and val/
    c.download = 0  # cifar only: allow torchvision to download
    c.num_workers = 10
    c.pin_mem = 1
    c.input_size = 0  # 0: the model's own image size
    c.color_jitter = 0.3
    c.aa = "rand-m9-mstd0.5-inc1"  # RandAugment policy ("" disables)
    c.reprob = 0.25  # random erasing probability
    c.remode = "pixel"
    c.recount = 1
    c.mixup = 0.8
    c.cutmix = 1.0
    c.cutmix_minmax = ""  # "min,max" or ""
    c.mixup_prob = 1.0
    c.mixup_switch_prob = 0.5
    c.mixup_mode = "batch"
    c.smoothing = 0.1
    c.synthetic_size = 256  # images in the synthetic set (smoke tests)

    # --- optimisation of the weights --------------------------------------
    c.train_batch_size = 512 if stage == "joint" else 256  # global batch
    c.eval_batch_size = 256
    c.epochs = 30 if stage == "joint" else 120  # --num_epochs is an alias
    c.learning_rate = 1e-4 if stage == "joint" else 5e-4
    c.min_lr = 1e-6
    c.weight_decay = 0.05
    c.opt = "adamw"
    c.momentum = 0.9
    c.sched = "cosine"
    c.lr_warmup_epochs = 0 if stage == "joint" else 5
    c.clip_grad = 5.0  # 0 disables
    c.gradient_accumulation_steps = 1
    c.fp16 = 0  # torch.amp: float16 + GradScaler on CUDA, bfloat16 on CPU
    c.max_steps_per_epoch = 0  # 0: the whole epoch (smoke tests shrink it)

    # --- distillation ------------------------------------------------------
    c.distillation_type = "soft"  # none | soft | hard
    c.distillation_alpha = 0.1
    c.distillation_tau = 1.0

    # --- UVC search (stage 1) ---------------------------------------------
    c.uvc_train = 1 if stage == "joint" else 0
    c.budget = 0.5  # target fraction of the dense MACs
    c.flops_with_mhsa = 1  # count the N^2 attention terms in R
    c.enable_pruning = 1
    c.enable_block_gating = 1
    c.enable_patch_gating = 1
    c.slr = 0.01  # learning rate of s (heads, neurons removed)
    c.rlr = 0.01  # learning rate of r (dims removed per head)
    c.soptim = "sgd"
    c.roptim = "sgd"
    c.ylr = 0.01  # dual ascent rate of y (heads, neurons)
    c.plr = 0.01  # dual ascent rate of p (head dims)
    c.zlr = 0.01  # base dual ascent rate of z (budget)
    c.zlr_schedule_list = "1,5,9,13,17"  # epochs at which zlr doubles
    c.z_grad_clip = 0.5
    c.use_gumbel = 1  # 0: SoftL0 gates with --eps / --eps_decay
    c.gumbel_tau = 1.0
    c.gumbel_tau_decay = 0.95  # per epoch, floored at 0.1
    c.eps = 0.1
    c.eps_decay = 0.92
    c.glr = 0.1  # learning rate of the block gate logits
    c.gating_weight = 5e-4
    c.gating_interval = 50
    c.patchlr = 0.01
    c.patch_weight = 5.0
    c.patch_l1_weight = 0.01
    c.patchloss = "l1"
    c.enable_warmup = 1
    c.warmup_epochs = 5
    c.warmup_lr = 1e-4

    # --- stage 2 ------------------------------------------------------------
    c.checkpoint_dir = ""  # stage-1 file (<model_type>_uvc.pth) to fine-tune

    # --- run ----------------------------------------------------------------
    c.output_dir = "output"
    c.resume = ""  # path, or "auto" for the latest checkpoint in output_dir
    c.seed = 730
    c.eval_every = 1000  # steps; evaluation also runs at every epoch end
    c.log_interval = 1000
    c.gpu_num = ""  # "0,1": visible CUDA devices; ignored on CPU
    c.deterministic = 0
    c.local_rank = 0  # filled by torch.distributed.launch
    return c
