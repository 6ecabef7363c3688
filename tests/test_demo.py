"""The README's first command at smoke size: every stage runs through the real entry scripts."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What the digits demo's README table was produced with, per stage (one process, batch 64):
# peak, floor and warm-up start of the schedule, warm-up steps of the schedule (22 steps an epoch).
DEMO_RATES = {"dense": (2e-3, 1e-6, 1e-6, 110), "joint": (5e-4, 1e-6, 1e-6, 0), "post": (1e-3, 1e-6, 1e-6, 44)}


@pytest.mark.parametrize("stage", sorted(DEMO_RATES))
def test_demo_stages_run_at_the_rates_of_their_readme_table(stage):
    """Defaults may change; the demo config pins what its table was measured with."""
    from data import build_mixup
    from models import create_model
    from utils.batch import batch_plan
    from utils.config import parse_config
    from engine.build import build_optimizer
    script = "joint" if stage == "joint" else "post"
    c = parse_config(script, ["--config", f"configs/digits_demo.py:{stage}"])
    plan = batch_plan(c, script, world_size=1)
    assert (plan.per_process_batch, plan.global_batch, c.eval_batch_size) == (64, 64, 512)
    _, scheduler = build_optimizer(c, create_model("vit_digits_patch2_8"), c.epochs, 22, plan.peak_lr)
    rates = (scheduler.base_values[0], scheduler.lr_min, scheduler.warmup_lr_init, scheduler.warmup_t)
    assert rates == DEMO_RATES[stage]
    assert (c.drop_path, c.clip_grad, c.smoothing, c.aa, c.reprob, c.color_jitter) == (0.0, 1.0, 0.1, "", 0.0, 0.0)
    assert build_mixup(c, 10) is None
    if stage == "joint":
        assert c.warmup_lr == 5e-4  # the search's warm-up epochs


def run_demo(tmp_path, *extra):
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "demo.py"), "--smoke", "--run_dir", str(tmp_path / "run"),
           "--cache_dir", str(tmp_path / "cache"), "--log_dir", str(tmp_path / "log"), *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(tmp_path / "run" / "summary.json") as f:
        return json.load(f), proc.stdout


def test_demo_smoke_writes_summary_and_reuses_teacher(tmp_path, monkeypatch):
    """Teacher, stage 1, stage 2, export and the table, each via the real entry scripts."""
    summary, out = run_demo(tmp_path)
    for key in ("teacher_top1", "uvc_top1", "uvc_top1_last", "uvc_macs_ratio", "uvc_speedup_b64", "stage1_file",
                "stage2_file", "compact_file"):
        assert key in summary, key
    written = (tmp_path / "log" / "digits_demo.md").read_text()
    assert "produced by `python scripts/demo.py --smoke" in written and "| UVC @ budget 0.5 |" in written
    for key in ("stage1_file", "stage2_file", "compact_file"):
        assert os.path.exists(summary[key])
    assert 0.0 < summary["uvc_macs_ratio"] <= 1.0  # a smoke search is too short to reach the budget
    assert summary["uvc_speedup_b64"] > 0
    assert "$ " + "post_train.py --config configs/digits_demo.py:dense" in out  # the real interface, shown
    assert "| UVC @ budget 0.5 |" in out
    # the same config again reuses the cached teacher (no training command runs)
    from scripts import demo, pipeline
    args = demo.parse_args(["--smoke", "--cache_dir", str(tmp_path / "cache")])
    calls = []
    monkeypatch.setattr(pipeline, "run", lambda cmd, log, *_, **__: calls.append(cmd)
                        or os.makedirs(os.path.dirname(log), exist_ok=True))
    assert demo.bench_of(args).teacher() == summary["teacher_file"] and calls == []
    # a changed config is another cache entry: it would train
    args.seed += 1
    with pytest.raises(SystemExit, match="did not write"):  # the mocked run trains nothing
        demo.bench_of(args).teacher()
    assert calls and calls[0][:3] == ["post_train.py", "--config", "configs/digits_demo.py:dense"]


@pytest.mark.slow
def test_demo_compare_smoke(tmp_path):
    summary, out = run_demo(tmp_path, "--compare", "--log_dir", str(tmp_path / "log"),
                            "--figs_dir", str(tmp_path / "figs"))
    names = [m["name"] for m in summary["methods"]]
    assert names == ["UVC", "UVC w/o block gates", "UVC w/o distillation", "UVC w/o patch trial",
                     "uniform magnitude", "greedy fit", "Torch-Pruning", "Torch-Pruning (local magnitude)"]
    uvc = summary["methods"][0]["macs_ratio"]
    for m in summary["methods"][4:]:  # peers at the UVC model's MACs
        assert abs(m["macs_ratio"] / uvc - 1) <= 0.01, m
    assert (tmp_path / "log" / "digits_compare.md").exists()
    assert (tmp_path / "figs" / "digits_top1_vs_macs.png").exists()


def test_the_readme_demo_table_is_log_digits_demo_and_its_text_counts_the_images():
    """The README's demo table is log/digits_demo.md's, row for row, and what its text says of it holds:
    the model kept and the last epoch each so many of the 360 validation images above or under the
    teacher, at about half the MACs and parameters."""
    with open(os.path.join(ROOT, "log", "digits_demo.md")) as f:
        log = f.read()
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    rows = [line for line in log.splitlines() if line.startswith("| ")]
    assert len(rows) == 3 and all(line in readme for line in rows)
    summary = json.loads(log[log.index("```json") + len("```json"):log.index("```", log.index("```json") + 7)])
    assert abs(summary["uvc_macs_ratio"] - 0.5) <= 0.01
    assert abs(summary["uvc_params"] / summary["teacher_params"] - 0.5) <= 0.02
    text = " ".join(readme.split())

    def images(top1):
        n = round((top1 - summary["teacher_top1"]) * 360 / 100)
        return f"{abs(n)} above" if n >= 0 else f"{abs(n)} under"
    kept, last = images(summary["uvc_top1"]), images(summary["uvc_top1_last"])
    assert f"which flatters it: {kept.split()[0]} of the 360 validation images {kept.split()[1]} the teacher" in text
    assert f"at its last epoch, {last}." in text
