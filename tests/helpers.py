"""Helpers shared by the unit tests (plain functions; fixtures live in conftest.py)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from models import create_model
from utils.config import set_key
from uvc.deploy.freeze import base_spec
from uvc.search.masks import Scores

TINY_MODEL = "vit_digits_tiny_patch2_8"  # D=32, L=4, H=2, d=16, M=128, 16 patches


def noisy_tiny_vit(seed: int = 0, scale: float = 0.05):
    """The tiny test model with noise on every weight (timm inits biases to 0, norms to 1)."""
    torch.manual_seed(seed)
    vit = create_model(TINY_MODEL)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return vit


def demo_search_config(**overrides):
    """The digits demo's stage-1 config, search active from the first step (no warm-up)."""
    from configs.digits_demo import get_config
    c = get_config("joint")
    c.enable_warmup = False
    for k, v in overrides.items():
        set_key(c, k, v)  # 0/1 of an on/off key become a bool, as on a command line
    return c


# --- comparing whole runs (resume and distributed tests) ---------------------------------

def dense_checkpoint(folder: Path, model_type: str = TINY_MODEL) -> Path:
    """A dense {"model": state_dict} file of a fresh 10-class model (seed 0) in `folder`: the
    --model_path of the end-to-end tests, the student's start and the teacher."""
    torch.manual_seed(0)
    path = folder / "dense.pth"
    torch.save({"model": create_model(model_type, num_classes=10).state_dict()}, path)
    return path


def clean_env(**extra) -> dict:
    """The environment of a plain single-process run (no launcher, no test hooks), one thread."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
           and not k.startswith(("TORCHELASTIC_", "UVC_TEST_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_script(script: str, args, expect: int = 0, **env) -> str:
    """Run an entry script of the repository as a user would (clean environment); its output, after
    checking its exit code."""
    proc = subprocess.run([sys.executable, script, *map(str, args)], cwd=Path(__file__).resolve().parents[1],
                          env=clean_env(**env), capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == expect, f"{script} exited {proc.returncode}, expected {expect}:\n{out[-3000:]}"
    return out


def tree_diff(a, b, path: str = "") -> list:
    """Paths where two nested checkpoints differ (tensors bitwise, dtype and shape included)."""
    if isinstance(a, torch.Tensor):
        same = isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [path]
    if isinstance(a, np.ndarray):
        return [] if isinstance(b, np.ndarray) and np.array_equal(a, b) else [path]
    if isinstance(a, dict):
        if not isinstance(b, dict) or set(a) != set(b):
            return [f"{path} (keys)"]
        return [d for k in a for d in tree_diff(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            return [f"{path} (length)"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in tree_diff(x, y, f"{path}.{i}")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def load(path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=False)
    state.pop("config", None)  # holds --output_dir / --resume, which differ between the runs
    return state


def assert_same_files(ref: Path, other: Path, names) -> None:
    for name in names:
        diff = tree_diff(load(ref / name), load(other / name))
        assert not diff, f"{name} differs from the uninterrupted run at {diff[:10]}"


def over_pruned_tiny(vit):
    """vit_digits_tiny (4 blocks, 2 heads of 16 dims, 128 neurons) cut to one head of 6 dims and
    40 neurons per block, block 2 skipped: about a quarter of the dense MACs; random scores."""
    g = torch.Generator().manual_seed(0)
    scores = Scores(torch.rand(4, 2, generator=g), torch.rand(4, 2, 16, generator=g), torch.rand(4, 128, generator=g))
    spec = base_spec(vit, "vit_digits_tiny_patch2_8")
    for block in spec["blocks"]:
        block["heads"], block["value_dims"], block["neurons"] = [0], [list(range(6))], list(range(40))
    spec["blocks"][2]["skipped"] = True
    return spec, scores
