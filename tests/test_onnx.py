"""ONNX: python -m uvc.export --onnx writes the compact model with a dynamic batch axis; under
onnxruntime it gives the PyTorch compact model's logits within 1e-4; benchmark_speed.py --onnx times it."""
import importlib.util
from pathlib import Path

import pytest
import torch

from models.compact import load_compact
from uvc.export import main
from uvc.deploy.onnx_export import run_onnx, session
from uvc.deploy.stagefile import stage1_record
from test_model_kinds import build, random_arch

REPO = Path(__file__).resolve().parents[1]


def stage1_file(tmp_path, kind: str) -> str:
    vit, name = build(kind)
    path = tmp_path / f"{kind}_uvc.pth"
    torch.save(stage1_record(random_arch(vit, name), vit.state_dict(), {"budget": 0.5}, {}), path)
    return str(path)


def test_onnx_export_matches_the_compact_model_at_any_batch(tmp_path, capsys):
    for kind in ("registers_avg_pool", "deit_distilled"):  # registers, LayerScale, two heads; patches dropped
        checkpoint = stage1_file(tmp_path, kind)
        onnx_path, compact_path = tmp_path / f"{kind}.onnx", tmp_path / f"{kind}.pth"
        assert main(["--checkpoint", checkpoint, "--output", str(compact_path), "--onnx", str(onnx_path)]) == 0
        out = capsys.readouterr().out.strip().splitlines()
        assert len(out) == 2 and "onnxruntime" in out[1]
        compact, sess = load_compact(str(compact_path)).eval(), session(str(onnx_path))
        for batch in (1, 5):
            x = torch.randn(batch, 3, 32, 32)
            with torch.no_grad():
                expected = compact(x)
            got = run_onnx(sess, x)
            assert got.shape == expected.shape
            assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    only = tmp_path / "only.onnx"  # --onnx alone writes no .pth
    assert main(["--checkpoint", checkpoint, "--onnx", str(only)]) == 0 and only.exists()
    assert "MACs" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # neither --output nor --onnx
        main(["--checkpoint", checkpoint])
    assert "give --output compact.pth, --onnx compact.onnx, or both" in capsys.readouterr().err


def test_benchmark_speed_times_the_onnx_model(tmp_path):
    spec = importlib.util.spec_from_file_location("_bench_speed", REPO / "scripts" / "benchmark_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.parse_args(["--checkpoint", stage1_file(tmp_path, "vit"), "--onnx", "--batch_sizes", "2",
                             "--repeats", "1", "--warmup", "1", "--device", "cpu"])
    result = bench.run(args)
    assert result["models"] == ["dense", "masked", "compact", "onnx"]
    assert result["images_per_s"]["onnx"]["b2"] > 0 and result["speedup_onnx_b2"] > 0
    assert result["max_logit_diff_onnx_vs_compact"] < 1e-4
    assert result["macs"]["onnx"] == result["macs"]["compact"]
    assert "onnx" in bench.format_table(result)
