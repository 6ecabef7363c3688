"""Every hyperparameter of UVC's two stages: the seed README's values where its commands set them.

Variant files (`deit_tiny.py`, ...) start from `base_config(stage)` and change
only what differs. Keys are flat and named after the seed's flags, so
`--budget 0.6`, `--config.budget 0.6` and a config file all set the same key.
`stage` is "joint" (stage 1, joint_train.py) or "post" (stage 2, post_train.py).

Batches are per process, as in the seed, DeiT and timm; stage 2 scales its
learning rate with the global batch (utils.batch.peak_lr).
"""
import ml_collections

# The training recipes of the weights, selected by `--recipe` (utils.config applies the named one
# over the config file, then the explicit flags). "reference": what VITA-Group/UVC's two scripts
# effectively run (RandomResizedCrop + flip only: their --aa, --reprob, --color-jitter are parsed and
# never used); the defaults below are these values. "deit": DeiT's from-scratch recipe
# (facebookresearch/deit main.py; --clip-grad None there, 0 here).
RECIPES = {
    "reference": dict(aa="", reprob=0.0, color_jitter=0.0, mixup=0.8, cutmix=1.0, mixup_prob=0.8, smoothing=0.1,
                      drop_path=0.0, clip_grad=1.0),
    "deit": dict(aa="rand-m9-mstd0.5-inc1", reprob=0.25, color_jitter=0.3, mixup=0.8, cutmix=1.0, mixup_prob=1.0,
                 smoothing=0.1, drop_path=0.1, clip_grad=0.0),
}

# `--search_algorithm reference` (uvc.search.reference): the reference's defaults of the search's
# rate flags (UVC/joint_train.py's argparse defaults and the constants of its model: Gumbel temperature
# 0.5, no decay; duals start at 1e-3), set where neither the config file nor a flag sets the key.
REFERENCE_SEARCH = dict(slr=0.02, rlr=0.02, ylr=1e-4, plr=1e-4, dual_init=1e-3, glr=1e-3, gating_weight=5.0,
                        gating_interval=100, zlr_schedule_list="10,20,30,40,50", gumbel_tau=0.5,
                        gumbel_tau_decay=1.0, patch_probe=0, skip_probe=0)
# `--reference_rules` (uvc/search/rules.py): its names, each a rule of the reference in place of ours
REFERENCE_RULES = ("fixed_target", "integral_z", "absolute_leastsum", "zero_start", "grad_clip", "gate_sgd",
                   "no_gate_safety")
# and the reference's values a rule sets where neither the config file
# nor a flag sets the key (gate_sgd: the reference's fixed Gumbel temperature)
RULE_DEFAULTS = {"gate_sgd": {k: REFERENCE_SEARCH[k] for k in ("gumbel_tau", "gumbel_tau_decay")}}


def base_config(stage: str = "joint") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    # --- model -----------------------------------------------------------
    c.model_type = "deit_tiny_patch16_224"  # any timm VisionTransformer (DeiT, DeiT III, ViT, registers, ...)
    c.model_path = ""  # https URL (torch.hub cache) or local file of the dense weights
    c.pretrained = True  # 1: the student starts from --model_path; 0: from scratch (the teacher still loads it)
    c.enable_deit = False  # 1: use the distillation-token variant of model_type
    c.drop_path = 0.0  # stochastic depth of the student
    c.teacher_model = ""  # teacher architecture (default: the dense starting model)
    c.teacher_path = ""  # teacher weights (default: --model_path)
    c.embed_dim = 0  # width D of the ViT (build your own size from scratch); 0: the model type's own
    c.depth = 0  # number of blocks; 0: the model type's own
    c.num_heads = 0  # attention heads per block; 0: the model type's own
    c.mlp_ratio = 0.0  # MLP width / D; 0: the model type's own
    c.patch_size = 0  # patch side in pixels; 0: the model type's own
    c.in_chans = 0  # image channels (1: grey-scale data); 0: the model type's own
    c.num_classes = 0  # classifier width; 0: the data set's class count
    c.model_kwargs = ""  # JSON object of further timm VisionTransformer arguments, e.g. '{"qk_norm": true}'

    # --- data ------------------------------------------------------------
    c.dataset = "imagenet"  # imagenet | cifar10 | cifar100 | digits | mnist | synthetic
    c.data_dir = "data/imagenet"  # ImageFolder root with train/ and val/ (mnist: where its split is cached)
    c.download = False  # cifar only: allow torchvision to download
    c.num_workers = 10  # data-loading processes per rank
    c.pin_mem = True  # pinned host memory for faster host-to-GPU copies
    c.input_size = 0  # image side (--img_size); 0: the model's own
    c.mean = ""  # normalisation mean, one value per channel, comma-separated ("": ImageNet's; timm's --mean)
    c.std = ""  # normalisation std, likewise ("": ImageNet's; timm's --std)
    c.crop_pct = 0.875  # evaluation: resize to input_size / crop_pct, then centre crop (timm's --crop-pct)
    c.recipe = "reference"  # reference (VITA-Group/UVC) / deit: sets the keys of the recipe table in docs/design.md
    c.color_jitter = 0.0  # colour jitter strength (timm create_transform)
    c.aa = ""  # RandAugment policy, e.g. rand-m9-mstd0.5-inc1 ("" disables)
    c.reprob = 0.0  # random erasing probability
    c.remode = "pixel"  # random erasing mode
    c.recount = 1  # random erasing count
    c.mixup = 0.8  # mixup alpha (0 disables)
    c.cutmix = 1.0  # cutmix alpha (0 disables)
    c.cutmix_minmax = ""  # "min,max" or ""
    c.mixup_prob = 0.8  # probability of applying mixup or cutmix to a batch
    c.mixup_switch_prob = 0.5  # probability of cutmix instead of mixup when both are on
    c.mixup_mode = "batch"  # batch / pair / elem
    c.smoothing = 0.1  # label smoothing
    c.synthetic_size = 256  # images in the synthetic set (smoke tests)
    c.skip_bad_images = False  # 1: an unreadable image of an ImageFolder is skipped (and named on stderr) instead of stopping the run

    # --- optimisation of the weights --------------------------------------
    c.train_batch_size = 512 if stage == "joint" else 256  # per process (global batch: x processes x accumulation)
    c.eval_batch_size = 256  # evaluation batch per process
    c.epochs = 30 if stage == "joint" else 120  # --num_epochs is an alias
    c.learning_rate = 1e-4  # of the weights; stage 1 uses it as is, stage 2 peaks at learning_rate x global batch / 512
    c.min_lr = 1e-6 if stage == "joint" else 1e-5  # floor of the cosine schedule
    c.weight_decay = 0.05  # AdamW weight decay (not on norms, biases, tokens)
    c.opt = "adamw"  # adamw / sgd / adam (timm create_optimizer_v2)
    c.momentum = 0.9  # sgd momentum
    c.sched = "cosine"  # cosine / step / constant, stepped every update
    c.lr_warmup_epochs = 0 if stage == "joint" else 5  # linear learning-rate warm-up epochs of the schedule
    c.lr_warmup_lr = 1e-6  # learning rate the schedule's warm-up starts from (DeiT's --warmup-lr)
    c.clip_grad = 1.0  # gradient-norm clipping of the weights (0 disables)
    c.gradient_accumulation_steps = 1  # micro-batches per optimizer step
    c.fp16 = False  # torch.amp: float16 + GradScaler on CUDA, bfloat16 on CPU
    c.max_steps_per_epoch = 0  # 0: the whole epoch (smoke tests shrink it)

    # --- distillation ------------------------------------------------------
    c.distillation_type = "soft"  # none | soft | hard
    c.distillation_alpha = 0.1  # weight of the distillation term: (1-alpha) base + alpha KD
    c.distillation_tau = 1.0  # distillation temperature

    # --- UVC search (stage 1) ---------------------------------------------
    c.uvc_train = stage == "joint"  # the seed's flag: 1 in stage 1 (the search), 0 in stage 2
    c.budget = 0.5  # target fraction of the dense MACs
    c.search_algorithm = "uvc"  # uvc: this search; reference: the reference's stage-1 rules and rate defaults (docs/design.md)
    c.flops_with_mhsa = True  # count the N^2 attention terms in R
    c.enable_pruning = True  # search heads, head dims and MLP neurons
    c.enable_block_gating = True  # search whole-block skips (gates)
    c.enable_patch_gating = True  # search patch positions to drop (0 or 1; the reference's dynamic mode 2 is not supported)
    c.reference_rules = ""  # comma-separated rules of the reference in place of ours, one departure each (uvc/search/rules.py: fixed_target, integral_z, absolute_leastsum, zero_start, grad_clip, gate_sgd, no_gate_safety)
    c.target_ramp = 0.5  # fraction of the search over which the target MACs ratio falls to the budget
    c.min_blocks = 0  # blocks never skipped (0: half the depth, rounded up)
    c.patch_probe = 256  # training images each patch drop is tried on before it stands (0: no trial)
    c.skip_probe = 256  # training images each block skip is tried on before it stands (0: no trial; the reference tries none)
    c.trial_margin = 0.0  # a tried patch drop / block skip stands only if its probe loss is below the alternative's by this many paired standard errors (0: not above it)
    c.search_masking = "hard"  # hard: training forward masks removed groups; soft: unmasked (the reference)
    c.greedy_fit = False  # the freeze fits the searched architecture into [budget - 0.01, budget] greedily (uvc/deploy/fit.py); default: exported as the search ended, as the reference
    c.round_to = 8  # MLP widths and value dims per head kept at multiples of this (1: any width, as the paper)
    c.token_step = 8  # with --budget_metric macs: a token count costs the MACs of the next multiple of this (or all tokens), and the freeze keeps the patches up to it (1: every token counts, as the paper)
    c.budget_metric = "macs"  # macs: R counts MACs; latency: R is time, from a table measured on the training device (or --latency_cache)
    c.latency_cache = ""  # latency table file (.json) or directory ("": ~/.cache/uvc/latency), measured once if absent
    c.latency_batch = 64  # batch size the latency table is measured at
    c.latency_check = 4  # with --budget_metric latency: the frozen model timed whole against the dense model; with --greedy_fit, refitted while off the budget, at most this many fits (0: no timing)
    # Rates below: each default is 1x of a rule set per search length (uvc/search/schedule.py); the flag scales it.
    # The names are the reference's, the meaning is not: there slr = rlr = 0.02 and ylr = plr = 1e-4 are
    # per-step SGD rates, and the seed's command sets none of them.
    c.slr = 0.01  # speed of s (heads, neurons removed); 0.01 is the rule's 1x, 0.02 twice as fast
    c.rlr = 0.01  # speed of r (dims removed per head); 0.01 is the rule's 1x
    c.soptim = "sgd"  # optimizer of s: sgd (allocates by importance per MAC) / adam (per entry: lockstep)
    c.roptim = "sgd"  # optimizer of r: sgd / adam
    c.ylr = 0.01  # dual ascent rate of y (heads, neurons); 0.01 is the rule's 1x
    c.plr = 0.01  # dual ascent rate of p (head dims); 0.01 is the rule's 1x
    c.dual_init = 1.0  # y and p at the start of the search (0 with --ylr 0 --plr 0: no importance term)
    c.zlr = 0.01  # integral gain of the budget controller z; 0.01 is the rule's 1x (the reference has no --zlr)
    c.zlr_schedule_list = ""  # uvc: epochs at which z's integral gain doubles; reference: z learning rates, the first is z's SGD rate for the whole search (the reference's per-epoch schedule of them never reaches z)
    c.z_grad_clip = 0.5  # clip of the ratio error R - T fed to the controller
    c.use_gumbel = True  # 0: SoftL0 gates with --eps / --eps_decay
    c.gumbel_tau = 1.0  # Gumbel-softmax temperature of the block gates
    c.gumbel_tau_decay = 0.95  # per epoch, floored at 0.1
    c.eps = 0.1  # SoftL0 stretch when --use_gumbel 0
    c.eps_decay = 0.92  # per-epoch decay of --eps
    c.glr = 0.1  # speed of the block gate logits; 0.1 (the seed's value) is the rule's 1x
    c.gating_weight = 5e-4  # weight of z dR/dg in the gate gradient; 5e-4 (the seed's value) is the rule's 1x
    c.gating_interval = 50  # steps between gate and patch-logit updates, at most (100 updates per search at least)
    c.patchlr = 0.01  # speed of the patch logits; 0.01 (the seed's value) is the rule's 1x
    c.patch_weight = 5.0  # weight of z dR/da in the patch-logit gradient; 5 (the seed's value) is the rule's 1x
    c.patch_l1_weight = 0.01  # L1 pull on the patch keep probabilities; 0.01 (the seed's value) is the rule's 1x
    c.patchloss = "l1"  # patch sparsity loss (l1)
    c.enable_warmup = True  # train the weights alone for --warmup_epochs first
    c.warmup_epochs = 5  # warm-up epochs (architecture frozen)
    c.warmup_lr = 1e-4  # weight learning rate during warm-up

    # --- stage 2 ------------------------------------------------------------
    c.checkpoint_dir = ""  # stage-1 file (<model_type>_uvc.pth) to fine-tune
    c.finetune_from = "search"  # stage 2 starts from: search (the stage-1 file's weights, as the reference) or pretrained (the dense weights the search started from, cut to the searched architecture: docs/design.md measures both)

    # --- logging ------------------------------------------------------------
    c.eval_every = 1000  # steps between mid-epoch evaluations (0: none); evaluation also runs at every epoch end
    c.log_interval = 1000  # steps between tensorboard training scalars

    # --- distributed ----------------------------------------------------------
    c.gpu_num = ""  # "0,1": visible CUDA devices; ignored on CPU
    c.local_rank = 0  # filled by torch.distributed.launch

    # --- output -------------------------------------------------------------
    c.output_dir = "output"  # run folder: log.jsonl, tensorboard, checkpoints
    c.resume = ""  # path, or "auto" for the latest checkpoint in output_dir
    c.seed = 730  # random seed
    c.deterministic = False  # 1: deterministic kernels (exact resume on CPU)
    return c
