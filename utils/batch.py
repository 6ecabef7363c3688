"""Batch and learning rate as the seed means them (docs/method.md section 7b).

`--train_batch_size` is the batch of one process, as in the seed, DeiT and timm:
one optimizer step sees per-process batch x processes x accumulation steps
images. Stage 2 scales its learning rate with that global batch, as the
reference's post_train.py and DeiT do; stage 1 uses `--learning_rate` as given,
as the reference's joint_train.py does.
"""
from dataclasses import dataclass

REFERENCE_BATCH = 512  # the global batch at which stage 2 runs at --learning_rate


def peak_lr(learning_rate: float, global_batch: int, stage: str) -> float:
    """The peak learning rate of the weights.

    Stage 2 ("post"): learning_rate x global_batch / 512 (the linear scaling rule of
    the reference and DeiT: the seed's 1e-4 at 256 images x 2 processes is 1e-4).
    Stage 1 ("joint"): learning_rate, unscaled.
    """
    if stage == "post":
        return learning_rate * global_batch / REFERENCE_BATCH
    return learning_rate


@dataclass(frozen=True)
class BatchPlan:
    """How many images one optimizer step sees, and the peak learning rate that follows."""

    per_process_batch: int
    world_size: int
    accumulation: int
    peak_lr: float

    @property
    def global_batch(self) -> int:
        return self.per_process_batch * self.world_size * self.accumulation

    def record(self) -> dict:
        """The first record of a run's log.jsonl."""
        return {"world_size": self.world_size, "per_process_batch": self.per_process_batch,
                "gradient_accumulation_steps": self.accumulation, "global_batch": self.global_batch,
                "peak_lr": self.peak_lr}

    def line(self) -> str:
        """The line a run prints at its start."""
        return (f"batch {self.per_process_batch} per process x {self.world_size} process(es) x {self.accumulation} "
                f"accumulation step(s) = global batch {self.global_batch}; peak learning rate {self.peak_lr:.6g}")


def batch_plan(config, stage: str, world_size: int) -> BatchPlan:
    """The BatchPlan of a run of `stage` ("joint" / "post") on `world_size` processes."""
    per_process, accumulation = int(config.train_batch_size), int(config.gradient_accumulation_steps)
    global_batch = per_process * world_size * accumulation
    return BatchPlan(per_process, world_size, accumulation, peak_lr(float(config.learning_rate), global_batch, stage))
