"""What a benchmark run reports, read the same way for every method: the groups it removed, its
fine-tuning's top-1 at the last and the best epoch, and the result files (a markdown table and the
numbers as JSON, written atomically).
"""
import json
import os
from typing import Dict, Optional, Sequence

import torch

from utils.checkpoint import atomic_write_text

AXES = ("blocks", "heads", "dims", "neurons", "patches")  # what a run removed, counted per axis (`removed`)


def removed_of_spec(spec: dict) -> Dict[str, int]:
    """What an architecture spec removes, per axis: skipped blocks, and in the kept blocks heads,
    value dims of kept heads and MLP neurons; dropped patch positions."""
    H, d, M = spec["num_heads"], spec["head_dim"], spec["mlp_hidden"]
    kept = [b for b in spec["blocks"] if not b["skipped"]]
    return {"blocks": len(spec["blocks"]) - len(kept), "heads": sum(H - len(b["heads"]) for b in kept),
            "dims": sum(d - len(v) for b in kept for v in b["value_dims"]),
            "neurons": sum(M - len(b["neurons"]) for b in kept),
            "patches": (spec["img_size"] // spec["patch_size"]) ** 2 - len(spec["patches_kept"])}


def removed_of_pruned(model: torch.nn.Module, dense: torch.nn.Module) -> Dict[str, int]:
    """The same counts for a Torch-Pruning model (a head dim goes from q, k and v together)."""
    attn, M = dense.blocks[0].attn, dense.blocks[0].mlp.fc1.out_features
    return {"blocks": 0, "heads": sum(attn.num_heads - b.attn.num_heads for b in model.blocks),
            "dims": sum(b.attn.num_heads * (attn.head_dim - b.attn.head_dim) for b in model.blocks),
            "neurons": sum(M - b.mlp.fc1.out_features for b in model.blocks), "patches": 0}


def removed_text(removed: Dict[str, int]) -> str:
    """"blocks/heads/dims/neurons/patches" removed, for the tables."""
    return "/".join(str(removed[k]) for k in AXES)


def finetune_top1(log_path: str) -> Dict[str, float]:
    """{"top1_last", "top1_best"}: validation top-1 at the last fine-tuning epoch and at the best one, from
    the log.jsonl post_train.py and baselines.finetune write (one record per epoch with "epoch" and
    "val_top1"; an epoch logged again after a resume counts once, as its last record)."""
    by_epoch = {}
    with open(log_path) as f:
        for line in f:
            record = json.loads(line)
            if "epoch" in record and "val_top1" in record:
                by_epoch[int(record["epoch"])] = float(record["val_top1"])
    if not by_epoch:
        raise SystemExit(f"{log_path} holds no epoch record: the fine-tuning run did not finish an epoch")
    return {"top1_last": by_epoch[max(by_epoch)], "top1_best": max(by_epoch.values())}


def search_end(log_path: str) -> Optional[Dict[str, float]]:
    """Where a search ended, from the record joint_train.py writes last in its log.jsonl: the metric it
    budgeted ("macs" or "latency"), the budget, its own cost model's ratio when it ended ("searched",
    before any --greedy_fit), for a latency search the exported model timed whole against the dense
    one ("timed"), and where the freeze aligned the token count (uvc.deploy.patch_align) the patches the search
    kept and those put back ("patches_searched", "patches_restored"); None for a stage-1 file with no such log
    (a one-shot peer's)."""
    if not os.path.exists(log_path):
        return None
    with open(log_path) as f:
        ends = [r for r in map(json.loads, f) if "stage1_file" in r and ("budget" in r or "budget_gap" in r)]
    if not ends:
        return None
    end, metric = ends[-1], ends[-1].get("budget_metric", "macs")
    searched = float(end[f"searched_{metric}_ratio"])
    budget = end["budget"] if "budget" in end else round(searched - float(end["budget_gap"]), 6)  # older logs
    out = {"metric": metric, "budget": float(budget), "searched": searched}
    if end.get("measured_latency_ratio") is not None:
        out["timed"] = float(end["measured_latency_ratio"])
    if "patches_restored_to_align" in end:
        out.update(patches_searched=int(end["patches_searched"]),
                   patches_restored=int(end["patches_restored_to_align"]))
    return out


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def write_result(out: str, text: str, record: dict) -> None:
    """A benchmark's result: the table as <out>.md, the numbers (with the command) as <out>.json, both
    written atomically."""
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    atomic_write_text(text, out + ".md")
    atomic_write_text(json.dumps(record, indent=1), out + ".json")


