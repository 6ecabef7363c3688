"""scripts/benchmark_search.py: what a cell reports, from a run's log.jsonl, and the acceptance window."""
import json
import os

from scripts import benchmark_search as bs

KEYS = ("budget", "model", "config", "search_steps", "searched_ratio", "exported_ratio", "greedy_changed_frac",
        "max_undershoot", "teacher_top1", "top1_after_freeze")


def _fake_run(path, hard, budget=0.5, warn=False):
    """A stage-1 log.jsonl as joint_train.py writes it: warm-up epoch, search epochs, the stage-1 record."""
    os.makedirs(path, exist_ok=True)
    kept = {"heads": [4] * 8, "value_dims": [64] * 8, "neurons": [200] * 8, "skipped": [0] * 8, "patches_kept": 16}
    recs = [{"epoch": 0, "searching": False, "hard_macs_ratio": 1.0, "max_undershoot": 0.0,
             "search_progress": 0.0, **kept}]
    for i, h in enumerate(hard):
        recs.append({"epoch": i + 1, "searching": True, "hard_macs_ratio": h, "max_undershoot": 0.02,
                     "search_progress": (i + 1) / len(hard), **kept})
    if warn:
        recs.append({"warning": "WARNING: stage 1 ended at top-1 9.00, under half the teacher's"})
    recs.append({"stage1_file": "x.pth", "searched_macs_ratio": hard[-1], "macs_ratio": budget - 0.002,
                 "greedy_changed_frac": 0.001, "teacher_top1": 98.0, "final_top1": 95.0, "search_steps": 400,
                 "round_to": 8, "token_step": 8, "flip_trials": 5, "flips_rejected": 4, "skip_trials": 3, "skips_rejected": 2})
    with open(os.path.join(path, "log.jsonl"), "w") as f:
        f.write("\n".join(json.dumps(r) for r in recs) + "\n")


def test_a_cell_reports_the_issue_keys_and_its_window(tmp_path):
    _fake_run(tmp_path / "ok", [0.9, 0.7, 0.55, 0.51, 0.5])
    cell = bs.summarise("digits", 0.5, 1, str(tmp_path / "ok"), 730)
    cell["masking"] = "hard"
    assert all(k in cell for k in KEYS)
    assert cell["reached_budget_at"] == 0.8 and cell["search_steps"] == 400 and cell["round_to"] == 8
    assert cell["token_step"] == 8  # the MACs search's token step, from its stage-1 record
    assert bs.ok(cell) and "| digits | 0.5 | 1x | hard |" in bs.table([cell])
    assert (cell["skip_trials"], cell["skips_rejected"]) == (3, 2)
    assert "patch drops tried 5, refused 4; block skips tried 3, refused 2" in bs.allocation([cell])
    _fake_run(tmp_path / "high", [0.9, 0.8, 0.7, 0.6, 0.6])  # ended 0.1 over the budget
    assert not bs.ok(bs.summarise("digits", 0.5, 1, str(tmp_path / "high"), 730))
    _fake_run(tmp_path / "warned", [0.9, 0.5], warn=True)  # a collapse warning fails the cell
    assert not bs.ok(bs.summarise("digits", 0.5, 1, str(tmp_path / "warned"), 730))


def test_the_committed_quick_benchmark_ran_at_the_default_round_to_and_every_cell_is_in_its_window():
    """log/search_benchmark_quick.json (the README's table): every cell at the default --round_to, the
    search's own end ratio in [B - 0.05, B + 0.02], the fit changing (or, exported as searched, having
    to change) at most 5% of the groups."""
    with open(os.path.join(os.path.dirname(__file__), "..", "log", "search_benchmark_quick.json")) as f:
        cells = json.load(f)["cells"]
    assert len(cells) == 6
    for c in cells:
        assert c["round_to"] == bs.ROUND_TO
        assert c["budget"] - 0.05 <= c["searched_ratio"] <= c["budget"] + 0.02
        assert bs.fit_share(c) <= 0.05 and bs.ok(c)


def test_run_lengths_reach_the_budget_at_the_same_fraction():
    """log/search_benchmark.json: the 1x and 4x runs of each cell (same model, budget, seed) first reach
    B + 0.02 at most 0.05 of the search apart (docs/design.md; read at epoch ends)."""
    with open(os.path.join(os.path.dirname(__file__), "..", "log", "search_benchmark.json")) as f:
        cells = json.load(f)["cells"]
    at = {(c["model"], c["budget"], c["seed"], c["length"]): c["reached_budget_at"] for c in cells}
    pairs = [(at[k], at[k[:3] + ("4x",)]) for k in at if k[3] == "1x" and k[:3] + ("4x",) in at]
    assert len(pairs) == 6
    assert all(a is not None and b is not None and abs(a - b) <= 0.05 for a, b in pairs), pairs


def test_an_exported_as_searched_cell_is_judged_at_the_ends_of_its_window():
    """ok(): the search's end in [B - 0.05, B + 0.02] and at most 5% left to the fit, each end inside; a
    cell exported as searched is not held to the fit's narrower export window."""
    base = {"budget": 0.5, "greedy_changed_frac": 0.0, "warned": False}
    for searched, would, good in [(0.45, 0.05, True), (0.45 - 1e-9, 0.0, False), (0.52, 0.0, True),
                                  (0.52 + 1e-9, 0.0, False), (0.5, 0.05 + 1e-9, False), (0.46, 0.01, True)]:
        c = dict(base, searched_ratio=searched, exported_ratio=searched, greedy_would_change_frac=would)
        assert bs.ok(c) is good and bs.fit_share(c) == would, (searched, would)
    fitted = dict(base, searched_ratio=0.46, exported_ratio=0.46, greedy_would_change_frac=None)
    assert not bs.ok(fitted)  # a fitted export must be in [B - 0.03, B + 0.01]
