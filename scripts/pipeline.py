"""What the demo (scripts/demo.py) and the benchmark (scripts/sweep.py) are made of:
each step runs one of the project's real commands (echoed, its output also logged
to a file), and every method's result is measured the same way.

    bench = Bench("mnist", cache_dir="runs/cache")
    teacher = bench.teacher()                                 # post_train.py --config ...:dense (cached)
    uvc = bench.uvc("UVC", teacher, "runs/x/uvc", budget=0.5) # joint_train.py, then post_train.py
    peer = bench.one_shot("greedy fit", "greedy-fit", teacher, "runs/x/greedy", target=0.5)
    rows = bench.measure([uvc, peer], bench.dense_model(teacher))

A method's run is a dict {"name", "before", "after", "logs", "model_file"} (models before
and after fine-tuning, the run folders, the file of the model after fine-tuning); `measure`
turns runs into table rows: top-1 on the fixed validation split before and after fine-tuning
(and at the last and best fine-tuning epochs, from the run's log.jsonl), MACs ratio by fvcore
on the physically pruned model, parameters and CPU images/s at batch 64 (every model timed
side by side with the dense one, interleaved rounds, median).

A Bench is a demo data set's config (`Bench("mnist")`, the commands the demo and the benchmark
always ran) or any config with overrides passed identically to every command
(`Bench(config_file="configs/deit_tiny.py", overrides=["--dataset", "imagenet", ...])`).
"""
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from functools import cached_property
from typing import Dict, List, Optional, Sequence

import torch

from scripts.command import run
from scripts.results import AXES, finetune_top1, removed_of_pruned, removed_of_spec, search_end

TIMING_BATCH = 64  # every model of a benchmark is timed at this batch (speedup_b64)

# --dataset -> (config file with dense/joint/post stages, model type)
DATASETS = {"digits": ("configs/digits_demo.py", "vit_digits_patch2_8"),
            "mnist": ("configs/mnist_demo.py", "vit_mnist_patch4_28")}
SMOKE = ["--epochs", "1", "--max_steps_per_epoch", "2"]  # --smoke, every stage
# and stage 1 searches from its first step; two steps cannot steer to the budget (the search warns), so
# the freeze fits the result into it and the peers are pruned to a ratio they can reach
SMOKE_SEARCH = SMOKE + ["--warmup_epochs", "0", "--greedy_fit", "1"]
# baselines.torch_pruning flags of its "Torch-Pruning (local magnitude)" setting (default: Taylor, global)
LOCAL_MAGNITUDE_FLAGS = ("--importance", "magnitude", "--global_pruning", "0")


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def compact_of_stage1(stage1_file: str, start_weights: str = "") -> torch.nn.Module:
    """The stage-1 result exported as is (before fine-tuning); with `start_weights` (a dense file), its
    architecture on those weights, where `post_train.py --finetune_from pretrained` starts."""
    from models import extract_state_dict, read_checkpoint
    from uvc.deploy.export import build_masked_source, export_compact
    from uvc.deploy.stagefile import read_stage_file
    ckpt = read_stage_file(stage1_file)
    if start_weights:
        ckpt = dict(ckpt, model=extract_state_dict(read_checkpoint(start_weights)))
    return export_compact(build_masked_source(ckpt), ckpt["arch"]).eval()


def stage1_run(name: str, stage1_file: str, compact_file: str, logs: List[str], start_weights: str = "") -> dict:
    """A method's run whose result is a stage-1 file fine-tuned by stage 2 (UVC, the one-shot peers); "before"
    is the model stage 2 started from (`start_weights`: see compact_of_stage1)."""
    from models.compact import load_compact
    arch = torch.load(stage1_file, map_location="cpu", weights_only=True)["arch"]
    return {"name": name, "before": compact_of_stage1(stage1_file, start_weights), "after": load_compact(compact_file),
            "removed": removed_of_spec(arch), "logs": logs, "stage1_file": stage1_file, "model_file": compact_file,
            "search_end": search_end(os.path.join(os.path.dirname(stage1_file), "log.jsonl"))}


def macs_ratio_of(model: torch.nn.Module, dense: torch.nn.Module) -> float:
    """fvcore's MACs of a physically pruned model over the dense model's (fused attention off)."""
    from baselines.macs import matched_target
    return matched_target(dense, model)


def stage1_ratio(stage1_file: str) -> float:
    """The MACs ratio of a stage-1 file's architecture by UVC's formula (what the budget counts)."""
    from uvc.deploy.freeze import spec_ratio
    return spec_ratio(torch.load(stage1_file, map_location="cpu", weights_only=True)["arch"])


@dataclass
class Bench:
    """One config and model (a demo data set's, or any config file with its overrides), the teacher
    cache, and the shared run settings.

    Args:
        dataset: a key of DATASETS (the demo config and model), unless `config_file` is given.
        cache_dir: where trained teachers are kept, keyed by their resolved config.
        seed: the teacher's seed, and the default seed of every other run.
        smoke: a few steps per stage (checks the plumbing, not the accuracy).
        joint_extra, post_extra: flags appended to every stage-1 / every fine-tuning command
            (e.g. ["--epochs", "6"]); stage 2, the one-shot peers and Torch-Pruning share post_extra.
        reuse: skip a command that already completed in the same folder (see `run`).
        threads: OMP_NUM_THREADS of every command (0: the library default, one per core).
        config_file: a config the entry scripts accept (its stages "dense", "joint", "post"; default: the
            demo config of `dataset`).
        overrides: config flags passed identically to every command (data, input size, model type,
            batch sizes, workers), e.g. ["--dataset", "imagenet", "--data_dir", "tree"].
        teacher_file: a dense checkpoint of the config's model to use instead of training one.
        teacher_flags: flags of the teacher run only (e.g. ["--pretrained", "0"]).
    """
    dataset: str = "digits"
    cache_dir: str = "runs/cache"
    seed: int = 730
    smoke: bool = False
    joint_extra: Sequence[str] = ()
    post_extra: Sequence[str] = ()
    reuse: bool = False
    threads: int = 0
    config_file: str = ""
    overrides: Sequence[str] = ()
    teacher_file: str = ""
    teacher_flags: Sequence[str] = ()

    def __post_init__(self):
        from models import resolve_model_type
        self.demo = not self.config_file and not self.overrides  # the demo's commands, as they always ran
        if not self.config_file:
            if self.dataset not in DATASETS:
                raise SystemExit(f"--dataset {self.dataset!r}: choose one of {', '.join(DATASETS)}")
            self.config_file, self.model_type = DATASETS[self.dataset]
        if not self.demo:
            self.config_file = self.config_file.rsplit(":", 1)[0] if ":" in os.path.basename(
                self.config_file) else self.config_file  # the stages are appended per command
            config = self.config("post")
            self.model_type = resolve_model_type(config.model_type, config.enable_deit)
        self.overrides = list(self.overrides)

    def config(self, stage: str, extra: Sequence[str] = ()):
        """The resolved config of a stage with the overrides (ConfigError for a missing file or bad value),
        as joint_train.py reads the stage "joint" and post_train.py the others."""
        from utils.config import parse_config
        entry = "joint" if stage == "joint" else "post"
        return parse_config(entry, ["--config", f"{self.config_file}:{stage}", *self.overrides, *extra])

    def epochs(self, stage: str, given: Optional[int] = None) -> int:
        """`given` epochs of a stage, or (None) the config's for that stage."""
        return int(given) if given is not None else int(self.config(stage).epochs)

    # ------------------------------------------------------------------------- the commands
    def config_key(self, stage: str, extra: List[str]) -> str:
        """A short hash of the resolved config of a stage (plus overrides): the teacher cache key. The
        search's own keys (utils.config_checks.STAGE1_ONLY) cannot change a dense teacher and are left out."""
        from utils.config_checks import STAGE1_ONLY
        text = json.dumps({k: v for k, v in self.config(stage, extra).to_dict().items()
                           if k not in ("output_dir", "resume") + STAGE1_ONLY}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def teacher(self) -> str:
        """The dense teacher's file: `teacher_file` (checked to fit the config's model), else trained once
        per config and cached."""
        if self.teacher_file:
            from models import load_exact
            load_exact(self.dense_model(), self.teacher_file, self.model_type)
            print(f"teacher: {self.teacher_file} (given; fits {self.model_type})")
            return self.teacher_file
        extra = ["--seed", str(self.seed)] + (SMOKE if self.smoke else []) + list(self.teacher_flags)
        if not self.demo:  # a config's dense stage is its fine-tuning stage: no teacher to distil from yet
            extra += ["--distillation-type", "none"]
        out = os.path.join(self.cache_dir, f"teacher-{self.config_key('dense', extra)}")
        path = os.path.join(out, f"{self.model_type}_dense_best.pth")
        if os.path.exists(os.path.join(out, "done")):
            print(f"teacher: reusing {path} (same config)")
            return path
        shutil.rmtree(out, ignore_errors=True)
        run(["post_train.py", "--config", f"{self.config_file}:dense", *self.overrides, "--output_dir", out] + extra,
            os.path.join(out, "stdout.log"), threads=self.threads)
        if not os.path.exists(path):
            raise SystemExit(f"the teacher run did not write {path}; see {out}/stdout.log")
        open(os.path.join(out, "done"), "w").close()  # complete: later runs with this config reuse it
        return path

    def _run(self, cmd: List[str], log_path: str) -> None:
        run(cmd, log_path, self.reuse, self.threads)

    def _seed(self, seed: Optional[int]) -> List[str]:
        return ["--seed", str(self.seed if seed is None else seed)]

    def stage1(self, teacher: str, out: str, budget: float, seed: Optional[int] = None, extra=()) -> str:
        self._run(["joint_train.py", "--config", f"{self.config_file}:joint", *self.overrides, "--model_path",
                   teacher, "--budget", str(budget), *self._seed(seed), "--output_dir", out, *self.joint_extra]
                  + (SMOKE_SEARCH if self.smoke else []) + list(extra), os.path.join(out, "stdout.log"))
        return os.path.join(out, f"{self.model_type}_uvc.pth")

    def stage2(self, teacher: str, stage1_file: str, out: str, seed: Optional[int] = None,
               extra=()) -> Dict[str, str]:
        self._run(["post_train.py", "--config", f"{self.config_file}:post", *self.overrides, "--model_path",
                   teacher, "--checkpoint_dir", stage1_file, *self._seed(seed), "--output_dir", out,
                   *self.post_extra] + (SMOKE if self.smoke else []) + list(extra), os.path.join(out, "stdout.log"))
        return {"stage2_file": os.path.join(out, f"{self.model_type}_uvc_post_best.pth"),
                "compact_file": os.path.join(out, "compact.pth")}

    # ------------------------------------------------------------------------- the methods
    def uvc(self, name: str, teacher: str, out: str, budget: float, seed: Optional[int] = None,
            joint_extra=(), post_extra=(), stage1_file: str = "") -> dict:
        """UVC (or an ablation of it): stage 1 (or its given `stage1_file`), then stage 2 and export."""
        s1 = stage1_file or self.stage1(teacher, os.path.join(out, "stage1"), budget, seed, joint_extra)
        files = self.stage2(teacher, s1, os.path.join(out, "stage2"), seed, post_extra)
        flags = list(post_extra)
        pretrained = "--finetune_from" in flags and flags[flags.index("--finetune_from") + 1] == "pretrained"
        return dict(stage1_run(name, s1, files["compact_file"], [os.path.dirname(s1), os.path.join(out, "stage2")],
                               teacher if pretrained else ""), **files)

    def one_shot_prune(self, method: str, teacher: str, out: str, target: float) -> str:
        """baselines.magnitude (`uniform-magnitude` or `greedy-fit`) at `target` MACs by UVC's formula:
        the stage-1 file."""
        s1 = os.path.join(out, "stage1", f"{self.model_type}_uvc.pth")
        model = ["--model_type", self.model_type] if self.demo else ["--config", f"{self.config_file}:post",
                                                                     *self.overrides]
        self._run(["-m", "baselines.magnitude", "--method", method, *model, "--model_path", teacher,
                   "--target_ratio", f"{target:.6f}", "--tolerance", "0.003", "--output", s1],
                  os.path.join(out, "stage1", "stdout.log"))
        return s1

    def one_shot(self, name: str, method: str, teacher: str, out: str, target: float,
                 seed: Optional[int] = None, stage1_file: str = "") -> dict:
        """A one-shot peer at `target` MACs (or its given `stage1_file`), then the same stage 2 as UVC."""
        s1 = stage1_file or self.one_shot_prune(method, teacher, out, target)
        files = self.stage2(teacher, s1, os.path.join(out, "stage2"), seed)
        return stage1_run(name, s1, files["compact_file"], [os.path.dirname(s1), os.path.join(out, "stage2")])

    def _tp_command(self, teacher: str, out: str, target: float, seed: Optional[int], setting) -> List[str]:
        return ["-m", "baselines.torch_pruning", "--config", f"{self.config_file}:post", *self.overrides,
                "--model_path", teacher, "--target_ratio", f"{target:.6f}", "--tolerance", "0.003",
                *self._seed(seed), "--output_dir", out, *setting, *self.post_extra] + (SMOKE if self.smoke else [])

    def torch_pruning_prune(self, teacher: str, out: str, target: float, seed: Optional[int] = None,
                            setting=()) -> torch.nn.Module:
        """baselines.torch_pruning --prune_only: the pruned model at `target` MACs, not fine-tuned."""
        from baselines.finetune import load_pruned
        self._run(self._tp_command(teacher, out, target, seed, setting) + ["--prune_only", "1"],
                  os.path.join(out, "stdout.log"))
        return load_pruned(os.path.join(out, "tp_pruned.pth"))[0]

    def torch_pruning(self, name: str, teacher: str, out: str, target: float, seed: Optional[int] = None,
                      setting=()) -> dict:
        """baselines.torch_pruning at `target` MACs by fvcore, fine-tuned with stage 2's loop.
        `setting`: its flags (default: Taylor importance, global isomorphic ranking)."""
        from baselines.finetune import load_pruned
        self._run(self._tp_command(teacher, out, target, seed, setting), os.path.join(out, "stdout.log"))
        best = os.path.join(out, "tp_finetuned_best.pth")
        after = load_pruned(best)[0]
        return {"name": name, "before": load_pruned(os.path.join(out, "tp_pruned.pth"))[0], "after": after,
                "removed": removed_of_pruned(after, self.dense_model()), "logs": [out], "model_file": best}

    # ------------------------------------------------------------------------- measuring
    @cached_property
    def input_shape(self) -> tuple:
        """(channels, height, width) of the model's input."""
        embed = self.dense_model().patch_embed
        return (embed.proj.in_channels, *embed.img_size)

    @cached_property
    def _val_loader(self):
        from data.datasets import build_eval_dataset
        val = build_eval_dataset(self.config("post"), self.input_shape[1], self.input_shape[0])[0]
        return torch.utils.data.DataLoader(val, batch_size=512, shuffle=False)

    def top1(self, model: torch.nn.Module) -> float:
        from engine import evaluate
        return evaluate(model.eval(), self._val_loader, torch.device("cpu"))["top1"]

    @cached_property
    def num_classes(self) -> int:
        """The classifier width every run builds: --num_classes, else the data set's class count."""
        from data.datasets import build_eval_dataset
        from engine.build import head_classes, model_input
        config = self.config("post")
        return head_classes(config, build_eval_dataset(config, *model_input(config))[1])

    def dense_model(self, path: str = "") -> torch.nn.Module:
        """The dense model of the config (randomly initialised without `path`)."""
        from models.checkpoint import load_pretrained
        from models.vit import create_model
        from utils.config_checks import model_overrides
        config = self.config("post")
        model = create_model(self.model_type, num_classes=self.num_classes, img_size=config.input_size or None,
                             **model_overrides(config))
        if path:
            load_pretrained(model, path, model_type=self.model_type)
        return model.eval()

    def throughput(self, models: Dict[str, torch.nn.Module], batch_size: int) -> Dict[str, float]:
        """Images/s of each model, measured side by side (interleaved rounds, median)."""
        from utils.benchmark import compare_throughput
        return compare_throughput(models, self.input_shape, batch_size, torch.device("cpu"),
                                  repeats=3 if self.smoke else 15)

    def measure(self, runs: Sequence[dict], dense: torch.nn.Module) -> List[dict]:
        """The dense teacher's row, then one per run: name, top1_before, top1 (the saved best model),
        top1_last and top1_best (its fine-tuning log, `finetune_top1`), macs_ratio (fvcore),
        params, images_per_s_b64, speedup_b64 (all models timed side by side) and removed."""
        models = {"dense teacher": dense, **{str(i): r["after"] for i, r in enumerate(runs)}}
        speed = self.throughput(models, TIMING_BATCH)
        dense_top1 = self.top1(dense)
        rows = [{"name": "dense teacher", "top1_before": dense_top1, "top1": dense_top1, "macs_ratio": 1.0,
                 "params": params(dense), "images_per_s_b64": speed["dense teacher"], "speedup_b64": 1.0,
                 "removed": dict.fromkeys(AXES, 0)}]
        return rows + [{"name": r["name"], "top1_before": self.top1(r["before"]), "top1": self.top1(r["after"]),
                        **finetune_top1(os.path.join(r["logs"][-1], "log.jsonl")),
                        "macs_ratio": macs_ratio_of(r["after"], dense), "params": params(r["after"]),
                        "images_per_s_b64": speed[str(i)], "speedup_b64": speed[str(i)] / speed["dense teacher"],
                        "removed": r["removed"]} for i, r in enumerate(runs)]
