"""The trial of a patch drop or a block skip: it stands only if it costs the loss no more
than taking the same MACs from the cheapest groups.

The patch update sees gradients, and a patch's loss gradient through log(pi)
vanishes as pi -> 1 while the gradient terms are normalised to one scale
(uvc.search.primal_dual): it ranks the patches but does not say what dropping one
costs. So each drop the gradients propose is first tried on a fixed probe of
training images:

    flip     the argmax architecture with the patch dropped
    instead  the argmax architecture without the drop, with the lowest-score groups
             per MAC removed (uvc.deploy.fit) until it costs no more than the flip

Both are evaluated deterministically (eval mode, hard masks) on the same probe, image
by image: with d_i = CE_i(flip) - CE_i(instead) over the n probe images, the drop
stands when

    mean(d) + margin * std(d) / sqrt(n) <= 0

(--trial_margin, in paired standard errors; 0: its cross-entropy is not higher). Near the
dense model both moves cost almost nothing and mean(d) is probe noise; a margin keeps the
move fine-tuning recovers best (groups) unless the probe shows the drop is cheaper.
Block skips are tried the same way (--skip_probe): the gate update prices a skip by
normalised gradients, not against what its MACs would cost taken from the groups, and
untried skips cost top-1 that fine-tuning did not bring back (docs/design.md). Without pruning (gates or patches
only) there is nothing to compare with and every move stands.
"""
from typing import Dict

import torch
import torch.nn.functional as F

from uvc.cost.cost import MacsCost, dense_cost, spec_cost
from uvc.deploy.fit import fit_to_budget
from uvc.deploy.freeze import apply_spec, dims_of_spec
from uvc.search.masks import Scores
from utils.dist import all_reduce_mean, get_world_size


class FlipTrial:
    """A fixed probe (images, targets) and the comparison of a flip against its alternative."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, batch_size: int, with_attn: bool = True,
                 cost=None, kind: str = "flip", margin: float = 0.0):
        self.images, self.targets, self.kind = images, targets, kind  # kind names the counters: flip | skip
        self.batch_size, self.with_attn = max(int(batch_size), 1), with_attn
        self.cost = cost  # the budget's cost model (uvc.cost.cost); None: MACs
        self.margin = float(margin)  # paired standard errors the flip's loss must stay under the alternative's
        self.trials, self.rejected = 0, 0
        self.last: Dict[str, float] = {}

    def losses(self, model, spec: dict) -> torch.Tensor:
        """Cross-entropy of each probe image (this rank's) under the MaskedViT fixed to `spec`."""
        with torch.no_grad():  # in the body, not a decorator: mutmut skips decorated functions
            device = model.vit.pos_embed.device
            training = model.training
            model.eval()
            apply_spec(model, spec)
            total = []
            for start in range(0, len(self.images), self.batch_size):
                x = self.images[start:start + self.batch_size].to(device)
                y = self.targets[start:start + self.batch_size].to(device)
                out = model(x)
                out = out[0] if isinstance(out, tuple) else out
                total.append(F.cross_entropy(out.float(), y, reduction="none"))
            model.train(training)
            return torch.cat(total)

    def loss(self, model, spec: dict) -> float:
        """Mean cross-entropy of the MaskedViT fixed to `spec` on the probe, averaged over ranks."""
        return float(all_reduce_mean(self.losses(model, spec).mean()))

    def accept(self, model, flip: dict, base: dict, scores: Scores) -> bool:
        """Does the `flip` spec cost no more loss than `base` cut by greedy group removal to its MACs?"""
        cost = self.cost if self.cost is not None else MacsCost(dims_of_spec(flip), self.with_attn)
        ratio = spec_cost(cost, flip) / dense_cost(cost)
        flip, _ = fit_to_budget(flip, scores, 1.0, tolerance=1.0, cost=cost)  # same value-dim padding
        instead, _ = fit_to_budget(base, scores, ratio, tolerance=1.0, cost=cost)
        a, b = self.losses(model, flip), self.losses(model, instead)
        d = (a - b).double()  # every rank holds a probe of the same size: means over ranks are the probe's
        means = all_reduce_mean(torch.stack([a.double().mean(), b.double().mean(), d.mean(), (d * d).mean()]))
        loss_flip, loss_instead, mean, square = (float(m) for m in means)
        n = len(d) * get_world_size()
        var = max(square - mean * mean, 0.0) * n / max(n - 1, 1)  # of d, unbiased
        ok = mean + self.margin * (var / n) ** 0.5 <= 0.0
        self.trials += 1
        self.rejected += int(not ok)
        self.last = {"trial_loss_flip": loss_flip, "trial_loss_instead": loss_instead,
                     "trial_loss_se": (var / n) ** 0.5}
        return ok

    def state_dict(self) -> dict:
        return {f"{self.kind}_trials": self.trials, f"{self.kind}s_rejected": self.rejected}

    def load_state_dict(self, state: dict) -> None:
        self.trials = int(state.get(f"{self.kind}_trials", 0))
        self.rejected = int(state.get(f"{self.kind}s_rejected", 0))
