"""Block gates and patch gates.

Block gate l has logits g[l] = (skip, keep). During search its value is a
Gumbel-softmax sample of temperature tau (soft), or with `--use_gumbel 0` the
noise-free SoftL0 gate clamp((1 + 2 eps) * sigmoid(g_keep - g_skip) - eps, 0, 1),
which reaches exact 0 and 1 as eps decays. Evaluation and the frozen model use
the argmax (deterministic). The block output is x + gate * (block(x) - x).

Patch gates: a patch position i is kept with probability pi_i = sigmoid(a_i),
which enters attention as the additive bias log(pi_i) on that key's logits
(docs/method.md section 6): pi = 1 changes nothing, pi -> 0 is exactly dropping the
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


HYSTERESIS = 1.0  # logits past the boundary a flipped gate or patch is set to: noise cannot flip it back
REFUSED = 4.0  # a refused patch drop's logit, a refused skip's keep - skip: where they start (patch_init, gate_init)


def settle_flips(logits: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """Gates (L, 2) or patch logits (P,) that crossed the boundary in this update are set
    HYSTERESIS past it: a flip back then takes a sustained push, not one noisy update."""
    with torch.no_grad():  # in the body, not a decorator: mutmut skips decorated functions
        if logits.dim() == 2:
            was, now = before[:, 1] >= before[:, 0], logits[:, 1] >= logits[:, 0]
            flipped = was != now
            mid = (logits[flipped, 0] + logits[flipped, 1]) / 2
            keep = logits[flipped, 1]  # keep - skip = 2 (keep - mid): at least HYSTERESIS past the boundary
            keep = torch.where(now[flipped], torch.maximum(keep, mid + HYSTERESIS / 2),
                               torch.minimum(keep, mid - HYSTERESIS / 2))
            logits[flipped, 1], logits[flipped, 0] = keep, 2 * mid - keep
        else:
            flipped = (before >= 0) != (logits >= 0)
            logits[flipped] = torch.where(logits[flipped] >= 0, HYSTERESIS, -HYSTERESIS)
        return flipped


def limit_gate_flips(arch, before: torch.Tensor, protected: torch.Tensor, floor_ok, trial_ok=None) -> None:
    """Gate safety after an update of the (L, 2) gate logits from `before`.

    At most one block changes its hard state (so one update moves the MACs ratio
    by at most one block's share): a re-opened block first, else the skip that
    went furthest past the boundary. A protected block (see PrimalDual.protected_blocks)
    is never skipped, and a skip is undone when `floor_ok()` says it took the hard
    ratio too far under the target. A skip the floor allows then faces `trial_ok()`
    (uvc.search.trial; None: no trial): refused, it goes back to REFUSED on the keep
    side, so it is proposed again only after a sustained push. Every other flip is
    undone (its logits restored).
    """
    with torch.no_grad():  # in the body, not a decorator: mutmut skips decorated functions
        logits = arch.gate_logits
        was = before[:, 1] >= before[:, 0]
        now = logits[:, 1] >= logits[:, 0]
        flipped = torch.nonzero(was != now).flatten().tolist()
        if not flipped:
            return
        reopened = [l for l in flipped if now[l]]
        skips = [l for l in flipped if not now[l] and not protected[l]]
        depth = (logits[:, 0] - logits[:, 1]).tolist()  # how far past the boundary each skip went
        chosen = reopened[0] if reopened else (max(skips, key=lambda l: depth[l]) if skips else None)
        for l in flipped:
            if l != chosen:
                logits[l] = before[l]
        if chosen is not None and not now[chosen]:
            if not floor_ok():
                logits[chosen] = before[chosen]
            elif trial_ok is not None and not trial_ok():
                mid = (before[chosen, 0] + before[chosen, 1]) / 2
                keep = torch.maximum(before[chosen, 1], mid + REFUSED / 2)
                logits[chosen, 1], logits[chosen, 0] = keep, 2 * mid - keep
        settle_flips(logits, before)


def limit_patch_drops(logits: torch.Tensor, before: torch.Tensor, drop_ok) -> None:
    """Patch safety after an update of the (P,) patch logits from `before`: at most one
    patch is dropped (the one that went furthest past the boundary), and only when
    `drop_ok()` allows it; re-opened patches stay. A refused drop is set back to REFUSED
    (where the logits start), so it is proposed again only after a sustained push and
    the patch is not trained half-masked meanwhile. Flips are then settled (settle_flips)."""
    with torch.no_grad():  # in the body, not a decorator: mutmut skips decorated functions
        dropped = torch.nonzero((before >= 0) & (logits < 0)).flatten()
        if len(dropped):
            chosen = dropped[logits[dropped].argmin()]
            others = dropped[dropped != chosen]
            logits[others] = before[others]
            if not drop_ok():
                logits[chosen] = torch.clamp(before[chosen], min=REFUSED)
        settle_flips(logits, before)
