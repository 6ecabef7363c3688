"""What stage 1 reports: the search's opening lines, each epoch's record with the architecture's
tensorboard histograms, and the frozen architecture (as searched or fitted, the latency check, the
warnings when the search ends far from its budget or far under the teacher)."""
from uvc.search import UVCSearch
from uvc.search.masked_model import MaskedViT
from uvc.search.schedule import LANDING, MIN_STEERING_STEPS
from utils.logger import RunLogger


def log_architecture(logger: RunLogger, search: UVCSearch, model: MaskedViT, step: int) -> dict:
    """Tensorboard histograms/images of the current architecture; returns its counts."""
    a, dims = search.arch, search.dims
    spec = search.spec(model, "")
    kept = {"heads": [len(b["heads"]) for b in spec["blocks"]],
            "value_dims": [sum(len(v) for v in b["value_dims"]) for b in spec["blocks"]],
            "neurons": [len(b["neurons"]) for b in spec["blocks"]],
            "skipped": [int(b["skipped"]) for b in spec["blocks"]],
            "patches_kept": len(spec["patches_kept"])}
    for name in ("heads", "value_dims", "neurons"):
        logger.scalars(f"arch_kept_{name}", {str(l): v for l, v in enumerate(kept[name])}, step)
    keep_prob = a.gate_logits.detach().softmax(-1)[:, 1]
    logger.scalars("arch_block_keep_prob", {str(l): float(p) for l, p in enumerate(keep_prob)}, step)
    logger.histogram("arch/patch_keep_prob", a.patch_keep_prob(), step)
    side = int(dims.num_patches ** 0.5)
    logger.image("arch/patch_keep_map", a.patch_keep_prob().detach().view(side, side), step)
    logger.histogram("arch/y", a.y, step)
    logger.histogram("arch/p", a.p, step)
    return kept


def warn_if_too_short(logger: RunLogger, search_steps: int, steps_per_epoch: int) -> None:
    """A search under MIN_STEERING_STEPS cannot steer to its budget: it would end far from it."""
    if search_steps >= MIN_STEERING_STEPS:
        return
    epochs = -(-MIN_STEERING_STEPS // max(steps_per_epoch, 1))
    logger.warning(f"WARNING: the search has {search_steps} steps, fewer than the {MIN_STEERING_STEPS} it needs to "
                   f"steer itself to the budget: it will likely end far from it; give it at least {epochs} search "
                   f"epoch(s) of {steps_per_epoch} steps (--epochs beyond --warmup_epochs), or let the freeze fit "
                   f"the rest (--greedy_fit 1)")


def warn_if_off_budget(logger: RunLogger, fit: dict, budget: float) -> None:
    """A search exported as it ended, outside [budget - LANDING[0], budget + LANDING[1]] in its metric (the
    window the search benchmark holds it to, scripts/benchmark_search.py): loud, with what to do."""
    gap = fit["budget_gap"]
    if -LANDING[0] <= gap <= LANDING[1]:
        return
    logger.warning(f"WARNING: the search ended at {fit['budget_metric']} ratio {budget + gap:.4f}, outside "
                   f"[budget - {LANDING[0]}, budget + {LANDING[1]}] of budget {budget}, and is exported as it ended: "
                   f"a longer search (--epochs) lands closer, or --greedy_fit 1 fits it into the budget")


def warn_if_collapsed(logger: RunLogger, top1: float, teacher_top1) -> None:
    """A result far under the teacher must not look like success: stderr and log.jsonl."""
    if teacher_top1 is None or top1 >= 0.5 * teacher_top1:
        return
    text = (f"WARNING: stage 1 ended at top-1 {top1:.2f}, under half the teacher's {teacher_top1:.2f}: the "
            f"search has damaged the model (budget too low, or too short a search?); stage 2 may not recover it")
    logger.warning(text)


def log_latency_check(logger: RunLogger, fit: dict, budget: float) -> None:
    """The frozen model timed whole against the dense one (uvc.cost.latency_check); loud if still off."""
    checks = fit.get("latency_checks")
    if not checks:
        return
    logger.info("latency check, compact time / dense time, timed whole: " + "; ".join(
        f"fit to {c['target']:.3f} -> estimated {c['estimated']:.3f}, measured {c['measured']:.3f}"
        + (" (kept)" if c["kept"] else "") for c in checks))
    measured = fit["measured_latency_ratio"]
    if abs(measured - budget) > 0.1 * budget:
        logger.warning(f"WARNING: the frozen model takes {measured:.3f} of the dense model's time, more than 10% "
                       f"off budget {budget} after {len(checks)} fits: timings on this device are unsteady, or the "
                       f"fit cannot reach it; a higher --latency_check allows more fits")


def warn_if_timed_off_budget(logger: RunLogger, fit: dict, budget: float) -> None:
    """A search exported as it ended whose frozen model, timed whole against the dense one, is more than 10%
    off a latency budget: the table's parts, timed alone, did not add up to the whole model here. Loud."""
    measured = fit.get("measured_latency_ratio")
    if measured is None or abs(measured - budget) <= 0.1 * budget:
        return
    logger.warning(f"WARNING: the frozen model takes {measured:.3f} of the dense model's time, more than 10% off "
                   f"budget {budget} (the latency table estimated {fit['latency_ratio']:.3f}) and is exported as "
                   f"searched: --greedy_fit 1 refits it to the measured time (--latency_check fits), or measure "
                   f"the table on a quiet machine (--latency_cache)")


def log_frozen(logger: RunLogger, fit: dict, budget: float, top1: float) -> None:
    """One line on the frozen architecture: what the greedy fit did, or (a search exported as it ended) how far the
    search ended from the budget and what the fit would have changed."""
    if fit.get("exported_as_searched"):
        timed = fit.get("measured_latency_ratio")
        logger.info(f"frozen architecture as searched (no fit): MACs ratio {fit['macs_ratio']:.4f}, "
                    f"{fit['budget_gap']:+.4f} from budget {budget} in {fit['budget_metric']}"
                    + (f" (timed whole: {timed:.3f} of the dense model's time)" if timed is not None else "")
                    + f"; the greedy fit would have changed {100 * fit['greedy_would_change_frac']:.1f}% of the "
                    f"groups; top-1 {top1:.2f}")
        return
    logger.info(f"frozen architecture: MACs ratio {fit['macs_ratio']:.4f} (search ended at "
                f"{fit['searched_macs_ratio']:.4f}; to fit budget {budget} the greedy pass removed "
                f"{fit['groups_removed_to_fit']} groups and restored {fit['restored_neurons']} neurons, "
                f"{fit['restored_dims']} value dims, {fit['restored_heads']} heads, {fit['restored_blocks']} "
                f"blocks; widths at multiples of {fit['round_to']}: {fit['rounded_up']} groups rounded up, "
                f"{fit['rounded_down']} down); top-1 {top1:.2f}")


def log_search_start(logger: RunLogger, search: UVCSearch, budget, target_ramp: float, teacher_top1,
                     steps_per_epoch: int) -> None:
    """The dense model's top-1 and what the search will do: its steps and the reach of its target."""
    dense = f"{teacher_top1:.2f}" if teacher_top1 is not None else "not measured (no dense weights)"
    if search.reference:
        logger.info(f"dense top-1 {dense}; search: {search.rates.steps} steps of the reference's algorithm "
                    f"(--search_algorithm reference) against budget {budget}, exported with no fit")
        return
    rules = search.rules.names()
    logger.info(f"dense top-1 {dense}; search: {search.rates.steps} steps, the target reaches budget "
                f"{budget} after {target_ramp:.0%} of them"
                + (f"; the reference's rules in place of ours: {', '.join(rules)}" if rules else ""))
    warn_if_too_short(logger, search.rates.steps, steps_per_epoch)


def log_epoch(logger: RunLogger, search: UVCSearch, model: MaskedViT, epoch: int, step: int, stats: dict,
              metrics: dict) -> None:
    """One epoch's record in log.jsonl and tensorboard: the training and validation averages, the
    architecture's ratios and counts, and the controller's variables (z, y, p and z's integral)."""
    ratios = search.ratios(model)
    kept = log_architecture(logger, search, model, step)
    record = {"epoch": epoch, "step": step, "searching": search.active,
              **{f"train_{k}": v for k, v in stats.items()}, **{f"val_{k}": v for k, v in metrics.items()},
              **ratios, "z": float(search.arch.z), "y_mean": float(search.arch.y.mean()),
              "p_mean": float(search.arch.p.mean()), "z_integral": float(search.arch.z_integral),
              **search.record(), **kept}
    logger.scalars("epoch", {k: v for k, v in record.items() if isinstance(v, (int, float))}, epoch)
    logger.epoch(record)


def log_freeze(logger: RunLogger, fit: dict, budget, top1: float, teacher_top1) -> None:
    """The frozen architecture against the budget (in MACs and, if the budget is another metric, in that
    metric), the latency check, and a warning when the search or the fit missed its window or top-1
    collapsed."""
    log_frozen(logger, fit, float(budget), top1)
    metric = fit["budget_metric"]
    if metric != "macs":
        logger.info(f"frozen {metric} ratio {fit[metric + '_ratio']:.4f} (search ended at "
                    f"{fit['searched_' + metric + '_ratio']:.4f})")
    log_latency_check(logger, fit, float(budget))
    if fit.get("exported_as_searched"):
        warn_if_off_budget(logger, fit, float(budget))
        warn_if_timed_off_budget(logger, fit, float(budget))
    if fit.get("fit_window") == "missed" and (fit["round_to"] > 1 or metric != "macs"):
        logger.warning(f"WARNING: the frozen architecture's {metric} ratio {fit[metric + '_ratio']:.4f} is outside "
                       f"[budget - 0.03, budget + 0.01] of budget {budget}: the greedy fit (MLP widths and "
                       f"value dims at multiples of --round_to {fit['round_to']}) could not reach it from where "
                       f"the search ended; a lower --round_to gives finer steps")
    warn_if_collapsed(logger, top1, teacher_top1)
