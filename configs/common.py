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
    c.pretrained = 1  # 1: the student starts from --model_path; 0: from scratch (the teacher still loads it)
    c.enable_deit = 0  # 1: use the distillation-token variant of model_type
    c.drop_path = 0.1  # stochastic depth of the student
    c.teacher_model = ""  # teacher architecture (default: the dense starting model)
    c.teacher_path = ""  # teacher weights (default: --model_path)

    # --- data ------------------------------------------------------------
    c.dataset = "imagenet"  # imagenet | cifar10 | cifar100 | digits | mnist | synthetic
    c.data_dir = "data/imagenet"  # ImageFolder root with train/ and val/ (mnist: where its split is cached)
    c.download = 0  # cifar only: allow torchvision to download
    c.num_workers = 10  # data-loading processes per rank
    c.pin_mem = 1  # pinned host memory for faster host-to-GPU copies
    c.input_size = 0  # 0: the model's own image size
    c.color_jitter = 0.3  # colour jitter strength (timm create_transform)
    c.aa = "rand-m9-mstd0.5-inc1"  # RandAugment policy ("" disables)
    c.reprob = 0.25  # random erasing probability
    c.remode = "pixel"  # random erasing mode
    c.recount = 1  # random erasing count
    c.mixup = 0.8  # mixup alpha (0 disables)
    c.cutmix = 1.0  # cutmix alpha (0 disables)
    c.cutmix_minmax = ""  # "min,max" or ""
    c.mixup_prob = 1.0  # probability of applying mixup or cutmix to a batch
    c.mixup_switch_prob = 0.5  # probability of cutmix instead of mixup when both are on
    c.mixup_mode = "batch"  # batch / pair / elem
    c.smoothing = 0.1  # label smoothing
    c.synthetic_size = 256  # images in the synthetic set (smoke tests)

    # --- optimisation of the weights --------------------------------------
    c.train_batch_size = 512 if stage == "joint" else 256  # global batch
    c.eval_batch_size = 256  # global evaluation batch
    c.epochs = 30 if stage == "joint" else 120  # --num_epochs is an alias
    c.learning_rate = 1e-4 if stage == "joint" else 5e-4  # peak learning rate of the weights (--lr)
    c.min_lr = 1e-6  # floor of the cosine schedule
    c.weight_decay = 0.05  # AdamW weight decay (not on norms, biases, tokens)
    c.opt = "adamw"  # adamw / sgd / adam (timm create_optimizer_v2)
    c.momentum = 0.9  # sgd momentum
    c.sched = "cosine"  # cosine / step / constant, stepped every update
    c.lr_warmup_epochs = 0 if stage == "joint" else 5  # linear learning-rate warm-up epochs of the schedule
    c.clip_grad = 5.0  # 0 disables
    c.gradient_accumulation_steps = 1  # micro-batches per optimizer step
    c.fp16 = 0  # torch.amp: float16 + GradScaler on CUDA, bfloat16 on CPU
    c.max_steps_per_epoch = 0  # 0: the whole epoch (smoke tests shrink it)

    # --- distillation ------------------------------------------------------
    c.distillation_type = "soft"  # none | soft | hard
    c.distillation_alpha = 0.1  # weight of the distillation term: (1-alpha) base + alpha KD
    c.distillation_tau = 1.0  # distillation temperature

    # --- UVC search (stage 1) ---------------------------------------------
    c.uvc_train = 1 if stage == "joint" else 0  # the seed's flag: 1 in stage 1 (the search), 0 in stage 2
    c.budget = 0.5  # target fraction of the dense MACs
    c.flops_with_mhsa = 1  # count the N^2 attention terms in R
    c.enable_pruning = 1  # search heads, head dims and MLP neurons
    c.enable_block_gating = 1  # search whole-block skips (gates)
    c.enable_patch_gating = 1  # search patch positions to drop (0 or 1; the reference's dynamic mode 2 is not supported)
    c.slr = 0.01  # learning rate of s (heads, neurons removed)
    c.rlr = 0.01  # learning rate of r (dims removed per head)
    c.soptim = "sgd"  # optimizer of s: sgd / adam
    c.roptim = "sgd"  # optimizer of r: sgd / adam
    c.ylr = 0.01  # dual ascent rate of y (heads, neurons)
    c.plr = 0.01  # dual ascent rate of p (head dims)
    c.zlr = 0.01  # base dual ascent rate of z (budget)
    c.zlr_schedule_list = "1,5,9,13,17"  # epochs at which zlr doubles
    c.z_grad_clip = 0.5  # clip of the z ascent step R - B
    c.use_gumbel = 1  # 0: SoftL0 gates with --eps / --eps_decay
    c.gumbel_tau = 1.0  # Gumbel-softmax temperature of the block gates
    c.gumbel_tau_decay = 0.95  # per epoch, floored at 0.1
    c.eps = 0.1  # SoftL0 stretch when --use_gumbel 0
    c.eps_decay = 0.92  # per-epoch decay of --eps
    c.glr = 0.1  # learning rate of the block gate logits
    c.gating_weight = 5e-4  # weight of z dR/dg in the gate gradient
    c.gating_interval = 50  # steps between gate and patch-logit updates (gradients averaged)
    c.patchlr = 0.01  # learning rate of the patch logits
    c.patch_weight = 5.0  # weight of z dR/da in the patch-logit gradient
    c.patch_l1_weight = 0.01  # L1 pull on the mean patch keep probability
    c.patchloss = "l1"  # patch sparsity loss (l1)
    c.enable_warmup = 1  # train the weights alone for --warmup_epochs first
    c.warmup_epochs = 5  # warm-up epochs (architecture frozen)
    c.warmup_lr = 1e-4  # weight learning rate during warm-up

    # --- stage 2 ------------------------------------------------------------
    c.checkpoint_dir = ""  # stage-1 file (<model_type>_uvc.pth) to fine-tune

    # --- run ----------------------------------------------------------------
    c.output_dir = "output"  # run folder: log.jsonl, tensorboard, checkpoints
    c.resume = ""  # path, or "auto" for the latest checkpoint in output_dir
    c.seed = 730  # random seed
    c.eval_every = 1000  # steps; evaluation also runs at every epoch end
    c.log_interval = 1000  # steps between tensorboard training scalars
    c.gpu_num = ""  # "0,1": visible CUDA devices; ignored on CPU
    c.deterministic = 0  # 1: deterministic kernels (exact resume on CPU)
    c.local_rank = 0  # filled by torch.distributed.launch
    return c
