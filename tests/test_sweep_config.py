"""scripts/sweep.py on a user's config and image folder (issue 28): every stage and method at the
run's input size and classes, --teacher, the one-line errors, the peers' refusal of a checkpoint of
another model, and --match latency's loop. The project's commands run in this process (the sweep's
`run` swapped for an in-process call) so that the sweep fits in a CI test."""
import importlib
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from baselines.finetune import load_pruned
from baselines.macs import fvcore_macs
from engine.entry import run_entry
from models import create_model
from models.compact import load_compact
from scripts import pipeline, sweep, sweep_args
from scripts.latency_match import closest, match_latency, next_target

DEIT = "deit_tiny_patch16_224"
CLASSES, SIZE = 3, 32


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """An ImageFolder tree: 3 classes x 4 training and 2 validation images of 32 px."""
    root = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        for c in range(CLASSES):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = (rng.random((SIZE, SIZE, 3)) * 80 + 60 * c).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def dense_file(folder, num_classes=CLASSES, img_size=SIZE):
    torch.manual_seed(0)
    model = create_model(DEIT, num_classes=num_classes, img_size=img_size)
    path = folder / f"dense_{num_classes}_{img_size}.pth"
    torch.save({"model": model.state_dict(), "model_type": DEIT}, path)
    return str(path)


@pytest.fixture
def in_process(monkeypatch):
    """Bench's run (scripts.command.run) calls the command's main() here; returns the list of commands run."""
    commands = []

    def run(cmd, log_path, reuse=False, threads=0):
        done = os.path.join(os.path.dirname(log_path), "done.cmd")
        if reuse and os.path.isfile(done) and open(done).read() == " ".join(cmd):
            return  # completed before, as scripts.command.run skips it
        commands.append(cmd)
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        module, argv = (cmd[1], cmd[2:]) if cmd[0] == "-m" else (cmd[0][:-len(".py")], cmd[1:])
        importlib.import_module(module).main(list(argv))
        with open(done, "w") as f:
            f.write(" ".join(cmd))

    monkeypatch.setattr(pipeline, "run", run)
    return commands


def user_flags(tree, tmp_path):
    return ["--config", "configs/deit_tiny.py", "--dataset", "imagenet", "--data_dir", str(tree), "--input_size",
            str(SIZE), "--train_batch_size", "4", "--eval_batch_size", "8", "--num_workers", "0", "--smoke",
            "--run_dir", str(tmp_path / "runs"), "--cache_dir", str(tmp_path / "cache")]


def test_every_method_on_an_image_folder_with_a_given_teacher(tree, tmp_path, in_process, one_thread):
    teacher = dense_file(tmp_path)
    sweep.main(user_flags(tree, tmp_path) + ["--teacher", teacher, "--budgets", "0.5", "--threads", "0",
                                             "--methods", ",".join(sweep_args.METHODS)])
    assert not [c for c in in_process if any(a.endswith(":dense") for a in c)]  # no teacher run
    for cmd in in_process:  # the user's data and size reach every stage and method
        assert "--input_size" in cmd and str(tree) in cmd, cmd
    result = json.loads((tmp_path / "runs" / "deit_tiny_imagenet_sweep.json").read_text())
    assert {"teacher_top1", "finetune_epochs", "seeds", "rows"} <= set(result) and result["seeds"] == [730]
    assert result["timing_threads"] == torch.get_num_threads()  # --threads 0: the process's own
    assert [r["method"] for r in result["rows"]] == list(sweep_args.METHODS)
    dense = create_model(DEIT, num_classes=CLASSES, img_size=SIZE)
    for r in result["rows"]:
        assert {"method", "budget", "match", "seed", "top1_last", "top1_best", "macs_ratio", "speedup_b64"} <= set(r)
        assert r["match"] == "macs" and r["seed"] == 730 and r["top1_best"] >= r["top1_last"]
        model = (load_pruned(r["model_file"])[0] if r["method"].startswith("Torch-Pruning")
                 else load_compact(r["model_file"]))
        assert tuple(model.patch_embed.img_size) == (SIZE, SIZE) and model.head.out_features == CLASSES
        assert abs(r["macs_ratio"] / (fvcore_macs(model) / fvcore_macs(dense)) - 1) <= 0.01, r
        assert abs(r["macs_ratio"] / result["rows"][0]["macs_ratio"] - 1) <= 0.01, r  # at UVC's MACs
    assert (tmp_path / "runs" / "deit_tiny_imagenet_sweep.md").exists()
    assert (tmp_path / "runs" / "deit_tiny_imagenet_sweep_top1_vs_macs.png").exists()
    # scripts/compare_runs.py on the user's config and data reads UVC's run as the sweep did
    from scripts import compare_runs
    cell = tmp_path / "runs" / "budget0.5_seed730"
    assert compare_runs.main(["--config", "configs/deit_tiny.py", "--dataset", "imagenet", "--data_dir", str(tree),
                              "--input_size", str(SIZE), "--teacher", teacher, "--group", f"UVC={cell / 'uvc'}",
                              "--out", str(tmp_path / "cmp")]) == 0
    row, swept = json.loads((tmp_path / "cmp.json").read_text())["rows"][0], result["rows"][0]
    assert swept["method"] == "UVC" and (row["top1_last"], row["top1_best"]) == (swept["top1_last"], swept["top1_best"])
    assert row["macs_ratio"] == pytest.approx(swept["macs_ratio"])
    # top-1 comes from stage 2's log (on this tiny data stage 1's may read the same numbers)
    assert compare_runs.run_of("UVC", str(cell / "uvc"))["logs"][-1] == str(cell / "uvc" / "stage2")


def test_prune_only_matches_the_peers_and_the_sweep_fine_tunes_those_matches(tree, tmp_path, in_process, one_thread,
                                                                             capsys):
    """--prune_only (timing on a quiet machine): UVC searches, the peer is pruned to the measured time of
    UVC's architecture and the match saved, nothing is fine-tuned; the sweep with --resume then fine-tunes
    UVC and that match without searching, timing or pruning again. The user's config prices latency at
    another batch than the sweep times at: the search is priced at the timing batch."""
    config = tmp_path / "tiny_b16.py"
    config.write_text("from configs.deit_tiny import get_config as tiny\n\n\ndef get_config(stage='joint'):\n"
                      "    c = tiny(stage)\n    c.latency_batch = 16\n    return c\n")
    flags = user_flags(tree, tmp_path) + ["--config", str(config), "--teacher", dense_file(tmp_path), "--budgets",
                                          "0.5", "--match", "latency", "--methods", "greedy fit", "--resume"]
    torch.set_num_threads(2)  # the caller's; the sweep times at --threads (1 by default) and gives it back
    sweep.main(flags + ["--prune_only"])
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    folder = tmp_path / "runs" / "budget0.5_seed730_latency"
    assert [c[0] for c in in_process].count("joint_train.py") == 1  # UVC's search ...
    assert "post_train.py" not in [c[0] for c in in_process]  # ... and no fine-tuning
    assert (folder / "greedy-fit-latency" / "match.json").is_file()
    assert "| greedy fit | 0.5 | 730 |" in capsys.readouterr().out  # the table of matches
    assert not (tmp_path / "runs" / "tiny_b16_imagenet_sweep.json").exists()  # no results: nothing fine-tuned
    search = next(c for c in in_process if c[0] == "joint_train.py")
    table = search[search.index("--latency_cache") + 1]  # measured by the sweep, handed in as its file
    assert os.path.dirname(table) == str(tmp_path / "cache" / "latency") and table.endswith(".json")
    assert json.loads(open(table).read())["threads"] == 1  # the sweep's --threads, not the caller's 2
    assert json.loads(open(table).read())["batch_size"] == pipeline.TIMING_BATCH  # the timing batch ...
    assert search[search.index("--latency_batch") + 1] == str(pipeline.TIMING_BATCH)  # ... not the config's 16

    in_process.clear()
    sweep.main(flags)
    assert "reusing its latency match" in capsys.readouterr().out
    assert [c[0] for c in in_process] == ["post_train.py", "post_train.py"]  # UVC's and the peer's fine-tuning
    assert "uvc" in in_process[0][in_process[0].index("--output_dir") + 1]
    saved = json.loads((folder / "greedy-fit-latency" / "match.json").read_text())["found"]
    row = json.loads((tmp_path / "runs" / "tiny_b16_imagenet_sweep.json").read_text())["rows"][1]
    assert row["method"] == "greedy fit" and row["macs_target"] == saved["target"]
    assert in_process[1][in_process[1].index("--checkpoint_dir") + 1] == saved["candidate"]["file"]


def test_the_teacher_run_of_a_config_trains_the_users_model(tree, tmp_path, in_process, one_thread):
    args = sweep.parse_args(user_flags(tree, tmp_path) + ["--pretrained", "0"])
    bench = sweep.bench_of(args)
    path = bench.teacher()
    (cmd,) = in_process
    assert cmd[:3] == ["post_train.py", "--config", "configs/deit_tiny.py:dense"]
    assert cmd[cmd.index("--distillation-type") + 1] == "none" and cmd[cmd.index("--pretrained") + 1] == "0"
    from models import load_exact
    load_exact(create_model(DEIT, num_classes=CLASSES, img_size=SIZE), path)  # the user's classes and size
    assert bench.teacher() == path and len(in_process) == 1  # cached


def one_line_error(capsys, main, argv):
    with pytest.raises(SystemExit) as stop:
        run_entry(main, argv)
    err = capsys.readouterr().err.strip()
    assert stop.value.code not in (0, None) and len(err.splitlines()) == 1 and err.startswith("error:"), err
    return err


def test_bad_input_stops_the_sweep_in_one_line(tree, tmp_path, capsys):
    flags = user_flags(tree, tmp_path)
    cases = [
        (["--config", "configs/nope.py"], "--config configs/nope.py: no such file"),
        (["--data_dir", str(tmp_path / "missing")], "no such folder"),
        (["--budgets", "0.5,1.5"], "outside (0, 1]"),
        (["--methods", "NAS"], "unknown 'NAS'"),
        (["--dataset", "imagenet"], "without --config"),
    ]
    for change, expected in cases:
        argv = flags + change if change[0] != "--dataset" else change
        assert expected in one_line_error(capsys, sweep.main, argv)
    teacher = dense_file(tmp_path, num_classes=10)
    assert "set --num_classes 10" in one_line_error(capsys, sweep.main, flags + ["--teacher", teacher])
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_a_peer_refuses_a_checkpoint_of_another_model(tmp_path, capsys):
    """A 3-class model trained at 32 px: a peer that builds another model stops, naming the flag."""
    dense = dense_file(tmp_path)
    out = tmp_path / "peer" / f"{DEIT}_uvc.pth"
    base = ["--model_type", DEIT, "--model_path", dense, "--target_ratio", "0.5", "--output", str(out)]
    assert "set --num_classes 3" in one_line_error(capsys, magnitude_main(), base)
    assert "set --input_size 32" in one_line_error(capsys, magnitude_main(), base + ["--num_classes", "3"])
    assert not out.exists()
    magnitude_main()(base + ["--num_classes", "3", "--input_size", "32"])
    record = torch.load(out, weights_only=True)
    assert record["arch"]["img_size"] == SIZE and record["model"]["head.weight"].shape[0] == CLASSES


def magnitude_main():
    from baselines.magnitude import main
    return main


def test_latency_matching_converges_with_an_injected_timer():
    """The peer's time ratio as a non-linear function of its MACs target; UVC's measured at 0.42."""
    def measure(target):
        return 0.08 + 0.7 * target ** 1.4, 0.42

    found = match_latency(lambda t: t, measure, target=0.5)
    assert found["matched"] and abs(found["latency_ratio"] / 0.42 - 1) <= 0.03
    assert len(found["tries"]) <= 6 and found["candidate"] == found["target"]
    never = match_latency(lambda t: t, lambda t: (0.9, 0.42), target=0.5, max_tries=4)  # a peer that cannot move
    assert not never["matched"] and len(never["tries"]) <= 4
    tries = [{"target": 0.5, "latency_ratio": 0.6, "uvc_latency_ratio": 0.4}]
    assert next_target(tries) == pytest.approx(0.5 * 0.4 / 0.6)  # proportional first
    tries.append({"target": 0.4, "latency_ratio": 0.5, "uvc_latency_ratio": 0.4})
    assert next_target(tries) == pytest.approx(0.3)  # then the secant: 1.5 -> 1.25 per 0.1 of target, 1 at 0.3


class _TimedBench:
    """What peer_at_latency asks of a Bench: one-shot prunings (recorded), side-by-side timings (given)."""

    def __init__(self, speeds, reuse):
        self.speeds, self.reuse, self.pruned = iter(speeds), reuse, []

    def one_shot_prune(self, method, teacher, out, target):
        self.pruned.append(target)
        return out + ".pth"

    def throughput(self, models, batch):
        return next(self.speeds)

    def one_shot(self, name, method, teacher, path, target, seed, stage1_file):
        return {"name": name, "target": target, "stage1_file": stage1_file}


def test_a_resumed_latency_match_reuses_the_match_it_decided(tmp_path, monkeypatch):
    """Timings differ between runs: --resume must fine-tune the peer matched before (same UVC search and
    teacher), not re-time and prune another; another UVC search or no --resume matches again."""
    from scripts.latency_match import peer_at_latency
    monkeypatch.setattr(pipeline, "compact_of_stage1", lambda f: torch.nn.Identity())
    (tmp_path / "teacher.pth").write_bytes(b"teacher")
    (tmp_path / "uvc.pth").write_bytes(b"uvc")
    uvc = {"stage1_file": str(tmp_path / "uvc.pth"), "before": torch.nn.Identity()}

    def match(speeds, reuse):
        bench = _TimedBench(speeds, reuse)
        run = peer_at_latency(bench, "greedy fit", str(tmp_path / "teacher.pth"), str(tmp_path / "peer"), uvc,
                              torch.nn.Identity(), 730, (0.5, 0.5))
        return bench, run

    first, run = match([{"dense": 100, "uvc": 200, "peer": 150}, {"dense": 100, "uvc": 200, "peer": 199}], False)
    assert len(first.pruned) == 2 and run["latency_match"]["matched"] and run["target"] == first.pruned[1]
    again, rerun = match([{"dense": 100, "uvc": 100, "peer": 300}], True)  # a timer that would now disagree
    assert again.pruned == [] and rerun == run
    assert match([{"dense": 100, "uvc": 200, "peer": 200}], False)[0].pruned == [0.5]  # no --resume: re-timed
    (tmp_path / "uvc.pth").write_bytes(b"another search")
    assert match([{"dense": 100, "uvc": 200, "peer": 200}], True)[0].pruned == [0.5]  # another UVC search


def test_a_match_whose_own_timing_of_uvc_spread_past_the_noise_bound_warns(tmp_path, monkeypatch, capsys):
    """UVC's model is timed again with every try: when its time ratio spreads by more than NOISY over the
    tries (a busy machine), the match says loudly that it is noise and how to redo it; within it, nothing."""
    from scripts.latency_match import NOISY, peer_at_latency, timing_spread
    monkeypatch.setattr(pipeline, "compact_of_stage1", lambda f: torch.nn.Identity())
    (tmp_path / "teacher.pth").write_bytes(b"teacher")
    (tmp_path / "uvc.pth").write_bytes(b"uvc")
    uvc = {"stage1_file": str(tmp_path / "uvc.pth"), "before": torch.nn.Identity()}
    assert NOISY == 0.25
    for name, uvc_speeds, warned in (("calm", (200, 200 / (1 + NOISY) * 1.001), False),
                                     ("busy", (200, 200 / (1 + NOISY) * 0.999), True)):
        speeds = [{"dense": 100, "uvc": uvc_speeds[0], "peer": 150},
                  {"dense": 100, "uvc": uvc_speeds[1], "peer": uvc_speeds[1]}]  # the second try matches
        run = peer_at_latency(_TimedBench(speeds, False), "greedy fit", str(tmp_path / "teacher.pth"),
                              str(tmp_path / name), uvc, torch.nn.Identity(), 730, (0.5, 0.5))
        assert (timing_spread(run["latency_match"]["tries"]) > NOISY) is warned
        out = capsys.readouterr().out
        assert ("WARNING: greedy fit: UVC's own time ratio ranged over" in out) is warned, out
        assert (f"delete {tmp_path / name}-latency/match.json and match on a quiet machine" in out) is warned


def test_a_peer_try_timed_faster_than_its_macs_share_past_the_noise_bound_warns(tmp_path, monkeypatch, capsys):
    """A width-pruned peer keeps the dense model's fixed costs: a try timed below its MACs target by more
    than NOISY is a timing glitch, and the match says so loudly with the fix; just within it, nothing."""
    from scripts.latency_match import NOISY, peer_at_latency, timing_glitches
    monkeypatch.setattr(pipeline, "compact_of_stage1", lambda f: torch.nn.Identity())
    (tmp_path / "teacher.pth").write_bytes(b"teacher")
    (tmp_path / "uvc.pth").write_bytes(b"uvc")
    uvc = {"stage1_file": str(tmp_path / "uvc.pth"), "before": torch.nn.Identity()}
    for name, ratio, warned in (("calm", 0.5 * (1 - NOISY) * 1.001, False),
                                ("glitch", 0.5 * (1 - NOISY) * 0.999, True)):
        speeds = [{"dense": 100, "uvc": 100 / ratio, "peer": 100 / ratio}]  # matches UVC at its first try
        run = peer_at_latency(_TimedBench(speeds, False), "greedy fit", str(tmp_path / "teacher.pth"),
                              str(tmp_path / name), uvc, torch.nn.Identity(), 730, (0.5, 0.5))
        assert bool(timing_glitches(run["latency_match"]["tries"])) is warned
        out = capsys.readouterr().out
        assert ("WARNING: greedy fit: its try at MACs target 0.500 timed" in out) is warned, out
        assert (f"delete {tmp_path / name}-latency/match.json and match on a quiet machine" in out) is warned


def test_latency_matching_steps_back_from_a_target_out_of_reach():
    """A peer whose smallest model has 0.3 of the MACs: a try below it is skipped upwards."""
    def prune(target):
        return target if target >= 0.3 else None

    found = match_latency(prune, lambda t: (0.1 + t, 0.45), target=0.2)  # 0.2: out of reach, then up
    assert found["tries"][0] == {"target": 0.2, "latency_ratio": None, "uvc_latency_ratio": None}
    assert found["matched"] and found["tries"][1]["target"] == pytest.approx(0.3)
    assert abs(found["latency_ratio"] / 0.45 - 1) <= 0.03 and found["target"] >= 0.3
    with pytest.raises(ValueError, match="reached none"):
        match_latency(lambda t: None, lambda t: (1.0, 1.0), target=0.5, max_tries=3)


def test_a_peer_slower_than_uvc_at_its_smallest_model_is_kept_at_its_smallest_model():
    """The MNIST case at budget 0.4: the greedy fit cannot go below 0.222 of the MACs, where it still takes
    0.61 of the dense time against UVC's ~0.34, and UVC's ratio moves 10% between timing runs. The match
    homes in on the smallest model and keeps the fastest try, not the one whose noisy quotient was lowest."""
    uvc = iter([0.357, 0.316, 0.348, 0.33, 0.36, 0.32])

    def prune(target):
        return target if target >= 0.222 else None

    found = match_latency(prune, lambda t: (0.42 + 0.88 * t, next(uvc)), target=0.318)
    reached = [t["target"] for t in found["tries"] if t["latency_ratio"] is not None]
    assert not found["matched"] and found["target"] == min(reached) and found["candidate"] == found["target"]
    assert found["target"] <= 0.222 * 1.05, found["tries"]
    assert all(t["target"] >= 0.222 or t["latency_ratio"] is None for t in found["tries"])


def test_the_next_target_ignores_a_secant_that_timing_noise_turned_around_and_never_goes_below_the_reach():
    tries = [{"target": 0.318, "latency_ratio": 0.699, "uvc_latency_ratio": 0.357},   # quotient 1.96
             {"target": 0.240, "latency_ratio": 0.659, "uvc_latency_ratio": 0.316}]   # 2.08: larger at less
    assert next_target(tries) == pytest.approx(0.240 / (0.659 / 0.316))  # proportional from the last
    tries.append({"target": 0.115, "latency_ratio": None, "uvc_latency_ratio": None})  # below its smallest model
    assert next_target(tries) == pytest.approx((0.115 + 0.240) / 2)  # halfway, not below 0.115 again
    slower = [{"target": 0.3, "latency_ratio": 0.7, "uvc_latency_ratio": 0.35},
              {"target": 0.25, "latency_ratio": 0.66, "uvc_latency_ratio": 0.30}]
    assert closest(slower)["target"] == 0.25  # all slower than UVC: the fastest, not the lower quotient
    uniform = [{"target": 0.2265, "latency_ratio": 0.381, "uvc_latency_ratio": 0.302},  # MNIST 0.3, seed 732:
               {"target": 0.2116, "latency_ratio": 0.454, "uvc_latency_ratio": 0.305}]  # fewer MACs, more time
    assert closest(uniform)["target"] == 0.2265
    faster = [{"target": 0.3, "latency_ratio": 0.2, "uvc_latency_ratio": 0.35},
              {"target": 0.4, "latency_ratio": 0.25, "uvc_latency_ratio": 0.35}]
    assert closest(faster)["target"] == 0.4
    around = [{"target": 0.3, "latency_ratio": 0.30, "uvc_latency_ratio": 0.35},
              {"target": 0.4, "latency_ratio": 0.37, "uvc_latency_ratio": 0.35}]
    assert closest(around)["target"] == 0.4  # |0.37 / 0.35 - 1| < |0.30 / 0.35 - 1|


def test_a_saved_match_of_the_former_rule_is_reused_only_if_it_matched(tmp_path):
    """Former rules kept another try when none matched (rule 1: the lowest noisy quotient, a slower peer
    than it could reach): such a match is decided again; one within the window holds under any rule."""
    from scripts.latency_match import MATCH_FILE, MATCH_RULE, _saved_match
    key = {"uvc_search": "a", "teacher": "b", "flags": [], "rule": MATCH_RULE}
    old_key = {k: v for k, v in key.items() if k != "rule"}

    def saved(matched, k):
        (tmp_path / MATCH_FILE).write_text(json.dumps({"key": k, "found": {"matched": matched, "target": 0.3}}))
        return _saved_match(str(tmp_path), key)
    assert saved(True, old_key) == {"matched": True, "target": 0.3}
    assert saved(False, old_key) is None
    assert saved(False, key) == {"matched": False, "target": 0.3}
    assert saved(True, dict(old_key, uvc_search="another")) is None


def test_the_model_before_fine_tuning_is_the_one_stage_2_starts_from(tmp_path):
    """A row fine-tuned with --finetune_from pretrained reports, before fine-tuning, the stage-1 architecture on
    the dense weights, exactly as exported from them; without, the stage-1 file's own weights."""
    from uvc.deploy.export import export_compact
    from uvc.deploy.fit import fit_to_budget
    from uvc.deploy.freeze import base_spec
    from uvc.deploy.stagefile import stage1_record
    from uvc.search.masks import group_scores, stacked_weights
    tiny = "vit_digits_tiny_patch2_8"
    torch.manual_seed(0)
    dense, searched = create_model(tiny, num_classes=10).eval(), create_model(tiny, num_classes=10).eval()
    spec, _ = fit_to_budget(base_spec(dense, tiny), group_scores(*stacked_weights(dense), 2), 0.5)
    torch.save({"model": dense.state_dict()}, tmp_path / "dense.pth")
    torch.save(stage1_record(spec, searched.state_dict(), {}, {}), tmp_path / "s1.pth")
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        for weights, source in (("", searched), (str(tmp_path / "dense.pth"), dense)):
            got = pipeline.compact_of_stage1(str(tmp_path / "s1.pth"), weights)(x)
            assert torch.allclose(got, export_compact(source, spec).eval()(x), atol=1e-6), weights
