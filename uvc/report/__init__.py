"""What a model costs: MACs, dense MACs, ratio, parameters, and the compressed
architecture block by block.

    python -m uvc.report deit_small_patch16_224                 # a model type (dense)
    python -m uvc.report weights.pth                            # a dense checkpoint
    python -m uvc.report out/deit_tiny_patch16_224_uvc.pth      # stage 1 (joint_train.py)
    python -m uvc.report out/deit_tiny_patch16_224_uvc_post_best.pth   # stage 2
    python -m uvc.report out/compact.pth --json --fvcore --plot arch.png

MACs are multiply-accumulates (what the DeiT/UVC papers call "FLOPs"), by the
formula of uvc.cost.flops (docs/method.md section 3). For a compressed model they are the
deployed count: the exported compact model's, value dims padded per block to
the largest kept head. `--fvcore` counts the physically built model (the dense
timm model, or the compact model a stage-1/2 file exports to) with fvcore, fused
attention off everywhere so that q.k^T and a.v are seen; fvcore's total also
includes the LayerNorms, which the formula leaves out (~0.4% on DeiT).

`--json` prints one JSON object: macs, dense_macs, macs_ratio, params,
dense_params; for compressed files also blocks [{skipped, heads, value_dims,
value_dims_deployed, mlp_hidden, macs}] (one per original block; value_dims
before padding where the file knows it), patches_kept (a count) and patch_map
(the kept positions); with --fvcore also fvcore_macs (fvcore's total),
fvcore_macs_modelled_ops (its linear + matmul + conv, which must equal macs) and
fvcore_rel_diff; with a latency table (`--latency`: measured on --device at --threads
once and cached, or the one a `--budget_metric latency` stage-1 file was searched with) also
latency_seconds, dense_latency_seconds (estimated per batch) and latency_ratio.
Bad input: one line on stderr, exit code 2.
"""
from uvc.report.cli import main
from uvc.report.counting import build_report, latency_numbers, latency_table_of
from uvc.report.kinds import KINDS, ReportError, Subject
from uvc.report.models import arch_of_compact_spec, built_model, dense_vit, sizes_of_vit
from uvc.report.reading import read_subject

__all__ = ["KINDS", "ReportError", "Subject", "arch_of_compact_spec", "build_report", "built_model", "dense_vit",
           "latency_numbers", "latency_table_of", "main", "read_subject", "sizes_of_vit"]
