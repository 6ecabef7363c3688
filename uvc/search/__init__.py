"""Stage 1's search: the architecture variables (structure), the group scores and masks (masks), the
block and patch gates (gates), the proximal step (prox), the budget controller (controller), the rates
(schedule), the trial of a patch drop (trial), the update order (primal_dual) and its gate and
patch step (gate_update), the masked model the search runs on (masked_model) and `UVCSearch`,
which assembles them from a config (driver)."""


def __getattr__(name):
    # `from uvc.search import UVCSearch` without importing the driver (and the cost and deploy
    # modules it assembles) whenever one of this package's modules is imported
    if name == "UVCSearch":
        from uvc.search.driver import UVCSearch

        return UVCSearch
    raise AttributeError(f"module 'uvc.search' has no attribute {name!r}")
