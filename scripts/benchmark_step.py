"""What a UVC search step costs over a plain distillation training step.

    python scripts/benchmark_step.py                               # deit_tiny, batch 32
    python scripts/benchmark_step.py --model_type vit_digits_patch2_8 --batch_size 64 --steps 10 --json

Both steps run through engine.loop.train_one_epoch on the same fixed batch, with
the same student initialisation, frozen teacher, DistillationLoss (soft, the
config's alpha and tau), AdamW and gradient clipping:

  plain  the timm student alone (arch_step None)
  uvc    the student inside MaskedViT with UVCSearch as arch_step: prepare()
         (scores, masks, Gumbel gate sample, patch bias) before the forward pass
         and step() (proximal step, s/r update, budget gradient, duals) after the
         optimizer, exactly as joint_train.py runs them

The hyperparameters are those of the model type's config file
(utils.config.parse_config, stage "joint") with no warm-up. The two steps are
timed alternately after --warmup untimed steps of each; the median of --steps
timed steps each is printed with their ratio. The gate/patch-logit update runs
every --gating_interval steps (default: the config's), so a median over fewer
steps than that does not contain one; `--gating_interval 1` times it every step.
--json prints {"plain_step_s", "uvc_step_s", "ratio", ...}.

With --stage1 FILE it times stage 2 instead, on that stage-1 file's architecture and
weights: the masked full-size model with its masks re-applied after every step (the
reference's stage 2, `FrozenArchitecture`) against the compact model post_train.py
fine-tunes (uvc/deploy/compact_student.py); the same steps, ratio compact / masked.
"""
import argparse
import contextlib
import copy
import io
import os
import sys
import time

import torch

if not __package__:  # run as a file: this checkout's packages, not those of an install elsewhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models import create_model
from engine.distill import DistillationLoss
from engine.loop import train_one_epoch
from uvc.search.masked_model import MaskedViT
from uvc.search import UVCSearch
from utils.amp import make_scaler
from utils.benchmark import interleaved_medians, run_cli, add_common_args
from utils.config import parse_config
from engine.build import build_optimizer


def build_steps(args, device):
    """{"plain": fn, "uvc": fn}: each call runs one training step."""
    argv = ["--model_type", args.model_type, "--model_path", "", "--warmup_epochs", "0", "--budget", str(args.budget)]
    if args.gating_interval:
        argv += ["--gating_interval", str(args.gating_interval)]
    config = parse_config("joint", argv, prog="benchmark_step.py")
    torch.manual_seed(0)
    student = create_model(args.model_type, drop_path_rate=config.drop_path).to(device)
    teacher = copy.deepcopy(student).requires_grad_(False).eval()
    students = {"plain": student, "uvc": copy.deepcopy(student)}
    img = student.patch_embed.img_size
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, student.patch_embed.proj.in_channels, img[0], img[1], generator=gen)
    targets = torch.randint(0, student.num_classes, (args.batch_size,), generator=gen)
    batch = [(images.to(device), targets.to(device))]
    base = torch.nn.CrossEntropyLoss(label_smoothing=config.smoothing)
    criterion = DistillationLoss(base, teacher, "soft", config.distillation_alpha, config.distillation_tau)
    scaler = make_scaler(device, bool(args.amp))

    # a search long enough that the gates update every --gating_interval steps (uvc.search.schedule)
    search = UVCSearch(students["uvc"], config, device, search_steps=100 * int(config.gating_interval))
    search.set_epoch(0)
    models = {"plain": students["plain"], "uvc": MaskedViT(students["uvc"])}
    arch_steps = {"plain": None, "uvc": search}

    def step_fn(name):
        optimizer, _ = build_optimizer(config, students[name], 1, 1, config.learning_rate)  # stage 1: unscaled

        def run():
            with contextlib.redirect_stderr(io.StringIO()):  # the engine's progress bar
                train_one_epoch(models[name], criterion, batch, optimizer, scaler, device, 0,
                                arch_step=arch_steps[name], amp=bool(args.amp), clip_grad=config.clip_grad,
                                max_steps=1)
        return run

    return {name: step_fn(name) for name in ("plain", "uvc")}, search


def build_stage2_steps(args, device):
    """{"masked": fn, "compact": fn} on --stage1's architecture and weights, the distillation of stage 2."""
    from uvc.deploy.compact_student import compact_student
    from uvc.deploy.frozen import FrozenArchitecture
    from uvc.deploy.stagefile import read_stage_file
    from engine.build import build_student
    record = read_stage_file(args.stage1)
    config = parse_config("post", ["--model_type", record["model_type"], "--model_path", ""], prog="benchmark_step.py")
    torch.manual_seed(0)
    masked_vit, _ = build_student(config, record["arch"]["num_classes"], device, load_weights=False,
                                  record=record["arch"])
    masked_vit.load_state_dict(record["model"])
    teacher = copy.deepcopy(masked_vit).requires_grad_(False).eval()
    masked = MaskedViT(masked_vit)
    frozen = FrozenArchitecture(masked, record["arch"])
    student = compact_student(copy.deepcopy(masked_vit), record["arch"])
    img = masked_vit.patch_embed.img_size
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, masked_vit.patch_embed.proj.in_channels, img[0], img[1], generator=gen)
    batch = [(images.to(device), torch.randint(0, student.num_classes, (args.batch_size,), generator=gen).to(device))]
    base = torch.nn.CrossEntropyLoss(label_smoothing=config.smoothing)
    criterion = DistillationLoss(base, teacher, "soft", config.distillation_alpha, config.distillation_tau)
    scaler = make_scaler(device, bool(args.amp))
    models = {"masked": (masked, masked_vit, frozen), "compact": (student, student, None)}

    def step_fn(name):
        model, params, arch_step = models[name]
        optimizer, _ = build_optimizer(config, params, 1, 1, config.learning_rate)

        def run():
            with contextlib.redirect_stderr(io.StringIO()):  # the engine's progress bar
                train_one_epoch(model, criterion, batch, optimizer, scaler, device, 0, arch_step=arch_step,
                                amp=bool(args.amp), clip_grad=config.clip_grad, max_steps=1)
        return run

    return {name: step_fn(name) for name in models}, record["model_type"]


def run_stage2(args, device) -> dict:
    steps, model_type = build_stage2_steps(args, device)
    clock = time.process_time if args.clock == "process" else time.perf_counter
    seconds = interleaved_medians(steps, device, warmup=args.warmup, repeats=args.steps, min_round_s=0.0,
                                  clock=clock)
    return {"stage1": args.stage1, "model_type": model_type, "batch_size": args.batch_size, "device": str(device),
            "threads": torch.get_num_threads(), "clock": args.clock, "amp": bool(args.amp), "steps": args.steps,
            "masked_step_s": seconds["masked"], "compact_step_s": seconds["compact"],
            "ratio": seconds["compact"] / seconds["masked"]}


def run(args) -> dict:
    device = torch.device(args.device)
    if args.stage1:
        return run_stage2(args, device)
    steps, search = build_steps(args, device)
    clock = time.process_time if args.clock == "process" else time.perf_counter
    seconds = interleaved_medians(steps, device, warmup=args.warmup, repeats=args.steps, min_round_s=0.0,
                                  clock=clock)
    return {"model_type": args.model_type, "batch_size": args.batch_size, "device": str(device),
            "threads": torch.get_num_threads(), "clock": args.clock, "amp": bool(args.amp), "steps": args.steps,
            "gating_interval": search.rates.gate_interval,
            "plain_step_s": seconds["plain"], "uvc_step_s": seconds["uvc"],
            "ratio": seconds["uvc"] / seconds["plain"]}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Time a plain distillation step against a UVC search step.")
    parser.add_argument("--model_type", default="deit_tiny_patch16_224")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps of each kind (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each kind first")
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--gating_interval", type=int, default=0, help="gate update every N steps (0: config's)")
    parser.add_argument("--amp", type=int, default=0, choices=(0, 1), help="torch.amp autocast")
    parser.add_argument("--stage1", default="", metavar="FILE",
                        help="time stage 2 on this stage-1 file instead: the masked model against the compact one")
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--batch_size and --steps must be positive, --warmup not negative")
    return args


def format_table(r: dict) -> str:
    if "stage1" in r:
        return "\n".join([
            f"stage 2 of {r['stage1']} ({r['model_type']}), batch {r['batch_size']} on {r['device']} ({r['threads']} "
            f"threads, {r['clock']} clock{', amp' if r['amp'] else ''}), median of {r['steps']} alternating steps each",
            f"masked full-size model   {r['masked_step_s']:.4f} s",
            f"compact model            {r['compact_step_s']:.4f} s",
            f"ratio                    {r['ratio']:.3f}"])
    return "\n".join([
        f"{r['model_type']} batch {r['batch_size']} on {r['device']} ({r['threads']} threads, {r['clock']} clock"
        f"{', amp' if r['amp'] else ''}), median of {r['steps']} alternating steps each (gate update every "
        f"{r['gating_interval']} steps)",
        f"plain distillation step  {r['plain_step_s']:.4f} s",
        f"UVC search step          {r['uvc_step_s']:.4f} s",
        f"ratio                    {r['ratio']:.3f}"])


def main(argv=None) -> int:
    return run_cli("benchmark_step", parse_args(argv), run, format_table)

if __name__ == "__main__":
    sys.exit(main())
