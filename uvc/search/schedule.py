"""How fast the search moves, in fractions of the search: run-length invariance.

The number of search steps S is known when stage 1 starts (epochs x steps per
epoch, less warm-up). Everything that sets the pace of the architecture is a
function of the search progress u = step / S in [0, 1], never of the raw step:

    target  T(u) = B + (1 - B) (1 - min(u / ramp, 1))^3

the cubic schedule of gradual magnitude pruning (Zhu & Gupta 2017): from the
dense model to the budget B over the first `ramp` of the search, fast at first
and gently at the end, then held at B. The dual z tracks T(u) (uvc.search.controller),
so a 300-step run and a 75,000-step ImageNet run reach the budget at the same
fraction of their search.

Rates. Each rate flag (--slr, --rlr, --ylr, --plr, --zlr, --glr, --patchlr,
--gating_weight, --patch_weight, --patch_l1_weight) means a multiple of a rule:
the rate used is rule(S) x (flag / its default), so a default runs the rule as is
and `--slr 0.02` runs s twice as fast. The defaults of --glr, --patchlr and the
three weights are the values the seed's command passes; the seed sets none of
--slr, --rlr, --ylr, --plr, and the reference's flags of those names (defaults
0.02, 0.02, 1e-4, 1e-4; it has no --zlr) are per-step rates, not multiples of a
rule. The rules:

    s, r   SGD on the gradient in units of the layer's MAC share, lr SPEED_S / S: at
           z = 1 and no importance, s travels SPEED_S ranges over the search
    y, p   dual ascent of DUAL_Y / S per unit of LeastSum
    z      PI controller: proportional gain Z_KP, integral gain Z_KI per search
    gates  Adam, GATE_TRAVEL / U logits per update (U gate updates in the search:
           every --gating_interval steps, or more often in a search too short
           for MIN_GATE_UPDATES updates)
    patch  Adam, PATCH_TRAVEL / U logits per update
    budget weight of the gates and patches: 1 (unit-free, see uvc.search.primal_dual)
"""
from dataclasses import dataclass

from uvc.search.rules import Rules

# The unit of each rate flag (its default): a flag at this value runs its rule as is. Those of glr, patchlr
# and the three weights are the values the seed's command passes; the 0.01 of slr, rlr, ylr, plr and zlr
# is ours (the seed's command sets none of them; `--search_algorithm reference` has its own defaults).
RATE_UNITS = {"slr": 0.01, "rlr": 0.01, "ylr": 0.01, "plr": 0.01, "zlr": 0.01, "glr": 0.1,
              "patchlr": 0.01, "gating_weight": 5e-4, "patch_weight": 5.0, "patch_l1_weight": 0.01}

# The budget loop (R moves at ~SPEED_S z per search, z = Z_KP e + Z_KI int e du) is a
# second-order system with damping Z_KP sqrt(SPEED_S) / (2 sqrt(Z_KI)) = 1.2 and natural
# frequency sqrt(SPEED_S Z_KI) = 24 per search; its proportional time constant is
# 1 / (SPEED_S Z_KP) = 1.7% of the search (stable per step for searches over ~60 steps).
SPEED_S = 2.0
DUAL_Y = 20.0  # y, p: growth over the search per unit of LeastSum (importance units)
Z_KP = 30.0  # z per unit of ratio error: 0.05 over target -> z = 1.5
Z_KI = 300.0  # integral of the ratio error over the search fraction -> z
GATE_TRAVEL = 40.0  # gate logits over the search at full push (a flip from keep 0.98 needs 4)
PATCH_TRAVEL = 40.0
MIN_GATE_UPDATES = 100
MIN_STEERING_STEPS = 60  # under this the per-step proportional loop is not stable (above): too short to steer
LANDING = (0.05, 0.02)  # under, over the budget: where a search of at least MIN_STEERING_STEPS ends (benchmark_search)
PATCH_L1 = 0.1  # the L1 pull on patch keep probabilities, in units of the mean loss gradient


def target_ratio(progress: float, budget: float, ramp: float) -> float:
    """T(u): the MACs ratio the search should have reached at search progress u in [0, 1]."""
    u = min(max(progress / ramp, 0.0), 1.0) if ramp > 0 else 1.0
    return budget + (1.0 - budget) * (1.0 - u) ** 3


@dataclass(frozen=True)
class SearchRates:
    """The per-step rates of one search of `steps` steps with `gate_updates` gate updates."""
    steps: int
    gate_interval: int  # search steps between two gate / patch updates
    gate_updates: int
    s_step: float  # normalised step of s_frac per search step
    r_step: float
    y_step: float  # dual ascent rate of y per step (times LeastSum)
    p_step: float
    z_kp: float
    z_ki: float  # per step: integral += z_ki * error
    gate_lr: float  # Adam lr of the gate logits per update
    patch_lr: float
    gate_weight: float  # unit-free exchange rate of the budget term in the gate gradient
    patch_weight: float
    patch_l1: float

    @classmethod
    def for_search(cls, config, steps: int) -> "SearchRates":
        """The rules above for a search of `steps` steps, scaled by the config's rate flags."""
        steps = max(int(steps), 1)
        interval = max(min(int(config.gating_interval), steps), 1)
        # (a smoke-test search shorter than that keeps the flag as is; so does --reference_rules no_gate_safety)
        if steps >= MIN_GATE_UPDATES and Rules.of_config(config).gate_safety:
            interval = max(min(interval, steps // MIN_GATE_UPDATES), 1)
        updates = max(steps // interval, 1)
        k = {name: float(config[name]) / seed for name, seed in RATE_UNITS.items()}
        return cls(steps=steps, gate_interval=interval, gate_updates=updates,
                   s_step=SPEED_S / steps * k["slr"], r_step=SPEED_S / steps * k["rlr"],
                   y_step=DUAL_Y / steps * k["ylr"], p_step=DUAL_Y / steps * k["plr"],
                   z_kp=Z_KP, z_ki=Z_KI / steps * k["zlr"],
                   gate_lr=GATE_TRAVEL / updates * k["glr"], patch_lr=PATCH_TRAVEL / updates * k["patchlr"],
                   gate_weight=k["gating_weight"], patch_weight=k["patch_weight"],
                   patch_l1=PATCH_L1 * k["patch_l1_weight"])
