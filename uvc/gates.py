"""Block gates and patch gates.

Block gate l has logits g[l] = (skip, keep). During search its value is a
Gumbel-softmax sample of temperature tau (soft), or with `--use_gumbel 0` the
noise-free SoftL0 gate clamp((1 + 2 eps) * sigmoid(g_keep - g_skip) - eps, 0, 1),
which reaches exact 0 and 1 as eps decays. Evaluation and the frozen model use
the argmax (deterministic). The block output is x + gate * (block(x) - x).

Patch gates: a patch position i is kept with probability pi_i = sigmoid(a_i),
which enters attention as the additive bias log(pi_i) on that key's logits
(UVC_SPEC section 6): pi = 1 changes nothing, pi -> 0 is exactly dropping the
token, so the searched model is the deployed one.
"""
import torch
import torch.nn.functional as F


def block_gate_sample(logits: torch.Tensor, tau: float, use_gumbel: bool, eps: float) -> torch.Tensor:
    """(L, 2) logits -> (L,) soft keep values for one training step."""
    if use_gumbel:
        return F.gumbel_softmax(logits, tau=tau, hard=False, dim=-1)[:, 1]
    return soft_l0_keep(logits, eps)


def block_keep_prob(logits: torch.Tensor, use_gumbel: bool, eps: float) -> torch.Tensor:
    """(L,) expected keep value used by the budget (no noise)."""
    if use_gumbel:
        return logits.softmax(-1)[:, 1]
    return soft_l0_keep(logits, eps)


def soft_l0_keep(logits: torch.Tensor, eps: float) -> torch.Tensor:
    """Stretched-and-clamped sigmoid gate (hard-concrete without noise)."""
    prob = torch.sigmoid(logits[:, 1] - logits[:, 0])
    return ((1 + 2 * eps) * prob - eps).clamp(0.0, 1.0)


def patch_attn_bias(patch_logits: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """(P,) logits -> (1, 1, 1, prefix + P) additive attention bias, log(pi) on patch keys."""
    bias = F.logsigmoid(patch_logits)
    bias = F.pad(bias, (num_prefix_tokens, 0))  # prefix keys are never gated
    return bias.view(1, 1, 1, -1)
