"""python -m uvc.evaluate: the numbers of every kind of file, exact under torchrun, one-line errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from data import build_eval_dataset
from models import create_model
from models.compact import load_compact, save_compact
from utils.config import parse_config
from engine.entry import run_entry
from uvc.evaluate import load_model, main, parse
from uvc.deploy.export import export_compact
from uvc.deploy.stagefile import STAGE2_FORMAT, stage1_record
from tests.test_report import random_arch

REPO = Path(__file__).resolve().parents[1]
TINY = "vit_digits_tiny_patch2_8"
DATA = ["--dataset", "synthetic", "--synthetic_size", "36", "--num_workers", "0", "--eval_batch_size", "4"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A dense file, a stage-1 and a stage-2 file of one architecture, and its compact model."""
    tmp = tmp_path_factory.mktemp("evaluate")
    torch.manual_seed(0)
    vit = create_model(TINY).eval()
    arch = random_arch(vit, TINY, 0, skipped=(1,))
    config = {"budget": 0.5, "dataset": "synthetic", "data_dir": "", "synthetic_size": 36}
    paths = {kind: str(tmp / f"{kind}.pth") for kind in ("dense", "stage1", "stage2", "compact")}
    torch.save({"model": vit.state_dict(), "model_type": TINY}, paths["dense"])
    torch.save(stage1_record(arch, vit.state_dict(), config, {}), paths["stage1"])
    torch.save({"format": STAGE2_FORMAT, "model_type": TINY, "arch": arch, "model": vit.state_dict(),
                "config": config, "teacher": {}}, paths["stage2"])
    save_compact(export_compact(vit, arch), paths["compact"])
    return paths


def run_json(capsys, *argv) -> dict:
    main([*argv, "--json", "--repeats", "1", "--throughput_batch", "4"])
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out
    return json.loads(out[0])


def reference_numbers(model, img_size=8, in_chans=1) -> dict:
    """top-1 and loss of `model` on the synthetic validation set, computed here."""
    val, _ = build_eval_dataset(parse_config("post", DATA), img_size, in_chans)
    x = torch.stack([val[i][0] for i in range(len(val))])
    y = torch.tensor([val[i][1] for i in range(len(val))])
    with torch.no_grad():
        logits = model.eval()(x)
    return {"top1": 100 * (logits.argmax(-1) == y).float().mean().item(), "loss": F.cross_entropy(logits, y).item()}


def test_every_kind_of_file(files, capsys, one_thread):
    own_data = ["--num_workers", "0", "--eval_batch_size", "4"]  # stage-1/2 files name their run's data set
    reports = {kind: run_json(capsys, files[kind], *(own_data if kind.startswith("stage") else DATA))
               for kind in files}
    expected = reference_numbers(load_compact(files["compact"]))
    for kind in ("stage1", "stage2", "compact"):
        r = reports[kind]
        assert r["dataset"] == "synthetic" and r["images"] == 9
        assert r["top1"] == pytest.approx(expected["top1"]) and r["loss"] == pytest.approx(expected["loss"], abs=1e-5)
        assert r["macs"] == reports["compact"]["macs"] < r["dense_macs"] and r["images_per_s"] > 0
        assert set(r) >= {"top5", "params", "dense_params", "macs_ratio"}
    dense = reports["dense"]
    assert dense["kind"] == "dense checkpoint" and dense["macs_ratio"] == 1.0
    with pytest.raises(ValueError, match="does not record the data it was trained on: pass --dataset and --data_dir"):
        main([files["dense"], "--json", "--num_workers", "0"])  # this file names no data set
    resampled = run_json(capsys, files["dense"], *DATA, "--input_size", "16")
    assert resampled["img_size"] == 16 and resampled["macs"] > 4 * dense["macs"]


def test_a_compact_file_from_stage_2_remembers_its_data(tmp_path, files):
    """post_train.py and python -m uvc.export write the run's data keys into compact.pth, so
    `python -m uvc.evaluate compact.pth` evaluates on the run's data without --dataset."""
    from models.compact import save_compact
    from uvc.deploy.stagefile import DATA_KEYS, data_record
    from utils.config import parse_config

    config = parse_config("post", DATA)
    save_compact(load_compact(files["compact"]), str(tmp_path / "with_data.pth"), data_record(config))
    stored = torch.load(tmp_path / "with_data.pth", weights_only=True)["config"]
    assert set(stored) == set(DATA_KEYS) and stored["dataset"] == "synthetic"
    assert {k: stored[k] for k in ("mean", "std", "crop_pct")} == {"mean": "", "std": "", "crop_pct": 0.875}
    assert load_model(str(tmp_path / "with_data.pth")).file_config == stored


def test_torchrun_two_ranks_give_the_single_process_numbers(files, capsys):
    single = run_json(capsys, files["compact"], *DATA)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29617", "-m", "uvc.evaluate", files["compact"], *DATA, "--json",
                          "--repeats", "1", "--throughput_batch", "2"],
                         cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, run.stdout  # rank 0 prints
    both = json.loads(lines[0])
    assert both["world_size"] == 2 and both["images"] == 9  # an odd count: no image padded or repeated
    assert both["top1"] == pytest.approx(single["top1"]) and both["loss"] == pytest.approx(single["loss"])


def test_bad_input_is_one_line(files, tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    reference = tmp_path / "deit_tiny_patch16_224_30.pth.tar"
    state = torch.load(files["dense"], weights_only=True)["model"]
    torch.save(dict(state, block_skip_gating=torch.zeros(4, 2)), reference)
    cases = [(["--dataset", "digits", str(reference)], "python -m uvc.import_reference"),([str(tmp_path / "missing.pth")], "does not exist"),
             ([str(text)], "not a readable PyTorch checkpoint"),
             ([files["compact"], "--input_size", "16"], "fixed by its architecture"),
             ([files["stage1"], "--model_type", "deit_tiny_patch16_224"], "drop --model_type"),
             ([files["compact"], "--budget", "0.5"], "unrecognized arguments: --budget"),
             ([files["compact"], "--dataset", "digits", "--num_workers", "0", "--repeats", "0", "--config",
               "configs/digits_demo.py", "--json"], None)]
    for argv, expected in cases:
        with pytest.raises(SystemExit) if expected else _no_exit() as info:
            run_entry(main, argv)
        captured = capsys.readouterr()
        err, out = captured.err.strip().splitlines(), captured.out.strip().splitlines()
        if expected:
            assert info.value.code == 2 and len(err) == 1 and expected in err[0], err
    # the one accepted case: the compact file's top-1 on the digits, as computed here
    digits = parse_config("post", ["--config", "configs/digits_demo.py", "--dataset", "digits", "--num_workers", "0"])
    val, _ = build_eval_dataset(digits, 8, 1)
    x, y = torch.stack([val[i][0] for i in range(len(val))]), torch.tensor([val[i][1] for i in range(len(val))])
    with torch.no_grad():
        top1 = 100 * (load_compact(files["compact"]).eval()(x).argmax(-1) == y).float().mean().item()
    assert json.loads(out[-1])["top1"] == pytest.approx(top1, abs=1e-3)


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_evaluate_takes_the_normalisation_flags_of_image_files(files):
    """--mean, --std and --crop_pct reach the evaluation, as for the entry scripts (image files of
    other statistics than ImageNet's)."""
    _, args = parse([files["compact"], "--mean", "0.13", "--std", "0.31", "--crop_pct", "1"])
    assert (args.mean, args.std, args.crop_pct) == ("0.13", "0.31", 1.0)
