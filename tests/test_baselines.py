"""The peer baselines land on the requested MACs, run, and fine-tune (baselines/)."""
import copy
import json
import warnings

import pytest
import torch

from baselines.finetune import load_pruned
from baselines.magnitude import evaluate_spec, greedy_fit_spec, main as magnitude_main, uniform_magnitude_spec
from baselines.macs import formula_macs, fvcore_macs
from baselines.torch_pruning import main as tp_main
from baselines.tp_prune import LOCAL_MAGNITUDE, TAYLOR_GLOBAL, TPSetting, accumulate_taylor_gradients, prune_to_macs
from helpers import noisy_tiny_vit
from models import create_model, set_fused_attn
from uvc.deploy.stagefile import read_stage_file
from uvc.deploy.fit import fit_to_budget
from uvc.deploy.freeze import base_spec, spec_ratio
from uvc.search.masks import group_scores, stacked_weights
from uvc.search.masked_model import MaskedViT
from uvc.deploy.frozen import FrozenArchitecture

MODEL = "vit_digits_patch2_8"
TARGET = 0.5


def perturbed_model(seed: int = 0):
    """Random weights; timm's zero biases and identity norms get noise so every weight matters."""
    torch.manual_seed(seed)
    model = create_model(MODEL)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


@pytest.fixture(scope="module")
def dense():
    return perturbed_model()


@pytest.fixture(scope="module")
def dense_file(dense, tmp_path_factory):
    path = tmp_path_factory.mktemp("dense") / "dense.pth"
    torch.save({"model": dense.state_dict(), "model_type": MODEL}, path)
    return str(path)


@pytest.fixture(scope="module")
def tp_pruned(dense):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prune_to_macs(dense, TARGET, setting=LOCAL_MAGNITUDE)


def test_torch_pruning_lands_within_one_percent(dense, tp_pruned):
    pruned, info = tp_pruned
    ratio = fvcore_macs(pruned) / fvcore_macs(dense)  # recounted independently of the search
    assert abs(ratio / TARGET - 1) <= 0.01
    assert info["macs_ratio"] == pytest.approx(ratio)
    # fvcore = formula + the LayerNorms, which pruning leaves alone
    assert info["macs_fvcore"] - info["macs_formula"] == pytest.approx(
        info["dense_macs_fvcore"] - info["dense_macs_formula"])
    assert formula_macs(pruned) == info["macs_formula"]
    assert pruned.embed_dim == 64 and pruned.blocks[0].norm1.weight.shape == (64,)
    heads = {b["heads"] for b in info["blocks"]}
    assert len(heads) == 1 and heads.pop() < 4  # whole heads went, the same number per block
    assert all(b["head_dim"] < 16 and b["neurons"] < 256 for b in info["blocks"])
    assert info["params"] < info["dense_params"]
    assert dense.blocks[0].attn.num_heads == 4  # the input model is untouched


def test_taylor_global_torch_pruning_lands_on_the_target(one_thread):
    """The library's recommended ViT setting: Taylor scores from a few batches' gradients, global
    isomorphic ranking; head dims and neurons only, and blocks may end up with different widths."""
    vit = noisy_tiny_vit().eval()
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen))
               for _ in range(3)]
    with pytest.raises(ValueError, match="accumulate_taylor_gradients"):
        prune_to_macs(vit, 0.5)  # no gradients yet
    assert accumulate_taylor_gradients(vit, batches, torch.device("cpu")) == 3
    grads = [p.grad.clone() for p in vit.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned, info = prune_to_macs(vit, 0.5, setting=TAYLOR_GLOBAL)
    assert abs(fvcore_macs(pruned) / fvcore_macs(vit) / 0.5 - 1) <= 0.01
    assert info["setting"] == "Torch-Pruning" and info["global_pruning"] and info["isomorphic"]
    assert info["heads_removed"] == 0 and all(b["heads"] == 2 for b in info["blocks"])
    assert len({(b["head_dim"], b["neurons"]) for b in info["blocks"]}) > 1  # ranked across blocks
    assert all(p.grad is None for p in pruned.parameters())
    assert all(torch.equal(p.grad, g) for p, g in zip(vit.parameters(), grads))  # the input is untouched
    assert pruned(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_torch_pruning_settings_are_named_and_checked():
    assert TAYLOR_GLOBAL.name == "Torch-Pruning" and LOCAL_MAGNITUDE.name == "Torch-Pruning (local magnitude)"
    assert TPSetting(isomorphic=False).name == "Torch-Pruning (global taylor)"
    with pytest.raises(ValueError, match="needs --global_pruning 1"):
        TPSetting(global_pruning=False)
    with pytest.raises(ValueError, match="needs --importance taylor"):
        tp_main(["--target_ratio", "0.5", "--importance", "magnitude", "--taylor_batches", "3"])
    with pytest.raises(ValueError, match="needs --global_pruning 0"):
        tp_main(["--target_ratio", "0.5", "--heads_removed", "1"])


def test_torch_pruning_help_explains_its_own_flags_and_stage_2s(capsys):
    with pytest.raises(SystemExit) as done:
        tp_main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--target_ratio", "--tolerance", "--heads_removed", "--importance", "--global_pruning",
                 "--isomorphic", "--taylor_batches", "--prune_only", "--epochs", "--model_path"):
        assert flag in text, flag
    assert text.index("--prune_only") < text.index("Stage-2 flags") < text.index("--epochs")


def test_torch_pruned_model_runs_fused_and_unfused(tp_pruned):
    pruned, _ = tp_pruned
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        set_fused_attn(pruned, True)
        fused = pruned(x)
        set_fused_attn(pruned, False)
        explicit = pruned(x)
    assert fused.shape == (3, 10)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-4)  # scale follows the pruned head_dim


def test_uniform_magnitude_lands_within_one_percent(dense):
    spec, info = uniform_magnitude_spec(dense, MODEL, TARGET)
    assert abs(spec_ratio(spec) / TARGET - 1) <= 0.01
    assert len({len(b["heads"]) for b in spec["blocks"]}) == 1
    assert len({len(b["neurons"]) for b in spec["blocks"]}) == 1
    assert not any(b["skipped"] for b in spec["blocks"]) and len(spec["patches_kept"]) == 16
    assert all(len(v) == 16 for b in spec["blocks"] for v in b["value_dims"])
    assert info["heads_kept"] == len(spec["blocks"][0]["heads"]) and info["method"] == "uniform-magnitude"
    # the lowest-score heads went: every kept head outscores every removed one, per block
    proj_norms = [b.attn.proj.weight.pow(2).sum(0).view(4, 16).sum(1) for b in dense.blocks]
    for norms, block in zip(proj_norms, spec["blocks"]):
        removed = [h for h in range(4) if h not in block["heads"]]
        assert min(norms[block["heads"]]) >= max(norms[removed])


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_greedy_fit_is_the_freezes_fit_of_the_dense_architecture(dense, target):
    spec, info = greedy_fit_spec(dense, MODEL, target, tolerance=0.003)
    assert target * 0.997 <= spec_ratio(spec) <= target and info["method"] == "greedy-fit"
    expected, _ = fit_to_budget(base_spec(dense, MODEL), group_scores(*stacked_weights(dense), 4), target,
                                tolerance=0.003 * target)
    assert spec == expected
    assert not any(b["skipped"] for b in spec["blocks"]) and len(spec["patches_kept"]) == 16
    assert all(len(b["heads"]) == 4 for b in spec["blocks"])  # no search: no head, block or patch goes
    assert len({len(b["neurons"]) for b in spec["blocks"]}) > 1  # a global fit: blocks differ


def test_magnitude_cli_writes_a_stage1_file(dense, dense_file, tmp_path):
    out = tmp_path / f"{MODEL}_uvc.pth"
    magnitude_main(["--model_type", MODEL, "--model_path", dense_file, "--target_ratio", "0.4",
                    "--output", str(out)])
    record = read_stage_file(str(out))  # what post_train.py reads
    assert record["fit"]["method"] == "uniform-magnitude" and record["teacher"]["path"] == dense_file
    assert abs(spec_ratio(record["arch"]) / 0.4 - 1) <= 0.01
    vit = create_model(MODEL)
    vit.load_state_dict(record["model"])
    masked = MaskedViT(vit)
    FrozenArchitecture(masked, record["arch"]).prepare(masked, training=False)  # stage 2 accepts it
    kept = [len(b["neurons"]) for b in record["arch"]["blocks"]]
    assert masked.fc2_mask.sum(1).long().tolist() == kept  # its masks keep what the arch keeps
    with pytest.raises(ValueError, match="target_ratio"):
        magnitude_main(["--model_type", MODEL, "--model_path", dense_file, "--target_ratio", "1.5",
                        "--output", str(out)])
    magnitude_main(["--method", "greedy-fit", "--model_type", MODEL, "--model_path", dense_file,
                    "--target_ratio", "0.4", "--output", str(out)])
    record = read_stage_file(str(out))
    assert record["fit"]["method"] == "greedy-fit" and record["config"]["method"] == "greedy-fit"
    assert 0.4 * 0.99 <= spec_ratio(record["arch"]) <= 0.4


def test_evaluate_spec_and_tp_finetune_smoke(dense, dense_file, tmp_path):
    from data.digits import Digits, digits_transform

    loader = torch.utils.data.DataLoader(Digits(False, digits_transform(False, 8, 1)), batch_size=512)
    spec, _ = uniform_magnitude_spec(dense, MODEL, TARGET)
    top1 = evaluate_spec(dense, spec, loader, torch.device("cpu"))["top1"]
    model = MaskedViT(copy.deepcopy(dense))
    frozen = FrozenArchitecture(model, spec)
    frozen.prepare(model, training=False)
    with torch.no_grad():
        correct = sum(int((model.eval()(x).argmax(-1) == y).sum()) for x, y in loader)
    assert top1 == pytest.approx(100 * correct / len(loader.dataset), abs=1e-6)  # the pruned model, not the dense

    out = tmp_path / "tp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tp_main(["--config", "configs/digits_demo.py:post", "--model_path", dense_file, "--target_ratio", "0.5",
                 "--output_dir", str(out), "--epochs", "1", "--max_steps_per_epoch", "3", "--log_interval", "0"])
    result = json.loads((out / "result.json").read_text())
    assert abs(result["macs_ratio"] / 0.5 - 1) <= 0.01
    for key in ("top1_dense", "top1_before_finetune", "top1_after_finetune", "params", "macs_fvcore"):
        assert key in result
    model, info = load_pruned(result["best_file"])
    assert model(torch.randn(1, 1, 8, 8)).shape == (1, 10) and "top1" in info
