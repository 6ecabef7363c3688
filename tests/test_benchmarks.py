"""Smoke runs of scripts/benchmark_speed.py and scripts/benchmark_step.py, and the timing helpers
(keys and positive numbers only: no timing asserts on a shared machine)."""
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_report import TINY, make_files
from uvc.cost.latency import FORMAT as LATENCY_FORMAT
from utils.benchmark import compare_throughput, images_per_second, interleaved_medians

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name: str, *argv) -> dict:
    run = subprocess.run([sys.executable, str(REPO / "scripts" / f"{name}.py"), *argv, "--json"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1, run.stdout
    return json.loads(lines[0])


# ----------------------------------------------------------------------------- helpers

def test_interleaved_medians_alternate_and_time_each():
    order = []
    fns = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    seconds = interleaved_medians(fns, warmup=1, repeats=3, min_round_s=0.0)
    assert set(seconds) == {"a", "b"} and all(s >= 0 for s in seconds.values())
    assert order[-6:] == ["a", "b"] * 3  # timed rounds alternate
    slow = interleaved_medians({"sleep": lambda: time.sleep(0.01)}, warmup=0, repeats=2, min_round_s=0.0)
    assert slow["sleep"] >= 0.009


def test_images_per_second_and_side_by_side():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 10))
    assert images_per_second(model, (3, 4, 4), batch_size=8, warmup=1, repeats=2) > 0
    both = compare_throughput({"a": model, "b": torch.nn.Identity()}, (3, 4, 4), 8, repeats=2,
                              clock=time.process_time)
    assert set(both) == {"a", "b"} and all(v > 0 for v in both.values())


# ----------------------------------------------------------------------------- benchmark_speed

def _check_speed(result: dict, batch_sizes=(1, 64), weights: bool = True) -> None:
    for key in ("macs_ratio", "speedup_masked_b64", "speedup_compact_b64", "speedup_compact_b1"):
        assert result[key] > 0, key
    assert 0 < result["macs_ratio"] < 1
    for name in ("dense", "masked", "compact"):
        assert all(result["images_per_s"][name][f"b{b}"] > 0 for b in batch_sizes)
        assert result["ideal_speedup"][name] >= 1.0
    if weights:  # a stage file: the compact model is the export of the masked one
        assert result["max_logit_diff_compact_vs_masked"] < 1e-4
    else:  # a compact file: the dense and masked models have random weights
        assert result["max_logit_diff_compact_vs_masked"] is None


def test_benchmark_speed_on_a_stage1_file(tmp_path):
    files = make_files(tmp_path)
    result = run_script("benchmark_speed", "--checkpoint", files["stage1"], "--batch_sizes", "1,64",
                        "--repeats", "1", "--warmup", "0")
    _check_speed(result)
    assert result["model_type"] == TINY and result["kind"] == "uvc-stage1-v1"


def test_benchmark_speed_on_stage2_and_compact_files_and_table(tmp_path, capsys):
    files = make_files(tmp_path)
    script = load_script("benchmark_speed")
    for kind in ("stage2", "compact"):
        assert script.main(["--checkpoint", files[kind], "--repeats", "1", "--warmup", "0", "--json"]) == 0
        _check_speed(json.loads(capsys.readouterr().out), weights=kind == "stage2")
    assert script.main(["--checkpoint", files["compact"], "--batch_sizes", "2", "--repeats", "2",
                        "--threads", "1", "--clock", "process"]) == 0
    table = capsys.readouterr().out
    for word in ("dense", "masked", "compact", "img/s b2", "speedup b2", "ideal"):
        assert word in table


def test_benchmark_speed_refuses_a_dense_model(tmp_path, capsys):
    script = load_script("benchmark_speed")
    dense = tmp_path / "dense.pth"
    torch.save({"model": make_files(tmp_path)["vit"].state_dict()}, dense)
    for bad in (str(dense), str(tmp_path / "missing.pth")):
        assert script.main(["--checkpoint", bad, "--repeats", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "error" in err


# ----------------------------------------------------------------------------- benchmark_step

def test_benchmark_step_smoke():
    result = run_script("benchmark_step", "--model_type", TINY, "--batch_size", "8", "--steps", "2",
                        "--warmup", "1")
    assert result["plain_step_s"] > 0 and result["uvc_step_s"] > 0 and result["ratio"] > 0
    assert (result["model_type"], result["batch_size"], result["steps"], result["clock"]) == (TINY, 8, 2, "wall")


def test_benchmark_step_times_stage_2_masked_against_compact(tmp_path, capsys):
    """--stage1 FILE: both stage-2 steps run on that file's architecture (the table names both and their ratio)."""
    from test_report import make_files
    files = make_files(tmp_path)
    result = run_script("benchmark_step", "--stage1", files["stage1"], "--batch_size", "4", "--steps", "2",
                        "--warmup", "1")
    assert result["masked_step_s"] > 0 and result["compact_step_s"] > 0
    assert result["ratio"] == pytest.approx(result["compact_step_s"] / result["masked_step_s"])
    assert (result["model_type"], result["stage1"]) == (TINY, files["stage1"])
    script = load_script("benchmark_step")
    assert script.main(["--stage1", files["stage1"], "--batch_size", "4", "--steps", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "masked full-size model" in out and "compact model" in out and "ratio" in out


def test_benchmark_step_with_gate_updates_every_step(capsys, monkeypatch):
    """Each step kind runs (the UVC one updating gates every step); the table is the medians and their ratio."""
    import time
    script = load_script("benchmark_step")
    calls = {}

    def medians(steps, device, warmup, repeats, min_round_s, clock):
        for name, step in steps.items():
            step()
        calls.update(names=sorted(steps), repeats=repeats, clock=clock)
        return {"plain": 2.0, "uvc": 3.0}

    monkeypatch.setattr(script, "interleaved_medians", medians)
    assert script.main(["--model_type", TINY, "--batch_size", "4", "--steps", "2", "--warmup", "1",
                        "--gating_interval", "1", "--threads", "1", "--clock", "process"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert calls == {"names": ["plain", "uvc"], "repeats": 2, "clock": time.process_time}
    assert "(gate update every 1 steps)" in lines[0]
    assert lines[1:] == ["plain distillation step  2.0000 s", "UVC search step          3.0000 s",
                         "ratio                    1.500"]


def test_speed_table_times_each_file_in_separate_sessions(tmp_path):
    """scripts/speed_table.py: every file timed --sessions times (separate processes); the row holds each
    session's speedup, their median and the MACs ratio of the file."""
    files = make_files(tmp_path)
    script = load_script("speed_table")
    out = tmp_path / "speed"
    argv = ["--no_search", "--files", f"tiny={files['compact']}", "--sessions", "2", "--repeats", "1",
            "--batch_size", "2", "--out", str(out)]
    assert script.main(argv) == 0
    row = json.loads((tmp_path / "speed.json").read_text())["rows"][0]
    assert row["name"] == "tiny" and row["sessions"] == 2 and len(row["speedups"]) == 2
    assert min(row["speedups"]) <= row["speedup"] <= max(row["speedups"]) and 0 < row["macs_ratio"] < 1
    assert "| tiny |" in (tmp_path / "speed.md").read_text()
    with pytest.raises(SystemExit):
        script.parse_args(["--files", f"x={tmp_path / 'missing.pth'}"])


def test_speed_table_sets_the_latency_estimate_against_the_sessions_median():
    script = load_script("speed_table")
    est = {"dense": 1.0, "compact": 0.5, "full_width": 0.9}
    sessions = [{"estimated_s": est, "measured_s": {"dense": d, "compact": c}}
                for d, c in ((1.2, 0.6), (1.1, 0.4), (1.3, 0.55))]
    ms = script.latency_ms(sessions)
    assert ms == pytest.approx({"dense_table": 1000, "full_width_est": 900, "compact_est": 500,
                                "dense_measured": 1200, "compact_measured": 550})
    text = script.latency_table_md([{"name": "a"}, {"name": "b", "latency_ms": ms}], 64)
    assert "| b | 1000.0 | 1200.0 | 900.0 | 500.0 | 550.0 | 0.909 |" in text and "| a |" not in text
    assert script.latency_table_md([{"name": "a"}], 64) == ""


def test_latency_model_check_prices_random_architectures_against_their_timing(tmp_path):
    """scripts/latency_model_check.py: a seed is a session of its own; each architecture keeps its share of
    the patches, and its errors are its estimates (token ladder and N0 only) over its timed ratio; the
    summary pools the sessions."""
    script = load_script("latency_model_check")
    out = tmp_path / "check"
    assert script.main(["--model_type", "vit_digits_patch2_8", "--archs", "4", "--seeds", "1", "--repeats", "1",
                        "--batch_size", "2", "--out", str(out)]) == 0
    (session,) = json.loads((tmp_path / "check.json").read_text())["sessions"]
    assert session["seed"] == 1 and session["format"] == LATENCY_FORMAT
    assert [r["patches_kept"] for r in session["rows"]] == [16, 12, 8, 5]  # KEEPS of 16 patches
    for row in session["rows"]:
        assert row["measured"] > 0 and set(row["estimated"]) == {"ladder", "n0"}
        for model, estimate in row["estimated"].items():
            assert row["error"][model] == pytest.approx(estimate / row["measured"] - 1)
    # the other session's errors past every timed one (a loaded machine's can be several times R)
    big = 1.0 + max(abs(e) for r in session["rows"] for e in r["error"].values())
    other = dict(session, seed=0, rows=[dict(r, error={"ladder": big, "n0": -big}) for r in session["rows"]])
    text = script.report([session, other], "cmd")
    assert "| 5/16 | 2 |" in text and text.count("\n| 0 |") == 4  # both sessions, pooled per share
    assert f"| {100 * big:.1f}% |" in text  # the largest |error| is the other session's
    with pytest.raises(SystemExit):
        script.parse_args(["--seeds", "0,x"])


@pytest.mark.parametrize("name, model", [("mnist", "MNIST ViT"), ("digits", "digits ViT"), ("deit_tiny", "DeiT-Tiny")])
def test_the_committed_latency_checks_are_what_the_design_doc_shows(name, model):
    """docs/design.md's table of the cost model's error: each row's medians range over the shares of patches
    kept, recomputed from the committed record, and the record's command is the script's."""
    root = Path(__file__).resolve().parents[1]
    record = json.loads((root / "log" / f"latency_model_check_{name}.json").read_text())
    assert record["command"].startswith("python scripts/latency_model_check.py")
    by_keep = {}
    for session in record["sessions"]:
        for row in session["rows"]:
            by_keep.setdefault(row["patches_kept"], []).append(row["error"])
    medians = {m: [100 * statistics.median(abs(e[m]) for e in errors) for errors in by_keep.values()]
               for m in ("ladder", "n0")}
    cells = {m: f"{min(v):.1f}-{max(v):.1f}%" for m, v in medians.items()}
    row = next(line for line in (root / "docs" / "design.md").read_text().splitlines() if line.startswith(f"| {model}"))
    sessions, archs = len(record["sessions"]), len(record["sessions"][0]["rows"])
    assert f"({sessions} x {archs})" in row
    assert f"| {cells['ladder']} | {cells['n0']} | `log/latency_model_check_{name}.md` |" in row


def test_latency_stability_times_parts_and_wholes_in_separate_sessions(tmp_path):
    """scripts/latency_stability.py: per allocator setting, every session a process of its own; the
    summary holds each session's value, the median and the spread."""
    script = load_script("latency_stability")
    out = tmp_path / "stability"
    assert script.main(["--model_type", "vit_digits_patch2_8", "--sessions", "2", "--repeats", "1",
                        "--batch_size", "2", "--out", str(out)]) == 0
    results = json.loads((tmp_path / "stability.json").read_text())["results"]
    assert set(results) == {"allocator as is", "mmap threshold 4 GiB"}
    for summary in results.values():
        assert "half / dense" in summary and sum(k.startswith("mlp ") for k in summary) == 4
        for value in summary.values():
            assert len(value["sessions"]) == 2 and value["spread"] >= 0
            assert min(value["sessions"]) <= value["median"] <= max(value["sessions"])
    assert "| half / dense |" in (tmp_path / "stability.md").read_text()


# ----------------------------------------------------------------------------- token_alignment

def test_token_alignment_times_each_patch_count_and_prices_it_as_the_sweep_does(tmp_path, capsys):
    """Each row: k patches kept, the model's token count, the time ratio's median over the runs, and the
    latency table's estimate, the same number the sweep records for a model of that shape."""
    from models.compact import CompactViT, load_compact
    from scripts.latency_match import table_ratio
    from test_latency import fake_table
    from uvc.deploy.export import spec_dims
    files = make_files(tmp_path)
    spec = load_compact(files["compact"]).spec
    total = (spec["img_size"] // spec["patch_size"]) ** 2
    table = fake_table(spec_dims(spec))
    (tmp_path / "table.json").write_text(json.dumps(table))
    script, out = load_script("token_alignment"), tmp_path / "tok"
    assert script.main([files["compact"], "--patches", f"{total},{total // 2}", "--latency_cache",
                        str(tmp_path / "table.json"), "--runs", "3", "--repeats", "1", "--out", str(out)]) == 0
    rows = json.loads((tmp_path / "tok.json").read_text())["rows"]
    prefix = CompactViT(spec).num_prefix_tokens
    assert [(r["patches"], r["tokens"]) for r in rows] == [(total, total + prefix), (total // 2, total // 2 + prefix)]
    for r in rows:
        assert len(r["time_ratios"]) == 3 and r["time_ratio"] == statistics.median(r["time_ratios"]) > 0
        cut = CompactViT(dict(spec, patches_kept=list(range(r["patches"]))))
        assert r["table_ratio"] == pytest.approx(table_ratio(table, files["vit"], cut))
    assert rows[1]["table_ratio"] < rows[0]["table_ratio"]
    assert all(len(m.spec["patches_kept"]) == k for k, m in script.variants(spec, [total, 1]).items())
    assert "| patches kept | tokens |" in (tmp_path / "tok.md").read_text()
    with pytest.raises(SystemExit, match=f"has {total} patch positions"):
        script.main([files["compact"], "--patches", str(total + 1), "--out", str(out)])
    for bad in (["--patches", "x"], ["--patches", "3", "--runs", "0"]):
        with pytest.raises(SystemExit):
            script.main([files["compact"], *bad, "--out", str(out)])
