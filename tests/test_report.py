"""python -m uvc.report: MACs against fvcore, JSON keys for every kind of file, plot, bad input."""
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import create_model
from models.compact import save_compact
from uvc.deploy.export import compact_macs, export_compact
from uvc.deploy.freeze import base_spec
from uvc.report import build_report, main, read_subject
from uvc.deploy.stagefile import STAGE2_FORMAT, stage1_record

REPO = Path(__file__).resolve().parents[1]
TINY = "vit_digits_tiny_patch2_8"


# ----------------------------------------------------------------------------- helpers

def random_arch(vit, model_type: str, seed: int, skipped=(), patches_kept: float = 0.6) -> dict:
    """Random kept heads / dims / neurons per block; heads of a block keep different
    dim counts (so the compact model pads), `skipped` blocks skipped."""
    rng = random.Random(seed)
    arch = base_spec(vit, model_type)
    H, d, M = arch["num_heads"], arch["head_dim"], arch["mlp_hidden"]
    for index, block in enumerate(arch["blocks"]):
        heads = sorted(rng.sample(range(H), rng.randint(max(1, H - 1), H)))
        widths = [d - rng.randint(0, d // 2) for _ in heads]
        widths[0] = max(1, widths[-1] - 3) if len(widths) > 1 and widths[0] == widths[-1] else widths[0]
        block.update(skipped=index in skipped, heads=heads,
                     value_dims=[sorted(rng.sample(range(d), w)) for w in widths],
                     neurons=sorted(rng.sample(range(M), rng.randint(M // 2, M))))
    P = len(arch["patches_kept"])
    arch["patches_kept"] = sorted(rng.sample(range(P), max(1, round(P * patches_kept))))
    return arch


def make_files(tmp_path: Path, model_type: str = TINY, seed: int = 0, skipped=(1,)) -> dict:
    """A stage-1 file, a stage-2 file and a compact model of one random architecture."""
    torch.manual_seed(seed)
    vit = create_model(model_type).eval()
    arch = random_arch(vit, model_type, seed, skipped=skipped)
    paths = {"stage1": tmp_path / f"{model_type}_uvc.pth", "stage2": tmp_path / f"{model_type}_uvc_post_best.pth",
             "compact": tmp_path / "compact.pth"}
    torch.save(stage1_record(arch, vit.state_dict(), {"budget": 0.5}, {"macs_ratio": 0.5}), paths["stage1"])
    torch.save({"format": STAGE2_FORMAT, "model_type": model_type, "arch": arch, "model": vit.state_dict(),
                "config": {"budget": 0.5}, "teacher": {}}, paths["stage2"])
    save_compact(export_compact(vit, arch), str(paths["compact"]))
    return {"arch": arch, "vit": vit, **{k: str(v) for k, v in paths.items()}}


def run_json(capsys, *argv) -> dict:
    assert main([*argv, "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out
    return json.loads(out[0])


# ----------------------------------------------------------------------------- dense models

@pytest.mark.parametrize("model_type, gmacs", [("deit_tiny_patch16_224", 1.26), ("deit_small_patch16_224", 4.6),
                                               ("deit_base_patch16_224", 17.6)])
def test_dense_deit_macs_agree_with_fvcore(model_type, gmacs):
    report = build_report(read_subject(model_type), with_fvcore=True)
    assert report["macs"] == report["dense_macs"] and report["macs_ratio"] == 1.0
    assert report["macs"] / 1e9 == pytest.approx(gmacs, rel=0.02)
    assert abs(report["fvcore_rel_diff"]) < 0.01, report["fvcore_rel_diff"]
    assert report["fvcore_macs_modelled_ops"] == pytest.approx(report["macs"], rel=1e-9)


def test_dense_checkpoint_model_type_inferred_by_shapes(tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "dense.pth"
    torch.save({"model": create_model(TINY).state_dict()}, path)  # no model_type key
    report = run_json(capsys, str(path))
    assert report["model_type"] == TINY and report["kind"] == "dense checkpoint"
    assert report["macs_ratio"] == 1.0 and report["params"] == report["dense_params"]
    assert "blocks" not in report
    # --img_size resamples a dense model: the MACs follow the token count
    bigger = run_json(capsys, str(path), "--img_size", "16")
    assert bigger["macs"] > 4 * report["macs"]


# ----------------------------------------------------------------------------- compressed files

def test_json_keys_for_stage1_stage2_and_compact(tmp_path, capsys):
    files = make_files(tmp_path)
    arch = files["arch"]
    reports = {kind: run_json(capsys, files[kind]) for kind in ("stage1", "stage2", "compact")}
    for kind, report in reports.items():
        for key in ("macs", "dense_macs", "macs_ratio", "params", "blocks", "patches_kept"):
            assert key in report, (kind, key)
        assert report["model_type"] == TINY
        assert report["macs_ratio"] == pytest.approx(report["macs"] / report["dense_macs"])
        assert report["patches_kept"] == len(arch["patches_kept"])
        assert len(report["blocks"]) == arch["depth"]
        for row, block in zip(report["blocks"], arch["blocks"]):
            assert set(row) >= {"skipped", "heads", "value_dims", "mlp_hidden"}
            assert row["skipped"] == block["skipped"]
            if not block["skipped"]:
                assert row["heads"] == len(block["heads"]) and row["mlp_hidden"] == len(block["neurons"])
    # the same architecture: the same deployed MACs and parameter count whichever file describes it
    assert reports["stage1"]["macs"] == reports["stage2"]["macs"] == reports["compact"]["macs"]
    assert reports["stage1"]["params"] == reports["compact"]["params"]
    compact = torch.load(files["compact"], weights_only=True)
    assert reports["compact"]["macs"] == compact_macs(compact["spec"])
    assert reports["compact"]["params"] == sum(t.numel() for t in compact["state_dict"].values()
                                               if t.dtype.is_floating_point)
    # stage files know the kept dims before padding; the compact model runs padded ones
    padded = [r for r in reports["stage1"]["blocks"] if r["value_dims"] < r["value_dims_deployed"]]
    assert padded, "the test architecture should pad some block"
    assert reports["stage1"]["macs_unpadded"] < reports["stage1"]["macs"]
    assert reports["stage1"]["budget"] == 0.5


def test_text_report_has_the_architecture_table(tmp_path, capsys):
    files = make_files(tmp_path)
    assert main([files["stage1"]]) == 0
    text = capsys.readouterr().out
    assert "MACs" in text and "dense MACs" in text and "params" in text and "skip" in text
    assert len([line for line in text.splitlines() if line.strip()[:1].isdigit()]) == files["arch"]["depth"]


def test_fvcore_on_compact_with_padding_skipped_blocks_and_dropped_patches(tmp_path, capsys):
    """The deployed MACs formula against fvcore on the compact model itself (its own attention
    unfused): exact on the matmuls, within 1% in total at DeiT size (LayerNorm is the rest)."""
    torch.manual_seed(1)
    vit = create_model("deit_tiny_patch16_224").eval()
    arch = random_arch(vit, "deit_tiny_patch16_224", 1, skipped=(3, 7), patches_kept=0.75)
    path = tmp_path / "compact.pth"
    save_compact(export_compact(vit, arch), str(path))
    report = run_json(capsys, str(path), "--fvcore")
    assert report["blocks_kept"] == 10 and report["patches_kept"] == 147
    assert any(r["value_dims_deployed"] > 0 for r in report["blocks"])
    assert report["fvcore_macs_modelled_ops"] == pytest.approx(report["macs"], rel=1e-9)
    assert abs(report["fvcore_rel_diff"]) < 0.01, report["fvcore_rel_diff"]


def test_fvcore_on_tiny_stage1_file_counts_the_formula_exactly(tmp_path, capsys):
    files = make_files(tmp_path, skipped=(0, 2))
    report = run_json(capsys, files["stage1"], "--fvcore")
    assert report["fvcore_macs_modelled_ops"] == pytest.approx(report["macs"], rel=1e-9)
    assert report["fvcore_macs"] > report["macs"]  # + LayerNorms


def test_plot_writes_a_png(tmp_path, capsys):
    files = make_files(tmp_path)
    out = tmp_path / "arch.png"
    assert main([files["compact"], "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out) in capsys.readouterr().out
    dense_plot = tmp_path / "dense.png"
    assert main([TINY, "--plot", str(dense_plot)]) == 0
    assert dense_plot.stat().st_size > 0


# ----------------------------------------------------------------------------- bad input

def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    other = tmp_path / "other.pth"
    torch.save({"format": "something-else-v3"}, other)
    mismatched = tmp_path / "mismatched.pth"
    torch.save({"model": {"pos_embed": torch.zeros(1, 17, 7), "patch_embed.proj.weight": torch.zeros(7, 1, 2, 2),
                          "head.weight": torch.zeros(10, 7)}}, mismatched)
    cases = [(str(tmp_path / "missing.pth"), "does not exist"), ("deit_huge_patch14_224", "neither a file nor"),
             (str(text), "not a readable PyTorch checkpoint"), (str(other), "something-else-v3"),
             (str(mismatched), "do not fit")]
    for arg, expected in cases:
        assert main([arg]) == 2, arg
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, (arg, err)
    assert main([TINY, "--img_size", "0"]) == 2
    assert "--img_size" in capsys.readouterr().err


def test_cli_bad_input_no_traceback(tmp_path):
    run = subprocess.run([sys.executable, "-m", "uvc.report", str(tmp_path / "missing.pth")], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert run.stdout == ""
