"""scripts/sweep.py (the MNIST benchmark) and scripts/demo.py --dataset mnist: the tables from
known numbers, flag checks, and the real scripts at smoke size (slow)."""
import glob
import json
import os
import subprocess
import sys

import pytest
import torch

from scripts import sweep, sweep_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SWEEP_KEYS = {"method", "budget", "match", "seed", "top1_last", "top1_best", "macs_ratio", "speedup_b64", "top1",
              "top1_before_ft", "params", "images_per_s_b64", "removed"}


def row(method, top1, best=None, seed=730, budget=0.4, match="macs", **extra):
    return dict(method=method, budget=budget, match=match, seed=seed, top1_last=top1,
                top1_best=top1 if best is None else best, top1=top1, top1_before_ft=top1 - 10, macs_ratio=0.4,
                params=200_000, images_per_s_b64=1000.0, speedup_b64=1.5,
                removed={"blocks": 1, "heads": 2, "dims": 3, "neurons": 400, "patches": 5}, **extra)


def test_ablation_table_pools_the_seeds_of_a_row():
    result = {"seeds": [730, 731], "rows": [row("UVC", 97.1, 97.5, seed=730), row("UVC", 96.8, 97.0, seed=731),
                                            row(sweep_args.NO_SEARCH, 95.0, seed=730), row(sweep_args.NO_SEARCH, 95.5, seed=731)]}
    lines = sweep.ablation_table(result).splitlines()
    assert lines[0].startswith("| method | top-1 at the last FT epoch (%), mean (min-max) over seeds 730, 731 | "
                               "top-1 at the best FT epoch (%), mean (min-max) over seeds 730, 731 |")
    assert len(lines) == 4
    assert lines[2] == ("| UVC | 96.95 (96.80-97.10) | 97.25 (97.00-97.50) | 86.95 (86.80-87.10) | 0.400 | 1.50x | "
                        "1/2/3/400/5; 1/2/3/400/5 |")
    assert lines[3].startswith(f"| {sweep_args.NO_SEARCH} | 95.25 (95.00-95.50) |")


def test_sweep_table_orders_by_match_and_budget_with_the_teacher_first():
    result = {"teacher_top1": 98.0, "seeds": [730],
              "rows": [row("UVC", 97.0, budget=0.5), row("greedy fit", 96.0, budget=0.5),
                       row("UVC", 90.0, budget=0.3), row("UVC", 91.0, budget=0.3, match="latency")]}
    lines = sweep.sweep_table(result).splitlines()
    assert "top-1 at the last FT epoch (%), seed 730" in lines[0] and "speedup (b64)" in lines[0]
    assert lines[2].startswith("| dense teacher |  | 1.0 | 98.00 | 98.00 | 1.000 | 1.00x |")
    order = [line.split(" | ")[:3] for line in lines[3:]]
    assert order == [["| UVC", "latency", "0.3"], ["| UVC", "macs", "0.3"], ["| UVC", "macs", "0.5"],
                     ["| greedy fit", "macs", "0.5"]]
    assert lines[4].startswith("| UVC | macs | 0.3 | 90.00 | 90.00 | 0.400 | 1.50x |")


def test_spread_is_mean_and_range():
    from scripts.sweep_report import spread
    assert spread([95.7]) == "95.70" and spread([95.0, 96.0, 95.5]) == "95.50 (95.00-96.00)"


def test_removed_counts_per_axis():
    from scripts import results
    from helpers import noisy_tiny_vit
    from uvc.deploy.freeze import base_spec

    vit = noisy_tiny_vit()
    spec = base_spec(vit, "vit_digits_tiny_patch2_8")  # D=32, L=4, H=2, d=16, M=128, 16 patches
    assert results.removed_of_spec(spec) == dict.fromkeys(results.AXES, 0)
    spec["blocks"][0].update(skipped=True, heads=[0])  # a skipped block counts once, as a block
    spec["blocks"][1].update(heads=[1], value_dims=[list(range(10))], neurons=list(range(100)))
    spec["patches_kept"] = spec["patches_kept"][3:]
    assert results.removed_of_spec(spec) == {"blocks": 1, "heads": 1, "dims": 6, "neurons": 28, "patches": 3}
    assert results.removed_text(results.removed_of_spec(spec)) == "1/1/6/28/3"
    assert results.removed_of_pruned(vit, vit) == dict.fromkeys(results.AXES, 0)


def test_flags_are_checked():
    args = sweep.parse_args(["--methods", "Torch-Pruning", "--budgets", "0.3,0.5"])
    assert args.methods == ["UVC", "Torch-Pruning"] and args.budgets == [0.3, 0.5]
    assert sweep.bench_of(args).joint_extra == ["--epochs", "10"] and args.search_epochs == 10  # the config's
    assert sweep.bench_of(args).post_extra == ["--epochs", "40"] and args.finetune_epochs == 40  # measured
    given = sweep.parse_args(["--dataset", "digits", "--search_epochs", "2", "--finetune_epochs", "3"])
    assert (sweep.bench_of(given).joint_extra, sweep.bench_of(given).post_extra) == (["--epochs", "2"], ["--epochs", "3"])
    assert sweep.bench_of(sweep.parse_args(["--dataset", "digits"])).post_extra == ["--epochs", "30"]
    assert args.seeds == [730]
    assert (args.log_dir, args.figs_dir) == (sweep_args._path("log"), sweep_args._path("Figs"))  # the demos' results go there
    assert sweep.parse_args(["--ablations"]).seeds == [730, 731]
    assert sweep.parse_args(["--seeds", "1,2,3"]).seeds == [1, 2, 3]
    assert sweep.parse_args(["--match", "macs,latency"]).match == ["macs", "latency"]  # both, one table
    assert args.match == ["macs"] and sweep.parse_args(["--match", "latency,latency"]).match == ["latency"]
    assert sweep.parse_args(["--ablations"]).ablation_rows == list(sweep_args.ABLATIONS)
    assert sweep_args.results_name(sweep.parse_args(["--ablations", "--match", "latency"])) == "mnist_ablations_latency"
    assert sweep_args.results_name(sweep.parse_args(["--ablations"])) == "mnist_ablations"
    assert sweep.parse_args(["--ablations", "--ablation_rows", "UVC w/o importance term"]).ablation_rows == \
        ["UVC", "UVC w/o importance term"]  # UVC is the row every other one is read against
    for bad in (["--methods", "NAS"], ["--budgets", "0.3,1.5"], ["--search_epochs", "0"], ["--finetune_epochs", "0"],
                ["--ablations", "--budgets", "0.5"],  # a flag of the other mode
                ["--match", "speed"], ["--match", "macs,speed"], ["--match", ","],
                ["--ablations", "--match", "macs,latency"], ["--dataset", "cifar10"],  # cifar10 needs --config
                ["--ablations", "--ablation_rows", "UVC w/o skips"], ["--ablation_rows", "UVC"],
                ["--prune_only"], ["--prune_only", "--match", "macs,latency"]):  # matching needs latency alone
        with pytest.raises(SystemExit):
            sweep.parse_args(bad)


def run_script(script, *argv, timeout=1500):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), "--smoke", *map(str, argv)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_compare_runs_stops_in_one_line_on_a_bad_group_or_a_folder_without_a_run(tmp_path, capsys):
    from scripts import compare_runs
    with pytest.raises(SystemExit):
        compare_runs.main(["--dataset", "mnist", "--teacher", "t.pth", "--group", "no folders", "--out", "x"])
    assert "--group 'no folders': give NAME=FOLDER[,FOLDER...]" in capsys.readouterr().err
    (tmp_path / "stage1").mkdir()
    with pytest.raises(SystemExit, match="not a finished run"):
        compare_runs.run_of("a", str(tmp_path))


@pytest.mark.slow
def test_sweep_and_ablations_smoke(tmp_path):
    """One budget, every method, through the real entry scripts; then the ablations reuse the
    sweep's UVC and greedy-fit runs."""
    dirs = ["--run_dir", tmp_path / "runs", "--cache_dir", tmp_path / "cache", "--log_dir", tmp_path / "log",
            "--figs_dir", tmp_path / "figs"]
    out = run_script("sweep.py", "--budgets", "0.4", "--threads", "1", *dirs)
    assert "$ joint_train.py --config configs/mnist_demo.py:joint" in out
    result = json.loads((tmp_path / "log" / "mnist_sweep.json").read_text())
    assert {"teacher_top1", "finetune_epochs", "seeds", "rows"} <= set(result)
    teacher_row = f"| dense teacher |  | 1.0 | {result['teacher_top1']:.2f} | {result['teacher_top1']:.2f} | 1.000"
    assert result["teacher_top1"] > 10.0 and teacher_row in (tmp_path / "log" / "mnist_sweep.md").read_text()
    assert [r["method"] for r in result["rows"]] == list(sweep_args.DEFAULT_METHODS)
    for r in result["rows"]:
        assert SWEEP_KEYS <= set(r) and r["budget"] == 0.4
    uvc = result["rows"][0]["macs_ratio"]
    assert all(abs(r["macs_ratio"] / uvc - 1) <= 0.01 for r in result["rows"]), result["rows"]
    assert (tmp_path / "log" / "mnist_sweep.md").exists()
    assert (tmp_path / "figs" / "mnist_sweep_top1_vs_macs.png").exists()
    assert not (tmp_path / "log" / "mnist_sweep").exists()  # results only: each run's logs stay in --run_dir
    # scripts/compare_runs.py on two of these runs' folders reads what the sweep read
    from scripts import compare_runs
    cell, teacher = tmp_path / "runs" / "budget0.4_seed730", glob.glob(str(tmp_path / "cache" / "*" / "*_best.pth"))
    assert compare_runs.main(["--dataset", "mnist", "--teacher", teacher[0], "--group", f"UVC={cell / 'uvc'}",
                              "--group", f"greedy fit={cell / 'greedy-fit'}", "--out", str(tmp_path / "cmp")]) == 0
    compared = json.loads((tmp_path / "cmp.json").read_text())
    assert [r["group"] for r in compared["rows"]] == ["UVC", "greedy fit"]
    for r in compared["rows"]:
        swept = next(row for row in result["rows"] if row["method"] == r["group"])
        assert [r[k] for k in ("top1_last", "top1_best")] == [swept[k] for k in ("top1_last", "top1_best")]
        assert r["macs_ratio"] == pytest.approx(swept["macs_ratio"]) and r["speedup_b64"] > 0
    assert "| UVC | 1 |" in (tmp_path / "cmp.md").read_text()

    out = run_script("sweep.py", "--ablations", "--ablation_budget", "0.4", "--seeds", "730", "--resume",
                     "--threads", "1", *dirs)
    assert out.count("(reused: completed before") == 4  # UVC stages 1 and 2, greedy fit and its stage 2
    # rows of the same stage-1 flags (UVC, UVC fine-tuned from the pretrained weights) share one search
    assert out.count("$ joint_train.py") == len({tuple(joint) for joint, _ in sweep_args.ABLATIONS.values()})
    assert "--finetune_from pretrained" in out
    result = json.loads((tmp_path / "log" / "mnist_ablations.json").read_text())
    assert [r["method"] for r in result["rows"]] == list(sweep_args.ABLATIONS) + [sweep_args.NO_SEARCH]
    assert all(SWEEP_KEYS <= set(r) for r in result["rows"])
    assert "seed 730" in (tmp_path / "log" / "mnist_ablations.md").read_text()


@pytest.mark.slow
def test_sweep_at_equal_latency_smoke_and_its_resume(tmp_path):
    """--match latency through the real scripts: UVC searches a latency budget, a one-shot peer and
    Torch-Pruning are pruned to its measured time; a --resume pass re-times nothing and retrains nothing."""
    dirs = ["--run_dir", tmp_path / "runs", "--cache_dir", tmp_path / "cache", "--log_dir", tmp_path / "log",
            "--figs_dir", tmp_path / "figs", "--budgets", "0.5", "--match", "latency", "--threads", "1",
            "--methods", "greedy fit,Torch-Pruning"]
    out = run_script("sweep.py", *dirs)
    assert "--budget_metric latency" in out
    rows = json.loads((tmp_path / "log" / "mnist_sweep.json").read_text())["rows"]
    assert [(r["method"], r["match"]) for r in rows] == [(m, "latency") for m in ("UVC", "greedy fit", "Torch-Pruning")]
    for r in rows[1:]:
        assert {"latency_ratio", "uvc_latency_ratio", "matched", "macs_target", "match_tries"} <= set(r), r
    assert rows[0]["search_end"]["metric"] == "latency" and rows[0]["search_end"]["budget"] == 0.5
    # the table's estimate of each model: for UVC, what its stage-1 file's fit records of the exported architecture
    fit = torch.load(glob.glob(str(tmp_path / "runs" / "budget0.5_seed730_latency" / "uvc" / "stage1" / "*_uvc.pth"))[0],
                     map_location="cpu", weights_only=False)["fit"]
    assert rows[0]["table_latency_ratio"] == pytest.approx(fit["latency_ratio"], abs=1e-9)
    assert 0 < rows[1]["table_latency_ratio"] < 1 and "table_latency_ratio" not in rows[2]  # not Torch-Pruning's
    again = run_script("sweep.py", *dirs, "--resume")
    assert again.count("reusing its latency match") == 2  # no new timing, no new pruning
    assert again.count("\n$ ") == again.count("(reused: completed before") > 0  # no run trained again
    assert json.loads((tmp_path / "log" / "mnist_sweep.json").read_text())["rows"][1]["macs_target"] == \
        rows[1]["macs_target"]
    # the ablations at equal time reuse the cell's UVC runs and greedy-fit match; a row searches a latency budget
    abl = run_script("sweep.py", *dirs[:8], "--threads", "1", "--match", "latency", "--ablations", "--resume",
                     "--ablation_budget", "0.5", "--seeds", "730", "--ablation_rows", "UVC w/o patch gates")
    assert abl.count("reusing its latency match") == 1  # and UVC's stages 1 and 2, the greedy fit's fine-tuning:
    assert abl.count("(reused: completed before") == 3
    lines = abl.splitlines()
    searched = [a for a, b in zip(lines, lines[1:] + [""]) if a.startswith("$ joint_train.py") and "(reused" not in b]
    assert len(searched) == 1 and "--budget_metric latency" in searched[0] and "--enable_patch_gating 0" in searched[0]
    table = json.loads((tmp_path / "log" / "mnist_ablations_latency.json").read_text())["rows"]
    assert [(r["method"], r["match"]) for r in table] == [
        (m, "latency") for m in ("UVC", "UVC w/o patch gates", sweep_args.NO_SEARCH)]
    assert table[2]["macs_target"] == rows[1]["macs_target"] and table[1]["search_end"]["metric"] == "latency"
    assert table[0]["table_latency_ratio"] == pytest.approx(rows[0]["table_latency_ratio"])  # the same UVC model
    assert "budget 0.5, matched by latency" in (tmp_path / "log" / "mnist_ablations_latency.md").read_text()


@pytest.mark.slow
def test_demo_mnist_smoke(tmp_path):
    run_script("demo.py", "--dataset", "mnist", "--run_dir", tmp_path / "run", "--cache_dir", tmp_path / "cache",
               "--log_dir", tmp_path / "log")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["dataset"] == "mnist" and "vit_mnist_patch4_28" in summary["stage1_file"]
    for key in ("teacher_top1", "uvc_top1", "uvc_macs_ratio", "uvc_speedup_b64", "stage1_file", "stage2_file"):
        assert key in summary, key


def test_finetune_top1_reads_the_last_and_the_best_epoch(tmp_path):
    """post_train.py's and baselines.finetune's log.jsonl: epoch records, other records in between, and an
    epoch logged again after a resume (its last record counts)."""
    from scripts.results import finetune_top1
    records = [{"batch": 64}, {"epoch": 0, "val_top1": 90.0}, {"eval_step": 5, "top1": 99.0},
               {"epoch": 1, "val_top1": 95.0}, {"epoch": 2, "val_top1": 93.0}, {"epoch": 2, "val_top1": 94.0},
               {"best_file": "x", "best_top1": 95.0}]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert finetune_top1(str(log)) == {"top1_last": 94.0, "top1_best": 95.0}
    log.write_text(json.dumps({"batch": 64}) + "\n")
    with pytest.raises(SystemExit, match="no epoch record"):
        finetune_top1(str(log))


def test_the_front_check_names_a_peer_that_is_more_accurate_and_faster_than_a_uvc_point():
    """issue 24's criterion on seed means of top1_last: a peer more accurate by > 0.1 and faster by > 2%
    than a UVC point of the same match is named; one inside either margin is not."""
    from scripts.sweep_report import dominations, front_text

    def rows(method, budget, top1s, speed, match="macs"):
        return [{"method": method, "budget": budget, "match": match, "seed": i, "top1_last": t, "speedup_b64": speed}
                for i, t in enumerate(top1s)]
    base = rows("UVC", 0.5, [96.0, 96.2], 2.0) + rows("UVC", 0.4, [95.0, 95.2], 2.4)
    assert dominations(base + rows("greedy fit", 0.5, [96.2, 96.2], 2.03)) == []  # 0.1 better: not more
    assert dominations(base + rows("greedy fit", 0.5, [96.2, 96.2], 2.2)) == []  # so, however much faster
    assert dominations(base + rows("greedy fit", 0.5, [96.3, 96.3], 2.03)) == []  # 1.5% faster: not more
    beaten = dominations(base + rows("greedy fit", 0.5, [96.3, 96.3], 2.05))
    assert len(beaten) == 1 and "greedy fit at 0.5" in beaten[0] and "UVC at 0.5" in beaten[0]
    assert len(dominations(base + rows("greedy fit", 0.4, [96.5, 96.5], 2.5))) == 2  # beats both UVC points
    assert dominations(base + rows("greedy fit", 0.4, [99.0], 3.0, match="latency")) == []  # other match
    assert front_text(base).startswith("On the front")
    assert front_text(base + rows("greedy fit", 0.4, [96.0], 2.5)).startswith("Off the front")


def test_the_equal_speed_check_names_a_latency_matched_peer_more_accurate_than_uvc_at_its_budget():
    """issue 24's criterion under --match latency: a peer more than 0.1 above UVC's seed mean of top1_last
    at the same budget is named, whatever its speed; one within 0.1, at another budget or matched by MACs
    is not."""
    from scripts.sweep_report import front_text, shortfalls

    def rows(method, budget, top1s, match="latency", speed=2.0):
        return [{"method": method, "budget": budget, "match": match, "seed": i, "top1_last": t, "speedup_b64": speed}
                for i, t in enumerate(top1s)]
    base = rows("UVC", 0.5, [96.0, 96.2]) + rows("UVC", 0.4, [95.0, 95.2])
    assert shortfalls(base + rows("Torch-Pruning", 0.5, [96.2, 96.2])) == []  # 0.1 better: not more
    behind = shortfalls(base + rows("Torch-Pruning", 0.5, [96.25, 96.25], speed=1.0))
    assert behind == ["Torch-Pruning at 0.5 (96.25) ahead of UVC (96.10) at equal speed"]
    assert shortfalls(base + rows("Torch-Pruning", 0.5, [99.0], match="macs")) == []  # matched by MACs
    assert shortfalls(base + rows("Torch-Pruning", 0.3, [99.0])) == []  # no UVC run at 0.3
    assert shortfalls(base + rows("greedy fit", 0.4, [95.2, 95.3])) == ["greedy fit at 0.4 (95.25) ahead of UVC "
                                                                           "(95.10) at equal speed"]
    assert "at every budget UVC's top-1 is at least that of every peer matched to its time" in front_text(base)
    assert "ahead of UVC" in front_text(base + rows("greedy fit", 0.4, [96.0]))
    assert "equal speed" not in front_text(rows("UVC", 0.5, [96.0], match="macs"))  # no latency rows: no claim


def test_a_peer_that_cannot_reach_uvcs_time_is_not_counted_at_equal_speed_and_is_named():
    """At low latency budgets a peer's fastest model is slower than UVC's (matched false): more accurate
    there, it is not ahead "at equal speed"; the text names it with both time ratios instead."""
    from scripts.sweep_report import front_text, reach_text, shortfalls

    def rows(method, top1s, matched, ratio):
        return [{"method": method, "budget": 0.3, "match": "latency", "seed": i, "top1_last": t, "speedup_b64": 1.0,
                 "matched": matched, "latency_ratio": ratio, "uvc_latency_ratio": 0.29} for i, t in enumerate(top1s)]
    uvc = [{"method": "UVC", "budget": 0.3, "match": "latency", "seed": i, "top1_last": t, "speedup_b64": 3.4}
           for i, t in enumerate([96.0, 96.2])]
    slow = rows("greedy fit", [97.0, 97.2], False, 0.65)
    assert shortfalls(uvc + slow) == []
    assert reach_text(uvc + slow) == ("Not as fast as UVC at any MACs target, so compared on the front only: greedy "
                                      "fit at 0.3 (2 of 2 seeds; time ratio 0.650 against UVC's 0.290, top-1 97.10 "
                                      "against 96.10).")
    assert front_text(uvc + slow).endswith(reach_text(uvc + slow))
    assert shortfalls(uvc + rows("greedy fit", [97.0, 97.2], True, 0.29)) != []  # matched: ahead at equal speed
    assert reach_text(uvc + rows("greedy fit", [97.0, 97.2], True, 0.29)) == ""


def test_search_end_reads_where_a_search_ended_and_the_sweep_states_it_per_match(tmp_path):
    """UVC's rows carry where its search ended (the last record joint_train.py writes); the sweep's text
    gives the range of those ends from the budget per match, by the search's own count and timed whole."""
    from scripts.results import search_end
    from scripts.sweep_report import landing_text

    def log(name, end):
        path = tmp_path / name
        path.write_text(json.dumps({"epoch": 9, "val_top1": 93.4}) + "\n" + json.dumps(end) + "\n")
        return str(path)
    latency = {"stage1_file": "x.pth", "budget_metric": "latency", "budget_gap": -0.035, "macs_ratio": 0.41,
               "searched_macs_ratio": 0.41, "searched_latency_ratio": 0.465, "measured_latency_ratio": 0.437}
    macs = {"stage1_file": "y.pth", "budget_metric": "macs", "budget_gap": 0.004, "searched_macs_ratio": 0.404,
            "measured_latency_ratio": None}
    assert search_end(log("l.jsonl", latency)) == {"metric": "latency", "budget": 0.5, "searched": 0.465,
                                                   "timed": 0.437}
    assert search_end(log("m.jsonl", macs)) == {"metric": "macs", "budget": 0.4, "searched": 0.404}
    aligned = dict(latency, patches_searched=40, patches_restored_to_align=7)
    assert search_end(log("a.jsonl", aligned)) == {"metric": "latency", "budget": 0.5, "searched": 0.465,
                                                   "timed": 0.437, "patches_searched": 40, "patches_restored": 7}
    fitted = {"stage1_file": "z.pth", "budget_metric": "macs", "budget": 0.5, "searched_macs_ratio": 0.47,
              "macs_ratio": 0.5, "groups_removed_to_fit": 0}  # --greedy_fit 1 writes the budget, no gap
    assert search_end(log("g.jsonl", fitted)) == {"metric": "macs", "budget": 0.5, "searched": 0.47}
    assert search_end(str(tmp_path / "none.jsonl")) is None  # a one-shot peer's stage-1 file has no search log
    assert search_end(log("e.jsonl", {"epoch": 0})) is None
    rows = [{"method": "UVC", "match": "latency", "search_end": search_end(log("l.jsonl", latency))},
            {"method": "UVC", "match": "latency", "search_end": dict(search_end(log("l.jsonl", latency)),
                                                                    searched=0.49, timed=0.52)},
            {"method": "UVC", "match": "macs", "search_end": search_end(log("m.jsonl", macs))},
            {"method": "greedy fit", "match": "macs"}]
    assert landing_text(rows) == ("UVC's 2 searches matched by latency ended -0.035 to -0.010 from their budget by "
                                  "their own count (latency), -0.063 to +0.020 timed whole. UVC's 1 search "
                                  "matched by macs ended +0.004 to +0.004 from their budget by their own count "
                                  "(macs).")
    assert landing_text(rows[3:]) == ""
    rows[1]["search_end"].update(patches_searched=40, patches_restored=7)
    rows[0]["search_end"].update(patches_searched=49, patches_restored=0)
    assert ("(latency), -0.063 to +0.020 timed whole. In 1 of them the freeze put back patches (7) up to the token "
            "count the latency table times fastest. UVC's 1 search") in landing_text(rows)
    rows[2]["search_end"].update(patches_searched=45, patches_restored=2)
    assert landing_text(rows).endswith("(macs). In 1 of them the freeze put back patches (2) up to the token count "
                                       "their MACs were counted at (steps of --token_step).")


def test_the_committed_digits_sweep_is_over_three_seeds():
    """log/digits_sweep.json, the README's headline table: 3 seeds per method and budget, both top-1 columns in
    every row."""
    import json
    import os
    with open(os.path.join(os.path.dirname(__file__), "..", "log", "digits_sweep.json")) as f:
        result = json.load(f)
    assert result["seeds"] == [730, 731, 732] and result["finetune_epochs"] == 30
    methods = {r["method"] for r in result["rows"]}
    assert methods == {"UVC", "uniform magnitude", "Torch-Pruning", "greedy fit"}
    assert {r["budget"] for r in result["rows"]} == {0.3, 0.5, 0.7}
    for m in methods:
        for b in (0.3, 0.5, 0.7):
            assert sorted(r["seed"] for r in result["rows"] if (r["method"], r["budget"]) == (m, b)) == [730, 731, 732]
    assert all(r["top1_best"] >= r["top1_last"] for r in result["rows"])


def _seed_means(rows, key="top1_last"):
    out = {}
    for r in rows:
        out.setdefault((r["method"], r["budget"]), []).append(r[key])
    return {k: sum(v) / len(v) for k, v in out.items()}


def _readme_and_digits():
    import json
    import os
    root = os.path.join(os.path.dirname(__file__), "..")
    with open(os.path.join(root, "README.md")) as f:
        text = f.read()
    with open(os.path.join(root, "log", "digits_sweep.json")) as f:
        sweep = json.load(f)["rows"]
    with open(os.path.join(root, "log", "digits_ablations.json")) as f:
        ablations = json.load(f)["rows"]
    with open(os.path.join(root, "log", "digits_sweep.md")) as f:
        table = [line for line in f.read().splitlines() if line.startswith("|")]
    return text, sweep, ablations, table


def test_the_readme_reads_the_committed_digits_sweep():
    """README, "Headline results": the table is log/digits_sweep.md's; who keeps the most top-1 at each budget
    (last-epoch seed means), that the seed ranges of UVC and the best other method overlap, and the one point off
    UVC's front the verdict line finds, as log/digits_sweep.json holds them."""
    from scripts.sweep_report import dominations
    text, rows, ablations, table = _readme_and_digits()
    readme = " ".join(text.split())
    assert all(line in text for line in table)
    means = _seed_means(rows)
    best_peer = {b: max((m for (m, bb) in means if bb == b and m != "UVC"), key=lambda m: means[m, b])
                 for b in (0.3, 0.5, 0.7)}
    lead = [b for b in (0.3, 0.5, 0.7) if means["UVC", b] > means[best_peer[b], b]]
    assert lead == [0.3, 0.7] and best_peer[0.5] == "greedy fit"
    assert (f"UVC keeps the most top-1 at 0.3 and 0.7 ({means['UVC', 0.3]:.2f} and {means['UVC', 0.7]:.2f} against "
            f"the best peer's {means[best_peer[0.3], 0.3]:.2f} and {means[best_peer[0.7], 0.7]:.2f}), the greedy fit "
            f"at 0.5 ({means['greedy fit', 0.5]:.2f} against UVC's {means['UVC', 0.5]:.2f}).") in readme
    ranges = {b: [[r["top1_last"] for r in rows if (r["method"], r["budget"]) == (m, b)] for m in ("UVC", peer)]
              for b, peer in best_peer.items()}
    assert [b for b, (u, p) in ranges.items() if min(u) <= max(p) and min(p) <= max(u)] == [0.5, 0.7]
    u, p = ranges[0.3]
    assert (f"The seed ranges overlap at 0.5 and 0.7; at 0.3 UVC's worst seed ({min(u):.2f}) is above the best "
            f"peer's best ({max(p):.2f}).") in readme
    speed = _seed_means(rows, "speedup_b64")
    (beaten,) = dominations(rows)
    assert beaten.startswith("greedy fit at 0.5 ")
    gain = speed["greedy fit", 0.5] / speed["UVC", 0.5] - 1
    assert (f"the greedy fit at 0.5, also {100 * gain:.0f}% faster ({speed['greedy fit', 0.5]:.2f}x against "
            f"{speed['UVC', 0.5]:.2f}x).") in readme
    fastest = {b: max((m for (m, bb) in speed if bb == b), key=lambda m: speed[m, b]) for b in (0.3, 0.5, 0.7)}
    least = {b: min((m for (m, bb) in means if bb == b), key=lambda m: means[m, b]) for b in (0.3, 0.5, 0.7)}
    assert set(fastest.values()) == set(least.values()) == {"uniform magnitude"}
    uniform = [r["removed"] for r in rows if r["method"] == "uniform magnitude"]
    assert all(r["heads"] > 0 and r["dims"] == 0 for r in uniform)
    assert "Uniform magnitude, which removes whole heads, is the fastest at every budget and the least accurate." \
        in readme
    before = _seed_means(rows, "top1_before_ft")
    assert (f"At 0.5 the greedy fit alone keeps {before['greedy fit', 0.5]:.2f} before fine-tuning and UVC's search "
            f"{before['UVC', 0.5]:.2f}:") in readme


def test_the_readme_reads_the_committed_digits_ablations():
    """README, "Headline results": untried skips at 0.5 (how many seeds skipped, top-1 lost before fine-tuning and
    at the last epoch) and the top-1 lost without the importance term, as log/digits_ablations.json holds them."""
    text, _, rows, _ = _readme_and_digits()
    readme = " ".join(text.split())
    assert sorted({r["seed"] for r in rows}) == [730, 731, 732]
    last = {m: v for (m, _), v in _seed_means(rows).items()}
    before = {m: v for (m, _), v in _seed_means(rows, "top1_before_ft").items()}
    skipped = sum(r["removed"]["blocks"] > 0 for r in rows if r["method"] == "UVC w/o skip trial")
    assert all(r["removed"]["blocks"] == 0 for r in rows if r["method"] == "UVC")
    assert (f"untried, the search skipped blocks at 0.5 in {skipped} of 3 seeds and kept "
            f"{before['UVC'] - before['UVC w/o skip trial']:.2f} less top-1 before fine-tuning and "
            f"{last['UVC'] - last['UVC w/o skip trial']:.2f} less at the last epoch; without its importance term it "
            f"kept {last['UVC'] - last['UVC w/o importance term']:.2f} less at the last epoch") in readme


def test_the_readme_reads_the_committed_mnist_sweep_at_latency_budgets_0_3_to_0_5():
    """README, "Headline results": at latency 0.3 UVC's last-epoch seed mean and speedup, with no peer as fast
    in any seed; at 0.4 UVC's mean the highest; at 0.5 uniform magnitude matched to UVC's time in every seed and ahead of it, the only
    shortfall at equal speed; as log/mnist_sweep.json holds them. docs/results.md carries log/mnist_sweep.md's
    table, and the README the table itself with its command."""
    import json
    import os
    from scripts.sweep_report import out_of_reach, shortfalls
    root = os.path.join(os.path.dirname(__file__), "..")
    readme = " ".join(open(os.path.join(root, "README.md")).read().split())
    with open(os.path.join(root, "log", "mnist_sweep.json")) as f:
        result = json.load(f)
    assert result["seeds"] == [730, 731, 732] and result["finetune_epochs"] == 40
    rows = result["rows"]
    assert {(r["match"], r["budget"]) for r in rows} == {("latency", 0.3), ("latency", 0.4), ("latency", 0.5)}
    assert all(sorted(r["seed"] for r in rows if (r["method"], r["budget"]) == (m, b)) == [730, 731, 732]
               for m in ("UVC", "uniform magnitude", "Torch-Pruning", "greedy fit") for b in (0.3, 0.4, 0.5))
    means, speed = _seed_means(rows), _seed_means(rows, "speedup_b64")
    slow = out_of_reach(rows)
    assert all(not r["matched"] for m in ("uniform magnitude", "Torch-Pruning", "greedy fit")
               for r in slow[m, "latency", 0.3])
    assert (f"At 0.3 UVC keeps {means['UVC', 0.3]:.2f} top-1 at {speed['UVC', 0.3]:.2f}x, and no peer gets as fast "
            f"at any MACs target.") in readme
    assert max(means[m, 0.4] for m in ("uniform magnitude", "Torch-Pruning", "greedy fit")) < means["UVC", 0.4]
    assert f"At 0.4 UVC keeps the most top-1, {means['UVC', 0.4]:.2f} at {speed['UVC', 0.4]:.2f}x." in readme
    assert ("uniform magnitude", "latency", 0.5) not in slow
    assert shortfalls(rows) == [f"uniform magnitude at 0.5 ({means['uniform magnitude', 0.5]:.2f}) ahead of UVC "
                                f"({means['UVC', 0.5]:.2f}) at equal speed"]
    assert (f"At 0.5 uniform magnitude, matched to UVC's measured time, keeps {means['uniform magnitude', 0.5]:.2f} "
            f"against UVC's {means['UVC', 0.5]:.2f}: the one point of this table where a peer is ahead at equal "
            f"speed.") in readme
    # the sentence after it reads log/mnist_sweep_next/ per match: test_sweep_merge checks it
    results = open(os.path.join(root, "docs", "results.md")).read()
    table = open(os.path.join(root, "log", "mnist_sweep.md")).read()
    assert all(line in results for line in table.splitlines() if line.startswith("|"))
    readme_lines = open(os.path.join(root, "README.md")).read().splitlines()
    assert all(line in readme_lines for line in table.splitlines() if line.startswith("|"))
    assert "top-1 at the last FT epoch" in table and "top-1 at the best FT epoch" in table
    assert result["command"] in readme.replace(" \\ ", " ")



def test_the_committed_latency_importance_is_what_design_md_shows():
    """log/latency_importance.json (scripts/compare_runs.py: the MNIST ViT's latency searches with worth in
    time shares, today's, and in MAC shares, not adopted, 3 seeds each at 0.7 and 0.5). docs/design.md shows
    its table line for line and reads its differences: the 0.7 gain came with slower models, and at 0.5,
    where it was not tuned, it kept less top-1 at the same speed."""
    from scripts import compare_runs
    result = json.load(open(os.path.join(ROOT, "log", "latency_importance.json")))
    design = open(os.path.join(ROOT, "docs", "design.md")).read()
    for line in compare_runs.table(result["rows"]).splitlines():
        assert line in design, line
    mean = lambda budget, units, key: sum(r[key] for r in result["rows"] if r["group"].startswith(  # noqa: E731
        f"latency {budget}, importance per {units} share")) / 3
    groups = [r["group"] for r in result["rows"]]
    assert sorted(groups.count(g) for g in set(groups)) == [3] * 4
    text = " ".join(design.split())
    gain7 = mean(0.7, "MAC", "top1_last") - mean(0.7, "time", "top1_last")
    slower7 = 1 - mean(0.7, "MAC", "speedup_b64") / mean(0.7, "time", "speedup_b64")
    loss5 = mean(0.5, "time", "top1_last") - mean(0.5, "MAC", "top1_last")
    assert f"it kept {gain7:.2f} more top-1 at the last epoch and its models ran {slower7:.0%} slower" in text
    assert f"it kept {loss5:.2f} less at the same speed" in text and loss5 > 0
    assert abs(mean(0.5, "MAC", "speedup_b64") / mean(0.5, "time", "speedup_b64") - 1) < 0.02
    assert f"{mean(0.5, 'MAC', 'macs_ratio'):.2f} of the MACs against {mean(0.5, 'time', 'macs_ratio'):.2f}" in text


def test_a_row_matched_by_latency_records_the_tables_estimate_of_its_own_model():
    """measured(): a row matched by latency carries the table's estimate of the model it fine-tuned (`after`), a
    compact model; a MACs row and a model that is not compact (Torch-Pruning's) carry none."""
    from helpers import noisy_tiny_vit
    from test_latency import fake_table
    from models.compact import CompactViT
    from uvc.cost.cost import compact_cost, dense_cost
    from uvc.cost.flops import ViTDims
    from uvc.cost.latency import LatencyCost
    from uvc.deploy.export import compact_spec_from_arch
    from uvc.deploy.freeze import base_spec
    from models.vit import vit_structure
    vit = noisy_tiny_vit(0)
    dims = ViTDims.of(vit)
    table, arch = fake_table(dims), {**base_spec(vit, ""), **vit_structure(vit)}

    def compact(neurons, patches):
        blocks = [dict(b, neurons=list(range(neurons))) for b in arch["blocks"]]
        return CompactViT(compact_spec_from_arch(dict(arch, blocks=blocks, patches_kept=list(range(patches)))))
    narrow, before = compact(32, 12), compact(128, 16)

    class Bench:
        def measure(self, runs, dense):
            stats = {"top1": 90.0, "params": 1, "images_per_s_b64": 1.0}
            return [stats] + [dict(stats, name=f"m{i}", top1_last=90.0, top1_best=91.0, macs_ratio=0.5, speedup_b64=2.0,
                                   top1_before=80.0, removed={}) for i, _ in enumerate(runs)]
    runs = [dict(budget=0.5, match=match, seed=730, model_file="f", after=after, before=before)
            for match, after in (("latency", narrow), ("macs", narrow), ("latency", torch.nn.Linear(2, 2)))]
    rows = sweep.measured(Bench(), runs, vit, table)["rows"]
    cost = LatencyCost(dims, table)
    assert rows[0]["table_latency_ratio"] == pytest.approx(compact_cost(cost, narrow.spec) / dense_cost(cost))
    assert rows[0]["table_latency_ratio"] < 0.9 * compact_cost(cost, before.spec) / dense_cost(cost)
    assert "table_latency_ratio" not in rows[1] and "table_latency_ratio" not in rows[2]
