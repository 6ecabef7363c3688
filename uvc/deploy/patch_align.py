"""Token alignment at the freeze: a frozen model keeps the patches up to the fastest token count at or
above the one the search ended with.

Kernels tile the token count, so on a device N + k tokens can run faster than N (a sawtooth:
log/token_alignment.md). A uvc-latency-v4 table prices a count N at T*(N), the fastest count at
or above it (uvc.cost.latency), so a patch drop inside a plateau of T* neither saves nor costs.
The freeze then prices the model at each count from the searched N up to N0 as timed (no T*),
and keeps the most patches among the counts within TOLERANCE of the fastest: the dropped patches
the search was least sure of (highest patch logits) are put back. The model runs no slower, with
more patches. Under MACs with --token_step S > 1 a count is priced at the next multiple of S
(uvc.cost.cost.MacsCost), and the same rule puts back patches up to it; at --token_step 1, or with an
older table, every token costs and nothing is put back.
"""
from typing import Tuple

import torch

from uvc.cost.cost import spec_cost

TOLERANCE = 1e-3  # relative: counts priced within this of the fastest are at the same time (more patches win)


def align_patches(cost, spec: dict, patch_logits: torch.Tensor) -> Tuple[dict, int]:
    """(spec with the dropped patches of highest `patch_logits` put back up to the token count the table
    times fastest from the searched count up, the number put back). `spec` is not changed."""
    if not getattr(cost, "envelope", False):
        return spec, 0
    timed = cost.timed()
    kept = set(int(i) for i in spec["patches_kept"])
    order = torch.argsort(patch_logits.detach().cpu(), descending=True, stable=True).tolist()
    dropped = [i for i in order if i not in kept]
    prices = [spec_cost(timed, dict(spec, patches_kept=sorted(kept | set(dropped[:k]))))
              for k in range(len(dropped) + 1)]
    restored = max(k for k, p in enumerate(prices) if p <= min(prices) * (1 + TOLERANCE))
    return dict(spec, patches_kept=sorted(kept | set(dropped[:restored]))), restored
