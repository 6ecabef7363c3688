"""The compact model as an ONNX file, checked under onnxruntime.

    python -m uvc.export --checkpoint stage2.pth --onnx compact.onnx [--output compact.pth]

The graph has one input `images` (B, C, H, W) and one output `logits` (B, classes),
with a dynamic batch axis. It is exported with attention written out
(softmax(q k^T) v, `fused_attn` off), which every ONNX runtime runs, and
`check_onnx` compares onnxruntime's logits with the PyTorch model's.
"""
import os
import warnings
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from models.vit import set_fused_attn

OPSET = 17
INPUT, OUTPUT = "images", "logits"


def export_onnx(compact: nn.Module, path: str, opset: int = OPSET) -> None:
    """Write `compact` (eval mode, on CPU) to `path` with a dynamic batch axis, atomically."""
    spec = compact.spec
    model = _exportable(compact)
    example = torch.zeros(2, spec["in_chans"], spec["img_size"], spec["img_size"])
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(model, (example,), tmp, input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=opset,
                              dynamo=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _exportable(compact: nn.Module) -> nn.Module:
    """A CPU copy in eval mode with attention written out (the module itself is left unchanged)."""
    import copy

    model = copy.deepcopy(compact).cpu().eval()
    set_fused_attn(model, False)
    return model


def session(path: str, threads: int = 0):
    """An onnxruntime CPU session of `path` (`threads` intra-op threads, 0: onnxruntime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def run_onnx(sess, images: torch.Tensor) -> torch.Tensor:
    """Logits of an onnxruntime session for a (B, C, H, W) batch."""
    out = sess.run([OUTPUT], {INPUT: images.detach().cpu().numpy().astype(np.float32)})[0]
    return torch.from_numpy(out)


@torch.no_grad()
def check_onnx(compact: nn.Module, path: str, batch: int = 3, seed: int = 0,
               sess: Optional[object] = None) -> float:
    """max |onnxruntime logits - PyTorch logits| of `compact` on a random batch."""
    spec = compact.spec
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, spec["in_chans"], spec["img_size"], spec["img_size"], generator=gen)
    device = next(compact.parameters()).device
    reference = compact.eval()(x.to(device)).cpu()
    return float((run_onnx(sess or session(path), x) - reference).abs().max())


class OnnxModel(nn.Module):
    """An onnxruntime session behind a module's call, so the benchmarks time it like the others (CPU)."""

    def __init__(self, path: str, threads: int = 0):
        super().__init__()
        self.path = path
        self.sess = session(path, threads)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return run_onnx(self.sess, images)
