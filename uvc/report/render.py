"""A report as text (its JSON form is the report dict itself)."""
from uvc.report.counting import FORMULA_OPS


def si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{n:.4g}"


def format_text(r: dict) -> str:
    """The human-readable report."""
    lines = [f"{r['source']}: {r['kind']}, {r['model_type']} at {r['img_size']}px"
             + (f", budget {r['budget']:g}" if "budget" in r else "")]
    deployed = " (deployed: value dims padded per block)" if "blocks" in r else ""
    lines += [f"MACs:        {si(r['macs'])}MACs{deployed}   [multiply-accumulates, the literature's \"FLOPs\"]",
              f"dense MACs:  {si(r['dense_macs'])}MACs",
              f"MACs ratio:  {r['macs_ratio']:.4f}",
              f"params:      {si(r['params'])} ({100 * r['params_ratio']:.1f}% of dense {si(r['dense_params'])})"]
    if "macs_unpadded" in r:
        lines.append(f"MACs without value-dim padding: {si(r['macs_unpadded'])}MACs "
                     f"(ratio {r['macs_unpadded'] / r['dense_macs']:.4f})")
    if "fvcore_macs" in r:
        lines.append(f"fvcore MACs: {si(r['fvcore_macs'])}MACs ({100 * r['fvcore_rel_diff']:+.2f}% vs the formula; "
                     f"{'+'.join(FORMULA_OPS)} {si(r['fvcore_macs_modelled_ops'])}, the rest is LayerNorm)")
    if "latency_ratio" in r:
        t = r["latency_table"]
        lines.append(f"est. latency ratio: {r['latency_ratio']:.4f} ({1e3 * r['latency_seconds']:.3g} ms of "
                     f"{1e3 * r['dense_latency_seconds']:.3g} ms dense per batch of {t['batch_size']}, "
                     f"{t['device']} {t['device_name']}, {'amp' if t['amp'] else 'fp32'}; {t['source']})")
    if "blocks" in r:
        lines.append(f"blocks kept: {r['blocks_kept']}/{r['depth']}, patches kept: {r['patches_kept']}/"
                     f"{r['num_patches']}")
        lines.append(f"{'block':>5} {'kept':>5} {'heads':>6} {'value dims (deployed)':>22} {'MLP hidden':>10} "
                     f"{'MACs':>10}")
        for i, b in enumerate(r["blocks"]):
            if b["skipped"]:
                lines.append(f"{i:>5} {'skip':>5}")
                continue
            lines.append(f"{i:>5} {'yes':>5} {b['heads']:>6} {b['value_dims']:>10} ({b['value_dims_deployed']:>4})"
                         f"{'':>5} {b['mlp_hidden']:>10} {si(b['macs']):>10}")
    return "\n".join(lines)
