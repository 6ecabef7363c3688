"""The numbers of a report: MACs by the formula of uvc.cost.flops (the deployed count, value dims
padded per block), parameters of the built model, fvcore's count of the same model (fused attention
off, so q.k^T and a.v are seen; its total also holds the LayerNorms the formula leaves out) and the
latency estimated from a latency table (uvc.cost.latency)."""
import sys
import warnings
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from models.vit import set_fused_attn
from uvc.cost.cost import compact_cost, dense_cost
from uvc.cost.flops import arch_macs, block_macs, dense_macs
from uvc.cost.latency import LatencyCost
from uvc.cost.latency_table import load_or_measure
from uvc.deploy.export import compact_macs, spec_dims
from uvc.report.kinds import KINDS, Subject
from uvc.report.models import built_model, count_params, dense_vit

# fvcore operators that the MACs formula models; fvcore also counts layer_norm
FORMULA_OPS = ("linear", "matmul", "conv")



def block_rows(subject: Subject) -> List[Dict]:
    """Per original block: skipped, heads, value dims kept (and as deployed), MLP width, MACs."""
    spec = subject.compact_spec
    d, D = spec["head_dim"], spec["embed_dim"]
    tokens = len(spec["patches_kept"]) + spec_dims(spec).num_prefix_tokens
    rows = [{"skipped": True, "heads": 0, "value_dims": 0, "value_dims_deployed": 0, "mlp_hidden": 0, "macs": 0.0}
            for _ in range(spec["depth"])]
    for b in spec["blocks"]:
        deployed = b["heads"] * b["value_dim"]
        rows[b["source_block"]] = {
            "skipped": False, "heads": b["heads"], "value_dims": deployed, "value_dims_deployed": deployed,
            "mlp_hidden": b["mlp_hidden"],
            "macs": float(block_macs(tokens, D, b["heads"], d, deployed, b["mlp_hidden"]))}
    if subject.arch is not None:  # the kept dims before padding
        for row, block in zip(rows, subject.arch["blocks"]):
            if not row["skipped"]:
                row["value_dims"] = sum(len(v) for v in block["value_dims"])
    return rows


def fvcore_count(model: nn.Module, input_shape) -> Tuple[float, Dict[str, float]]:
    """fvcore's MACs of one image, fused attention off (fvcore cannot see inside SDPA)."""
    with warnings.catch_warnings():  # fvcore's import warns about torch.jit.script
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

    set_fused_attn(model, False)
    with torch.no_grad():
        counter = FlopCountAnalysis(model.eval(), torch.zeros(1, *input_shape))
        counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        by_op = {k: float(v) for k, v in counter.by_operator().items()}
        return float(counter.total()), by_op


def latency_table_of(subject: Subject, measure: bool, device="cpu", cache: str = "", batch_size: int = 64):
    """(table, where it came from): measured on `device` (or read from its cache) with `measure`, else
    the table a `--budget_metric latency` stage-1 file was searched with, else (None, None)."""
    if measure:
        vit = dense_vit(subject.dense_spec, device)
        return load_or_measure(vit, subject.model_type, device, cache, batch_size,
                               log=lambda text: print(text, file=sys.stderr))
    table = (subject.checkpoint or {}).get("latency_table")
    return (table, f"the table {subject.source} was searched with") if table else (None, None)


def latency_numbers(subject: Subject, table: dict, source: str) -> dict:
    """Estimated seconds per batch of the model and of the dense model, from a latency table (uvc.cost.latency)."""
    cost = LatencyCost(spec_dims(subject.dense_spec), table)
    dense = dense_cost(cost)
    seconds = compact_cost(cost, subject.compact_spec) if subject.compressed else dense
    return {"latency_seconds": seconds, "dense_latency_seconds": dense, "latency_ratio": seconds / dense,
            "latency_table": {"source": source, **{k: table.get(k) for k in ("device", "device_name", "threads",
                                                                              "batch_size", "amp")}}}


def build_report(subject: Subject, with_fvcore: bool = False, latency: Optional[Tuple[dict, str]] = None) -> dict:
    """The numbers `python -m uvc.report` prints, as a JSON-able dict (`latency`: (table, its source)
    adds the estimated latency)."""
    sizes = subject.dense_spec
    dims = spec_dims(sizes)
    dense = dense_macs(dims)
    dense_params = count_params(dense_vit(sizes, "meta"))
    out = {"source": subject.source, "kind": KINDS[subject.kind], "model_type": subject.model_type,
           "img_size": sizes["img_size"], "dense_macs": dense, "dense_params": dense_params}
    if subject.compressed:
        spec = subject.compact_spec
        macs = compact_macs(spec)
        params = count_params(built_model(subject, "cpu"))
        out.update(macs=macs, macs_ratio=macs / dense, params=params, params_ratio=params / dense_params,
                   blocks_kept=len(spec["blocks"]), depth=spec["depth"], patches_kept=len(spec["patches_kept"]),
                   num_patches=sizes["num_patches"], patch_map=list(spec["patches_kept"]),
                   blocks=block_rows(subject))
        if subject.arch is not None:
            out["macs_unpadded"] = arch_macs(dims, subject.arch, pad_value_dims=False)
        if subject.config and "budget" in subject.config:
            out["budget"] = float(subject.config["budget"])
    else:
        out.update(macs=dense, macs_ratio=1.0, params=dense_params, params_ratio=1.0)
    if with_fvcore:
        shape = (sizes["in_chans"], sizes["img_size"], sizes["img_size"])
        total, by_op = fvcore_count(built_model(subject, "cpu"), shape)
        modelled = sum(v for k, v in by_op.items() if k in FORMULA_OPS)
        out.update(fvcore_macs=total, fvcore_macs_modelled_ops=modelled, fvcore_by_operator=by_op,
                   fvcore_rel_diff=(total - out["macs"]) / out["macs"])
    if latency is not None and latency[0] is not None:
        out.update(latency_numbers(subject, *latency))
    return out
