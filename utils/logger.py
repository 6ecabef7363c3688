"""Run logging on rank 0: tensorboard under <output_dir>, one JSON line per epoch
in <output_dir>/log.jsonl, and plain lines on stdout."""
import json
import os
import sys
from typing import Dict, Optional

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from utils.dist import is_main_process


class RunLogger:
    """Writes only on the main process; every method is a no-op elsewhere."""

    def __init__(self, output_dir: str):
        self.enabled = is_main_process()
        self.output_dir = output_dir
        self.writer: Optional[SummaryWriter] = SummaryWriter(output_dir) if self.enabled else None

    def scalars(self, prefix: str, values: Dict[str, float], step: int) -> None:
        if self.enabled:
            for k, v in values.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        if self.enabled:
            self.writer.add_histogram(tag, values.detach().float().cpu(), step)

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """A (H, W) map in [0, 1] shown as a grey image."""
        if self.enabled:
            self.writer.add_image(tag, image.detach().float().cpu().unsqueeze(0), step)

    def start(self, line: str, record: Dict) -> None:
        """Print the run's opening line and append its record (batch, peak lr) to log.jsonl."""
        if self.enabled:
            print(line, flush=True)
            self._append(record)

    def _append(self, record: Dict) -> None:
        with open(os.path.join(self.output_dir, "log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")

    def epoch(self, record: Dict) -> None:
        """Append one JSON line to log.jsonl and print a short summary."""
        if not self.enabled:
            return
        self._append(record)
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()
                          if not isinstance(v, (list, dict)))
        print(shown, flush=True)

    def step_eval(self, step: int, metrics: Dict[str, float]) -> None:
        """A mid-epoch evaluation (--eval_every): tensorboard eval_step/*, and a log.jsonl line
        {"eval_step": step, "top1", "top5", "loss"} (no "epoch" or "val_*" key: epoch tables skip it)."""
        if not self.enabled:
            return
        self.scalars("eval_step", metrics, step)
        self._append({"eval_step": step, **metrics})
        tqdm.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

    def info(self, text: str) -> None:
        if self.enabled:
            print(text, flush=True)

    def warning(self, text: str) -> None:
        """A line on stderr, and a {"warning": text} record in log.jsonl."""
        if self.enabled:
            print(text, file=sys.stderr, flush=True)
            with open(os.path.join(self.output_dir, "log.jsonl"), "a") as f:
                f.write(json.dumps({"warning": text}) + "\n")

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
