"""scripts/sweep.py --merge (scripts/sweep_merge.py): a pass keeps the log's rows it does not produce, replaces
those it does, names the pass that timed each row, and refuses rows of another teacher or fine-tuning length."""
import json

import pytest

from scripts import sweep_args
from scripts.sweep_merge import merged, passes_text


def row(method, budget, seed, top1, match="latency"):
    return {"method": method, "budget": budget, "match": match, "seed": seed, "top1_last": top1}


def result(rows, command, dense=1000.0, top1=98.6, epochs=40, sha="ab"):
    return {"teacher_top1": top1, "teacher_sha256": sha, "finetune_epochs": epochs, "seeds": sorted({r["seed"] for r in rows}),
            "rows": rows, "timing_threads": 1, "teacher_images_per_s_b64": dense, "command": command}


def test_a_pass_keeps_the_rows_it_does_not_produce_and_replaces_those_it_does(tmp_path):
    path = tmp_path / "mnist_sweep.json"
    old = result([row("UVC", 0.3, 730, 97.0), row("UVC", 0.5, 730, 98.0), row("UVC", 0.5, 731, 98.1)], "first")
    path.write_text(json.dumps(old))  # a JSON from before --merge: no passes, no row passes
    new = merged(result([row("UVC", 0.5, 731, 99.0), row("UVC", 0.7, 732, 96.0)], "second", dense=900.0), str(path))
    got = {(r["budget"], r["seed"]): (r["top1_last"], r["pass"]) for r in new["rows"]}
    assert got == {(0.3, 730): (97.0, 0), (0.5, 730): (98.0, 0), (0.5, 731): (99.0, 1), (0.7, 732): (96.0, 1)}
    assert [p["command"] for p in new["passes"]] == ["first", "second"] and new["seeds"] == [730, 731, 732]
    assert new["passes"][1]["teacher_images_per_s_b64"] == 900.0
    text = passes_text(new)
    assert "pass 1 (latency 0.3, latency 0.5; dense model timed at 1000 images/s): `first`" in text
    assert "pass 2 (latency 0.5, latency 0.7; dense model timed at 900 images/s): `second`" in text

    path.write_text(json.dumps(new))  # a third pass replacing every row of the first drops that pass
    third = merged(result([row("UVC", 0.3, 730, 97.5), row("UVC", 0.5, 730, 98.5)], "third"), str(path))
    assert [p["command"] for p in third["passes"]] == ["second", "third"]
    assert sorted((r["budget"], r["seed"], r["pass"]) for r in third["rows"]) == \
        [(0.3, 730, 1), (0.5, 730, 1), (0.5, 731, 0), (0.7, 732, 0)]


def test_without_a_log_the_pass_is_the_only_one(tmp_path):
    new = merged(result([row("UVC", 0.4, 730, 97.0)], "only"), str(tmp_path / "none.json"))
    assert [r["pass"] for r in new["rows"]] == [0] and passes_text(new) == "produced by `only`"


@pytest.mark.parametrize("changed", [{"top1": 98.5}, {"epochs": 30}, {"sha": "cd"}])
def test_rows_of_another_teacher_or_length_are_refused_in_one_line(tmp_path, changed):
    path = tmp_path / "mnist_sweep.json"
    path.write_text(json.dumps(result([row("UVC", 0.3, 730, 97.0)], "first")))
    with pytest.raises(SystemExit, match="run without --merge, or give another --log_dir"):
        merged(result([row("UVC", 0.7, 730, 96.0)], "second", **changed), str(path))


@pytest.mark.parametrize("flags", [["--merge", "--ablations"], ["--merge", "--match", "latency", "--prune_only"]])
def test_merge_is_for_the_sweeps_table_only(flags, capsys):
    with pytest.raises(SystemExit):
        sweep_args.parse_args(flags, "doc")
    assert "--merge adds this pass's rows" in capsys.readouterr().err


def test_a_log_without_the_teachers_hash_is_checked_by_its_top1(tmp_path):
    path = tmp_path / "mnist_sweep.json"
    old = result([row("UVC", 0.3, 730, 97.0)], "first")
    del old["teacher_sha256"]
    path.write_text(json.dumps(old))
    assert len(merged(result([row("UVC", 0.7, 730, 96.0)], "second", sha="cd"), str(path))["rows"]) == 2
    with pytest.raises(SystemExit, match="teacher top-1"):
        merged(result([row("UVC", 0.7, 730, 96.0)], "second", top1=98.4), str(path))


def test_the_committed_mnist_teacher_is_the_file_its_note_describes():
    """log/mnist_teacher.pth (the MNIST sweep's --teacher): the sha256 log/mnist_teacher.md gives, and the
    best-epoch top-1 it states, evaluated here on the validation split."""
    import os
    import re
    from scripts.pipeline import Bench
    from scripts.sweep_merge import file_sha256
    root = os.path.join(os.path.dirname(__file__), "..")
    note = " ".join(open(os.path.join(root, "log", "mnist_teacher.md")).read().split())
    path = os.path.join(root, "log", "mnist_teacher.pth")
    assert f"sha256 `{file_sha256(path)}`" in note
    stated = float(re.search(r"best epoch (\d+\.\d\d)", note).group(1))
    bench = Bench("mnist")
    assert f"{bench.top1(bench.dense_model(path)):.2f}" == f"{stated:.2f}"


def test_the_merged_table_names_each_pass_and_pools_every_budget(tmp_path):
    """The committed MNIST sweep as an earlier pass and a new pass of budget 0.7 (its rows copied from 0.5):
    log/<name>.md's text names both passes and their cells, and the table holds all four budgets."""
    import os
    from scripts import sweep
    root = os.path.join(os.path.dirname(__file__), "..")
    old = json.loads(open(os.path.join(root, "log", "mnist_sweep.json")).read())
    path = tmp_path / "mnist_sweep.json"
    path.write_text(json.dumps(old))
    rows = [dict(r, budget=0.7) for r in old["rows"] if r["budget"] == 0.5]
    new = dict(old, rows=rows, command="python scripts/sweep.py --budgets 0.7 --merge", seeds=[730, 731, 732])
    new.pop("teacher_sha256", None)
    args = sweep.parse_args(["--budgets", "0.7", "--match", "latency", "--merge", "--log_dir", str(tmp_path)])
    args.search_epochs = 10
    text = sweep.results_text(args, merged(new, str(path)), "mnist_sweep")
    assert "budgets 0.3, 0.4, 0.5, 0.7, matched by latency" in text
    assert "pass 1 (latency 0.3, latency 0.4, latency 0.5; dense model timed at " in text
    assert "pass 2 (latency 0.7; dense model timed at" in text and "`python scripts/sweep.py --budgets 0.7 --merge`" in text
    assert sum(line.startswith("| UVC | latency |") for line in text.splitlines()) == 4


def test_the_sweep_under_way_is_from_the_committed_teacher_and_results_md_reads_it():
    """log/mnist_sweep_next/ (docs/results.md): every row distilled from log/mnist_teacher.pth (its hash), 3 seeds
    and 40 epochs per method of a cell (UVC and the greedy fit in each); results.md carries its table and reads its means:
    UVC ahead at latency 0.7 (a v4 table; before it, log/mnist_sweep_next/mnist_ablations_latency.json's greedy fit
    ahead), the greedy fit off UVC's front at MACs 0.7; the teacher it replaces is log/mnist_sweep.json's."""
    import os
    from scripts.sweep_report import dominations
    from scripts.sweep_merge import file_sha256
    root = os.path.join(os.path.dirname(__file__), "..")
    nxt = json.loads(open(os.path.join(root, "log", "mnist_sweep_next", "mnist_sweep.json")).read())
    assert nxt["teacher_sha256"] == file_sha256(os.path.join(root, "log", "mnist_teacher.pth"))
    assert nxt["finetune_epochs"] == 40 and nxt["seeds"] == [730, 731, 732]
    cells = {(r["match"], r["budget"]) for r in nxt["rows"]}
    assert {("latency", 0.7), ("macs", 0.4), ("macs", 0.5), ("macs", 0.7)} <= cells
    for match, budget in cells:  # UVC and the greedy fit in every cell, every method of a cell over 3 seeds
        methods = {r["method"] for r in nxt["rows"] if (r["match"], r["budget"]) == (match, budget)}
        assert {"UVC", "greedy fit"} <= methods
        for method in methods:
            assert sorted(r["seed"] for r in nxt["rows"] if (r["method"], r["match"], r["budget"]) ==
                          (method, match, budget)) == [730, 731, 732]
    doc = open(os.path.join(root, "docs", "results.md")).read()
    table = open(os.path.join(root, "log", "mnist_sweep_next", "mnist_sweep.md")).read()
    assert all(line in doc for line in table.splitlines() if line.startswith("|"))
    text = " ".join(doc.split())
    cell = lambda m, match, b, k="top1_last": sum(r[k] for r in nxt["rows"] if (r["method"], r["match"], r["budget"])  # noqa
                                                  == (m, match, b)) / 3
    l07 = lambda m, k="top1_last": cell(m, "latency", 0.7, k)  # noqa: E731  (priced by a uvc-latency-v4 table)
    assert (f"UVC keeps {l07('UVC'):.2f} top-1 at the last epoch at {l07('UVC', 'speedup_b64'):.2f}x, against the "
            f"greedy fit's {l07('greedy fit'):.2f}, uniform magnitude's {l07('uniform magnitude'):.2f} and "
            f"Torch-Pruning's {l07('Torch-Pruning'):.2f}") in text
    assert all(l07("UVC") > l07(p) for p in ("greedy fit", "uniform magnitude", "Torch-Pruning"))
    assert not any("match latency" in d for d in dominations(nxt["rows"]))
    at = {(r["method"], r["seed"]): r for r in nxt["rows"] if (r["match"], r["budget"]) == ("latency", 0.7)}
    gaps = [round(at["UVC", s]["top1_last"] - at["greedy fit", s]["top1_last"], 1) for s in (730, 731, 732)]
    assert gaps == [-0.1, 0.1, 0.7] and "UVC is 0.1 behind, 0.1 ahead and 0.7 ahead of the greedy fit" in text
    ends = {s: at["UVC", s]["search_end"] for s in (730, 731, 732)}
    assert [(e["patches_searched"], e["patches_restored"]) for e in ends.values()] == [(49, 0), (49, 0), (40, 7)]
    assert "seed 732, whose search went down to 41 tokens and whose freeze put back 7 patches to keep 48" in text
    l05 = lambda m, k="top1_last": cell(m, "latency", 0.5, k)  # noqa: E731  (not tuned on)
    at = {(r["method"], r["seed"]): r for r in nxt["rows"] if (r["match"], r["budget"]) == ("latency", 0.5)}
    assert {m for m, _ in at} == {"UVC", "greedy fit", "uniform magnitude", "Torch-Pruning"}
    lows = {m: min(at[m, s]["top1_last"] for s in (730, 731, 732)) for m in ("UVC", "greedy fit")}
    highs = {m: max(at[m, s]["top1_last"] for s in (730, 731, 732)) for m in ("UVC", "greedy fit")}
    assert lows["UVC"] > highs["greedy fit"]  # "the ranges do not overlap"
    assert (f"UVC keeps {l05('UVC'):.2f} top-1 at the last epoch at {l05('UVC', 'speedup_b64'):.2f}x against the "
            f"greedy fit's {l05('greedy fit'):.2f} at its time, and the ranges do not overlap ({lows['UVC']:.2f}-"
            f"{highs['UVC']:.2f} and {lows['greedy fit']:.2f}-{highs['greedy fit']:.2f})") in text
    gaps = [f"{at['UVC', s]['top1_last'] - at['greedy fit', s]['top1_last']:.1f}" for s in (730, 731, 732)]
    assert f"seed by seed UVC is {gaps[0]}, {gaps[1]} and {gaps[2]} ahead" in text
    ends = [at["UVC", s]["search_end"] for s in (730, 731, 732)]
    assert [e["patches_restored"] for e in ends] == [0, 2, 4]  # "put back 2 and 4 patches ... keeping 48 tokens"
    assert [e["patches_searched"] + e["patches_restored"] + 1 for e in ends[1:]] == [48, 48]
    um, tp = ("uniform magnitude", "Torch-Pruning")
    assert (f"Uniform magnitude keeps {l05(um):.2f} at {l05(um, 'speedup_b64'):.2f}x and Torch-Pruning {l05(tp):.2f} at "
            f"{l05(tp, 'speedup_b64'):.2f}x: Torch-Pruning is {l05(tp) - l05('UVC'):.2f} ahead of UVC, within the 0.1") in text
    assert 0 < l05(tp) - l05("UVC") <= 0.1 and l05(um) < l05("UVC")
    unmatched = [s for s in (730, 731, 732) if not at[tp, s]["matched"]]
    l04 = lambda m, k="top1_last": cell(m, "latency", 0.4, k)  # noqa: E731  (not tuned on)
    at4 = {(r["method"], r["seed"]): r for r in nxt["rows"] if (r["match"], r["budget"]) == ("latency", 0.4)}
    assert all(l04("UVC") > l04(p) for p in (um, tp, "greedy fit"))
    assert (f"UVC keeps {l04('UVC'):.2f} top-1 at the last epoch at {l04('UVC', 'speedup_b64'):.2f}x, and uniform "
            f"magnitude, matched to its time, {l04(um):.2f} at {l04(um, 'speedup_b64'):.2f}x") in text
    tries = lambda m, k: [at4[m, s][k] for s in (730, 731, 732)]  # noqa: E731
    assert not any(tries(tp, "matched") + tries("greedy fit", "matched")) and all(tries(um, "matched"))
    span = lambda v: f"{min(v):.3f}-{max(v):.3f}"  # noqa: E731
    uvc = tries(tp, "uvc_latency_ratio") + tries("greedy fit", "uvc_latency_ratio")
    assert (f"their closest tries timed {span(tries(tp, 'latency_ratio'))} and {span(tries('greedy fit', 'latency_ratio'))} "
            f"of the dense time against UVC's {span(uvc)}) and keep {l04(tp):.2f} at {l04(tp, 'speedup_b64'):.2f}x and "
            f"{l04('greedy fit'):.2f} at {l04('greedy fit', 'speedup_b64'):.2f}x") in text
    assert unmatched == [730] and (f"in one seed (730) its closest try timed {at[tp, 730]['latency_ratio']:.3f} of the "
                                   f"dense time against UVC's {at[tp, 730]['uvc_latency_ratio']:.3f}") in text
    abl = json.loads(open(os.path.join(root, "log", "mnist_sweep_next", "mnist_ablations_latency.json")).read())
    before = lambda m, k="top1_last": sum(r[k] for r in abl["rows"] if r["method"] == m) / 3  # noqa: E731
    greedy = "no search (greedy fit)"
    assert (f"kept {before(greedy):.2f} top-1 at the last epoch against UVC's {before('UVC'):.2f}, and timed "
            f"{before(greedy, 'speedup_b64'):.2f}x against {before('UVC', 'speedup_b64'):.2f}x") in text
    assert (f"the greedy fit kept {before(greedy, 'macs_ratio'):.3f} of the MACs against UVC's "
            f"{before('UVC', 'macs_ratio'):.3f}") in text
    m07 = lambda m, k="top1_last": cell(m, "macs", 0.7, k)  # noqa: E731
    assert any("greedy fit at 0.7" in d and "match macs" in d for d in dominations(nxt["rows"]))
    by_seed = {(r["method"], r["seed"]): r["top1_last"] for r in nxt["rows"] if (r["match"], r["budget"]) == ("macs", 0.7)}
    ahead = ", ".join(f"{abs(by_seed['greedy fit', s] - by_seed['UVC', s]):.1f}" for s in (730, 731, 732))
    assert (f"the greedy fit keeps {m07('greedy fit'):.2f} top-1 at the last epoch against UVC's {m07('UVC'):.2f} at "
            f"the same MACs (seed by seed {ahead.replace(', 0.4', ' and 0.4')} ahead), and its models run "
            f"{m07('greedy fit', 'speedup_b64'):.2f}x against UVC's {m07('UVC', 'speedup_b64'):.2f}x") in text
    assert (f"Uniform magnitude keeps {m07('uniform magnitude'):.2f} at {m07('uniform magnitude', 'speedup_b64'):.2f}x, "
            f"Torch-Pruning {m07('Torch-Pruning'):.2f} at {m07('Torch-Pruning', 'speedup_b64'):.2f}x") in text
    at04 = lambda m, k: sum(r[k] for r in nxt["rows"] if (r["method"], r["match"], r["budget"]) ==  # noqa: E731
                            (m, "macs", 0.4)) / 3
    assert not any("at 0.4" in d for d in dominations(nxt["rows"]))  # UVC on the front there
    assert (f"the greedy fit keeps {at04('greedy fit', 'top1_last'):.2f} top-1 at the last epoch against UVC's "
            f"{at04('UVC', 'top1_last'):.2f} at the same MACs, and UVC's models run {at04('UVC', 'speedup_b64'):.2f}x "
            f"against {at04('greedy fit', 'speedup_b64'):.2f}x") in text
    at05 = lambda m, k: sum(r[k] for r in nxt["rows"] if (r["method"], r["match"], r["budget"]) ==  # noqa: E731
                            (m, "macs", 0.5)) / 3
    assert not any("at 0.5" in d for d in dominations(nxt["rows"]))  # within the 0.1 margin
    assert 0 < at05("greedy fit", "top1_last") - at05("UVC", "top1_last") <= 0.1
    assert (f"the greedy fit keeps {at05('greedy fit', 'top1_last'):.2f} top-1 at the last epoch against UVC's "
            f"{at05('UVC', 'top1_last'):.2f} at the same MACs, and its models run {at05('greedy fit', 'speedup_b64'):.2f}x "
            f"against UVC's {at05('UVC', 'speedup_b64'):.2f}x") in text
    for peer in ("uniform magnitude", "Torch-Pruning"):
        assert at05(peer, "top1_last") < at05("UVC", "top1_last")
        assert f"{peer} ({at05(peer, 'top1_last'):.2f}, at {at05(peer, 'speedup_b64'):.2f}x)" in text
    abl = json.loads(open(os.path.join(root, "log", "mnist_sweep_next", "mnist_ablations.json")).read())
    pre = [r["top1_last"] for r in abl["rows"] if r["method"] == "UVC fine-tuned from the pretrained weights"]
    assert len(pre) == 3 and f"(`--finetune_from pretrained`, [design.md](design.md)): {sum(pre) / 3:.2f}," in text
    assert sum(pre) / 3 > max(at04("UVC", "top1_last"), at04("greedy fit", "top1_last"))  # "ahead of both"
    old = json.loads(open(os.path.join(root, "log", "mnist_sweep.json")).read())
    assert f"(best epoch {nxt['teacher_top1']:.2f} against {old['teacher_top1']:.2f})" in text
    readme = " ".join(open(os.path.join(root, "README.md")).read().split())
    assert (f"UVC leads the greedy fit at latency 0.7 ({l07('UVC'):.2f} to {l07('greedy fit'):.2f}, within seed noise) "
            f"and 0.5 ({l05('UVC'):.2f} to {l05('greedy fit'):.2f})") in readme
    speeds = lambda f: f"{f('UVC', 'speedup_b64'):.2f}x to {f('greedy fit', 'speedup_b64'):.2f}x"  # noqa: E731
    assert (f"trails at MACs 0.4 ({at04('UVC', 'top1_last'):.2f} to {at04('greedy fit', 'top1_last'):.2f}, "
            f"{speeds(at04)}) and 0.7 ({m07('UVC'):.2f} to {m07('greedy fit'):.2f}, {speeds(m07)}; before `--token_step`)") \
        in readme


def test_the_latency_ablations_and_the_token_sawtooth_are_what_results_md_says():
    """docs/results.md's reading of log/mnist_sweep_next/mnist_ablations_latency.json (top-1 at the last epoch,
    the table's estimates against the times, the patches dropped) and of log/token_alignment.json (a model timed
    at every patch count: 46 tokens slower than 50 in every run, 48 faster, 47 the slowest from 50 down to 40)."""
    import os
    root = os.path.join(os.path.dirname(__file__), "..")
    text = " ".join(open(os.path.join(root, "docs", "results.md")).read().split())
    abl = json.loads(open(os.path.join(root, "log", "mnist_sweep_next", "mnist_ablations_latency.json")).read())
    assert abl["budget"] == 0.7 and abl["seeds"] == [730, 731, 732] and abl["finetune_epochs"] == 40
    assert "--ablations --match latency" in abl["command"] and {r["match"] for r in abl["rows"]} == {"latency"}
    of = lambda m: [r for r in abl["rows"] if r["method"] == m]  # noqa: E731
    mean = lambda m, k="top1_last": sum(r[k] for r in of(m)) / len(of(m))  # noqa: E731
    words = {"UVC w/o patch gates": "without patch gates", "UVC fine-tuned from the pretrained weights":
             "fine-tuned from the pretrained weights", "UVC w/o block gates": "without block gates",
             "UVC w/o importance term": "without the importance term"}
    for method, said in words.items():
        assert len(of(method)) == 3 and f"{said} {mean(method):.2f}" in text, method
        assert mean(method) < mean("no search (greedy fit)") - 0.1  # "the gap open"
    assert f"against UVC's {mean('UVC'):.2f} and the greedy fit's {mean('no search (greedy fit)'):.2f}" in text
    searched = [r for r in abl["rows"] if r["method"] != "no search (greedy fit)"]
    priced = sorted(r["table_latency_ratio"] for r in searched)
    timed = sorted(1 / r["speedup_b64"] for r in searched)
    assert f"at {priced[0]:.3f} to {priced[-1]:.3f} of the dense time" in text
    assert f"they timed {timed[0]:.3f} to {timed[-1]:.3f}" in text
    assert [r["removed"]["patches"] for r in of("UVC w/o block gates")] == [2, 2, 2]
    assert sorted(r["removed"]["patches"] for r in of("UVC")) == [2, 4, 4]
    assert f"ran {mean('UVC w/o block gates', 'speedup_b64'):.2f}x, UVC's dropped 4 in two seeds and ran " \
           f"{mean('UVC', 'speedup_b64'):.2f}x" in text
    uvc731 = next(r for r in of("UVC") if r["seed"] == 731)
    tok = json.loads(open(os.path.join(root, "log", "token_alignment.json")).read())
    assert "budget0.7_seed731_latency/uvc/stage2/compact.pth" in tok["command"]
    at = {r["tokens"]: r for r in tok["rows"]}
    for run in range(3):
        t = {n: r["time_ratios"][run] for n, r in at.items()}
        assert t[46] > t[50] > t[48] and max((n for n in t if 40 <= n <= 50), key=t.get) == 47
    assert (f"(0.579 against 0.557 of the dense time), with 48 it runs "
            f"{round(100 * (1 - at[48]['time_ratio'] / at[50]['time_ratio']))}% faster ({at[48]['time_ratio']:.3f})") in text
    assert (at[46]["time_ratio"], at[50]["time_ratio"]) == (pytest.approx(0.579, abs=5e-4), pytest.approx(0.557, abs=5e-4))
    assert f"({at[46]['table_ratio']:.3f} at 46 tokens, {at[48]['table_ratio']:.3f} at 48, {at[50]['table_ratio']:.3f} at 50)" in text
    assert f"timed {1 / uvc731['speedup_b64']:.3f} of the dense time in the ablations' pass, {at[46]['time_ratio']:.3f} here" in text
    assert max(max(r["time_ratios"]) - min(r["time_ratios"]) for r in tok["rows"]) <= 0.03  # "agree to 0.03"
