"""`--search_algorithm reference` (uvc.search.reference): each update rule against numbers computed
here by hand on tiny tensors, the resolved defaults, and a digits search that runs, exports without
the fit and resumes exactly."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_same_files, clean_env, run_script, dense_checkpoint, load, noisy_tiny_vit

from uvc.search import UVCSearch
from uvc.search.masked_model import MaskedViT
from uvc.search.masks import Scores
from uvc.search.prox import proximal_step
from uvc.search.reference import bounded_sgd_step
from utils.config import parse_config
from utils.config_checks import reference_zlr

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


def reference_search(*flags):
    """The tiny model and a reference-mode search from the first step (the digits demo's config)."""
    config = parse_config("joint", ["--config", "configs/digits_demo.py", "--model_type", "vit_digits_tiny_patch2_8",
                                    "--search_algorithm", "reference", "--enable_warmup", "0", *flags])
    vit = noisy_tiny_vit(0)
    search = UVCSearch(vit, config, CPU, search_steps=40)
    search.set_epoch(0)
    return MaskedViT(vit), search


# ----------------------------------------------------------------------------- s and r

def test_bounded_sgd_step_masks_the_sign_clips_the_inf_norm_and_pins_the_overflow():
    x = torch.tensor([[0.0, 5.0], [2.0, 7.0]])
    upper = torch.tensor([4.0, 8.0])  # x_max = (3, 7) up to 1e-8
    grad = torch.tensor([[0.5, -3.0], [-0.2, -1.0]])
    out = bounded_sgd_step(x, grad, upper, lr=0.02)
    # [0,0] at 0: its positive gradient (removing fewer) is masked to 0; [1,1] at x_max: its
    # negative one too; the inf-norm 3 of what is left scales it by 1 / (3 + 1e-6)
    scale = 1.0 / (3.0 + 1e-6)
    expected = torch.tensor([[0.0, 5.0 + 0.02 * 3.0 * scale], [2.0 + 0.02 * 0.2 * scale, 7.0 - 1e-8]])
    assert torch.allclose(out, expected, atol=1e-6, rtol=0)
    # a gradient under the clip is not scaled; s - lr g under 0 is clamped at 0
    small = bounded_sgd_step(torch.tensor([0.5, 1.0]), torch.tensor([0.5, 30.0 / 64]), torch.tensor(16.0), lr=2.0)
    assert torch.allclose(small, torch.tensor([0.0, 1.0 - 2.0 * 30.0 / 64]))


def test_structure_step_is_y_least_sum_slope_plus_z_budget_gradient():
    model, search = reference_search()
    a, pd = search.arch, search.pd
    search.prepare(model)
    pd.scores, pd._scores_fresh = pd.scores_now(model.vit), True
    pd.update_masks(model.vit)
    with torch.no_grad():
        a.z.fill_(0.0)  # the LeastSum term alone: s starts at 0, so its slope is the smallest score
    zero = {k: torch.zeros_like(p) for k, p in zip(("s", "r", "gate", "patch"), a.architecture_parameters())}
    y, p, sc = a.y.clone(), a.p.clone(), pd.scores
    g_s = torch.stack([y[:, 0] * sc.heads.min(-1).values, y[:, 1] * sc.neurons.min(-1).values], 1)
    g_r = p * sc.dims.min(-1).values
    # s = 0 is the underflow bound: a positive gradient (fewer removed) is masked, nothing moves
    pd.structure_step(zero, 0.0)
    assert torch.equal(a.s.detach(), torch.zeros_like(g_s))
    # z > 0 with a budget gradient pointing down: s moves up by slr x the clipped gradient
    grads = dict(zero, s=-torch.ones_like(a.s_frac) * a.group_counts, r=-torch.ones_like(a.r_frac) * 16)
    pd.structure_step(grads, 2.0)
    g = g_s - 2.0
    expected = -0.02 * g / g.abs().max().clamp_min(1.0)
    assert torch.allclose(a.s.detach(), expected, rtol=1e-5, atol=1e-7)
    gr = g_r - 2.0
    assert torch.allclose(a.r.detach(), -0.02 * gr / gr.abs().max().clamp_min(1.0), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- duals

def test_dual_step_by_hand_and_its_projection():
    model, search = reference_search()
    a, pd = search.arch, search.pd
    L, H, d, M = 4, 2, 16, 128
    heads = torch.tensor([[2.0, 1.0]] * L)
    dims = torch.arange(d, dtype=torch.float32).repeat(L, H, 1) + 1.0  # every head: 1, 2, ..., 16
    neurons = torch.arange(M, dtype=torch.float32).flip(0).repeat(L, 1)  # 127, ..., 0
    with torch.no_grad():
        a.s_frac.copy_(torch.tensor([[1.0, 3.0]] * L) / a.group_counts)  # 1 head, 3 neurons removed
        a.r_frac.fill_(2.0 / d)  # 2 dims of every head
    pd.scores, pd._scores_fresh = Scores(heads=heads, dims=dims, neurons=neurons), True
    pd.update_masks(model.vit)
    ratio = float(search.budget.expected_ratio(a, pd.masks, pd.eps).detach())
    after = pd.dual_step()
    assert after == pytest.approx(ratio)
    assert torch.allclose(a.y[:, 0], torch.full((L,), 1e-3 + 1e-4 * 1.0))  # the lowest head: 1
    assert torch.allclose(a.y[:, 1], torch.full((L,), 1e-3 + 1e-4 * (0.0 + 1.0 + 2.0)))
    assert torch.allclose(a.p, torch.full((L, H), 1e-3 + 1e-4 * (1.0 + 2.0)))  # removed heads too
    # z's SGD step at the first --zlr_schedule_list entry (10), then z >= 0
    assert float(a.z) == pytest.approx(max(1e-3 + 10.0 * (ratio - 0.5), 0.0), abs=1e-6)
    with torch.no_grad():
        a.z.fill_(1e-3)
    search.budget.budget = 1.0  # R < B: z would go negative and is projected to 0
    pd.dual_step()
    assert float(a.z) == 0.0


def test_z_rate_is_the_first_entry_for_the_whole_search():
    # the reference's PresetLRScheduler sets a "zlr" key of the dual optimizer's groups, which torch's
    # SGD groups do not have: z keeps lr = the first entry
    group = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=10.0).param_groups[0]
    assert "zlr" not in group
    assert reference_zlr("10,20,30,40,50") == 10.0 and reference_zlr("1,5,9,13,17") == 1.0
    _, search = reference_search("--zlr_schedule_list", "3,20,30")
    for epoch in range(5):
        search.set_epoch(epoch)
        assert search.pd.cfg.zlr == 3.0


# ----------------------------------------------------------------------------- gates

def test_gate_sgd_averages_the_step_weighted_gradients_with_momentum():
    _, search = reference_search("--gating_interval", "3", "--glr", "0.5")
    a, pd = search.arch, search.pd
    g = [torch.full((4, 2), float(i)) * torch.tensor([1.0, -1.0]) for i in range(1, 7)]
    w0 = a.gate_logits.detach().clone()  # (-1, 1) per block
    assert torch.equal(w0, torch.tensor([[-1.0, 1.0]] * 4))
    for step, grad in zip((3, 4), g[:2]):  # weights 0, 1: no update before (step + 1) % 3 == 0
        pd.gate_step(grad, step)
    assert torch.equal(a.gate_logits.detach(), w0)
    pd.gate_step(g[2], 5)  # weight 2; update: the mean of the three weighted gradients
    d1 = (0 * g[0] + 1 * g[1] + 2 * g[2]) / 3 + 1e-4 * w0
    w1 = w0 - 0.5 * d1
    assert torch.allclose(a.gate_logits.detach(), w1)
    for step, grad in zip((6, 7, 8), g[3:]):
        pd.gate_step(grad, step)
    d2 = (0 * g[3] + 1 * g[4] + 2 * g[5]) / 3 + 1e-4 * w1
    assert torch.allclose(a.gate_logits.detach(), w1 - 0.5 * (0.9 * d1 + d2), atol=1e-6)
    # a new epoch empties the collected gradients, as the reference's list
    pd.gate_step(g[0], 10)
    assert pd.gate_count == 1
    search.set_epoch(1)
    assert pd.gate_count == 0 and pd.gate_sum is None


# ----------------------------------------------------------------------------- prox

def test_reference_prox_shrinks_only_the_scoring_columns_unscaled():
    _, search = reference_search()
    vit = noisy_tiny_vit(1)
    pd = search.pd
    sc = pd.scores_now(vit)
    before = {n: p.detach().clone() for n, p in vit.named_parameters()}
    L, H, d = 4, 2, 16
    k_heads, k_neurons = torch.ones(L, dtype=torch.long), torch.full((L,), 3)
    k_dims = torch.full((L, H), 2)
    y = torch.tensor([[0.5, 0.25]] * L)
    p = torch.full((L, H), 2.0)
    lr = 0.1
    proximal_step(vit, sc, k_heads, k_dims, k_neurons, y, p, lr)
    assert sorted(int(sc.heads[l].argmin()) for l in range(L)) == [0, 0, 1, 1]  # either head removed somewhere
    for l in range(L):
        proj0, proj1 = before[f"blocks.{l}.attn.proj.weight"], vit.blocks[l].attn.proj.weight.detach()
        lowest_head = int(sc.heads[l].argmin())
        for h in range(H):
            low = set(sc.dims[l, h].argsort()[:2].tolist())
            for j in range(d):
                div = (1 + 2 * lr * 2.0) if j in low else 1.0
                div *= (1 + 2 * lr * 0.5) if h == lowest_head else 1.0  # y[l, 0] for a removed head
                assert torch.allclose(proj1[:, h * d + j], proj0[:, h * d + j] / div, rtol=1e-6)
    low_n = sc.neurons[0].argsort()[:3]
    fc2_0, fc2_1 = before["blocks.0.mlp.fc2.weight"], vit.blocks[0].mlp.fc2.weight.detach()
    assert torch.allclose(fc2_1[:, low_n], fc2_0[:, low_n] / (1 + 2 * lr * 0.25))
    kept = torch.ones(128, dtype=torch.bool)
    kept[low_n] = False
    assert torch.equal(fc2_1[:, kept], fc2_0[:, kept])
    for name in ("blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight", "blocks.0.attn.qkv.bias"):
        assert torch.equal(before[name], dict(vit.named_parameters())[name].detach())


# ----------------------------------------------------------------------------- config

def print_config(*flags) -> dict:
    proc = subprocess.run([sys.executable, "joint_train.py", "--config", "configs/digits_demo.py", *flags,
                           "--print_config"], cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_print_config_shows_the_reference_defaults_and_the_mode():
    c = print_config("--search_algorithm", "reference", "--glr", "0.3")
    assert c["search_algorithm"] == "reference"
    expected = dict(slr=0.02, rlr=0.02, ylr=1e-4, plr=1e-4, dual_init=1e-3, gating_weight=5.0, gating_interval=100,
                    zlr_schedule_list="10,20,30,40,50", gumbel_tau=0.5, gumbel_tau_decay=1.0, patch_probe=0,
                    skip_probe=0)
    assert {k: c[k] for k in expected} == expected
    assert c["glr"] == 0.3  # a flag given wins
    default = print_config()
    assert default["search_algorithm"] == "uvc" and default["slr"] == 0.01 and default["zlr_schedule_list"] == ""


def test_flags_the_reference_mode_does_not_read_are_refused():
    with pytest.raises(ValueError, match="--zlr is not read by --search_algorithm reference"):
        parse_config("joint", ["--config", "configs/digits_demo.py", "--search_algorithm", "reference", "--zlr", "1"])
    with pytest.raises(ValueError, match="z learning rates"):
        parse_config("joint", ["--config", "configs/digits_demo.py", "--search_algorithm", "reference",
                               "--zlr_schedule_list", ""])


# ----------------------------------------------------------------------------- a digits search

TINY = "vit_digits_tiny_patch2_8"
STAGE1_FILE = f"{TINY}_uvc.pth"
ARGS = ["--config", "configs/digits_demo.py", "--model_type", TINY, "--deterministic", "1", "--max_steps_per_epoch",
        "4", "--epochs", "3", "--warmup_epochs", "1", "--gating_interval", "3", "--search_algorithm", "reference"]


def run(args, expect: int = 0, **env) -> str:
    return run_script("joint_train.py", args, expect, **env)


def test_digits_search_runs_exports_without_the_fit_and_resumes_exactly(tmp_path):
    teacher = dense_checkpoint(tmp_path)
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    out = run(ARGS + ["--model_path", teacher, "--output_dir", whole])
    assert "as searched (no fit)" in out
    fit = load(whole / STAGE1_FILE)["fit"]
    assert fit["search_algorithm"] == "reference" and fit["greedy_changed_frac"] == 0.0
    assert fit["macs_ratio"] == fit["searched_macs_ratio"]
    assert fit["budget_gap"] == pytest.approx(fit["macs_ratio"] - 0.5)
    assert 0.0 <= fit["greedy_would_change_frac"] <= 1.0
    # stopped after global step 6 (search step 2), between two gate updates, then resumed
    args = ARGS + ["--model_path", teacher, "--output_dir", stopped]
    run(args, expect=143, UVC_TEST_CRASH_AT_STEP=6, UVC_TEST_CRASH_RANK=0, UVC_TEST_CRASH_SIGNAL="TERM")
    pd = load(stopped / "checkpoint.pth")["search"]["primal_dual"]
    assert pd["t"] == 2 and pd["gate_count"] == 1
    run(args + ["--resume", "auto"])
    assert_same_files(whole, stopped, ["checkpoint.pth", STAGE1_FILE])
