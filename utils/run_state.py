"""The full state of a training run, saved every epoch and restored by --resume.

Weights, every optimizer/scheduler/scaler state, the architecture search state
(s, r, y, p, z, gate and patch logits, their optimizers), epoch, step, RNG
states and the config.
"""
import os
from typing import Optional

from utils.checkpoint import RESUME_NAME, atomic_save, load_resume, resolve_resume, rng_state, set_rng_state, \
    ResumeError

RUN_FORMAT = "uvc-run-v1"


class RunState:
    """Collects what to checkpoint; `extra` holds stage-specific objects with state_dict()."""

    def __init__(self, stage: str, vit, optimizer, scheduler, scaler, config, **extra):
        self.stage, self.vit, self.optimizer, self.scheduler, self.scaler = stage, vit, optimizer, scheduler, scaler
        self.config = config
        self.extra = extra
        self.epoch = 0  # epochs completed
        self.global_step = 0
        self.best_top1 = -1.0

    def state_dict(self) -> dict:
        return {
            "format": RUN_FORMAT, "stage": self.stage, "model_type": self.config.model_type,
            "epoch": self.epoch, "global_step": self.global_step, "best_top1": self.best_top1,
            "model": self.vit.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(), "rng": rng_state(), "config": self.config.to_dict(),
            **{name: obj.state_dict() for name, obj in self.extra.items()},
        }

    def save(self, output_dir: str) -> str:
        path = os.path.join(output_dir, RESUME_NAME)
        atomic_save(self.state_dict(), path)
        return path

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != RUN_FORMAT or state.get("stage") != self.stage:
            raise ResumeError(f"the --resume file is not a {self.stage} run checkpoint (format "
                              f"{state.get('format')!r}, stage {state.get('stage')!r}); pass the checkpoint.pth "
                              f"written by the same script")
        if state["model_type"] != self.config.model_type:
            raise ResumeError(f"the --resume file is a run of {state['model_type']}, not "
                              f"{self.config.model_type}; pass --model_type {state['model_type']} or another file")
        self.vit.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        for name, obj in self.extra.items():
            obj.load_state_dict(state[name])
        self.epoch, self.global_step, self.best_top1 = state["epoch"], state["global_step"], state["best_top1"]
        set_rng_state(state["rng"])

    def maybe_resume(self, resume: str, output_dir: str) -> Optional[str]:
        """Restore from --resume (a path or "auto"); returns the file used, if any."""
        path = resolve_resume(resume, output_dir)
        if path is not None:
            self.load_state_dict(load_resume(path))
        return path
