"""The full state of a training run, saved every epoch and restored by --resume.

Weights, every optimizer/scheduler/scaler state, the architecture search state
(s, r, y, p, z, gate and patch logits, their optimizers), epoch, step, the
position inside the epoch, every rank's RNG states and the config. A run
resumed from it continues exactly as the uninterrupted run would have
(bitwise on CPU with --deterministic 1).

Stopping: SIGTERM (what Slurm, Kubernetes and torchrun send) sets a flag that
the training loop reads after every step (`StopSignal`); the run then saves a
mid-epoch checkpoint and exits with code 143 (128 + SIGTERM). Restarts: a run
restarted by torchrun (`--max-restarts`, TORCHELASTIC_RESTART_COUNT > 0) resumes
from <output_dir>/checkpoint.pth, if there is one, even without `--resume auto`.
"""
import os
import signal
import sys
import threading
from typing import Optional, Tuple

import torch

from utils.checkpoint import RESUME_NAME, atomic_save, load_resume, resolve_resume, rng_state, set_rng_state, \
    ResumeError
from utils.dist import any_rank, barrier, check_rank_consistency, cleanup, get_rank, get_world_size, \
    is_dist_ready, is_main_process, rank0_print

RUN_FORMAT = "uvc-run-v1"
EXIT_PREEMPTED = 128 + signal.SIGTERM  # 143, the code of a process ended by SIGTERM
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, Ctrl-C
# what a resumed run must share with the run it continues: the model's shape, and what sets the
# number of steps, the search length and the schedules derived from it
RESUME_KEYS = ("model_type", "enable_deit", "embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size",
               "in_chans", "num_classes", "model_kwargs", "input_size", "dataset", "train_batch_size",
               "gradient_accumulation_steps", "epochs", "max_steps_per_epoch", "enable_warmup", "warmup_epochs",
               "budget", "budget_metric", "target_ramp", "gating_interval", "round_to", "token_step",
               "search_algorithm", "reference_rules")


class StopSignal:
    """SIGTERM or SIGINT (Ctrl-C) -> a flag; the training loop asks `requested()` between steps,
    then saves and exits with 128 + the signal (143, 130).

    Nothing is saved inside the handler (it may interrupt anything, a save
    included). Repeated SIGTERMs change nothing (Slurm signals every process of
    a job and torchrun forwards the signal as well); a second Ctrl-C, or SIGKILL,
    ends the run at once. `requested()` is a collective in distributed runs: every rank
    stops at the same step even when the signal reaches the ranks at different
    moments.
    """

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.received: Optional[int] = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = signum
        if signum == signal.SIGINT and signum in self._previous:  # a second Ctrl-C interrupts at once
            signal.signal(signum, self._previous.pop(signum))

    def requested(self) -> bool:
        return any_rank(self.received is not None)

    def exit_code(self) -> int:
        """128 + the signal this process received (130 for Ctrl-C), 143 when only another rank did."""
        return 128 + (self.received or signal.SIGTERM)

    def close(self) -> None:
        """Put the previous handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    return obj


class RunState:
    """Collects what to checkpoint; `extra` holds stage-specific objects with state_dict().

    An extra object may also have local_state_dict()/load_local_state_dict():
    state that legitimately differs between ranks (e.g. gradients accumulated
    but not yet averaged); it is saved per rank, like the RNG states.
    """

    def __init__(self, stage: str, vit, optimizer, scheduler, scaler, config, **extra):
        self.stage, self.vit, self.optimizer, self.scheduler, self.scaler = stage, vit, optimizer, scheduler, scaler
        self.config = config
        self.extra = extra
        self.epoch = 0  # epochs completed
        self.global_step = 0
        self.best_top1 = -1.0
        self.step_in_epoch = 0  # > 0: stopped after this many steps of epoch `self.epoch`
        self.progress: Optional[dict] = None  # that epoch's partial averages on this rank (engine.loop.Averages)

    # --- what is saved -----------------------------------------------------------
    def shared_state_dict(self) -> dict:
        """The state every rank holds identically."""
        return {
            "format": RUN_FORMAT, "stage": self.stage, "model_type": self.config.model_type,
            "epoch": self.epoch, "global_step": self.global_step, "best_top1": self.best_top1,
            "step_in_epoch": self.step_in_epoch, "student": type(self.vit).__name__,
            "model": self.vit.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(), "config": self.config.to_dict(),
            **{name: obj.state_dict() for name, obj in self.extra.items()},
        }

    def local_state_dict(self) -> dict:
        """This rank's own state: RNG states, the partial epoch averages (of this rank's losses) and the
        extras' local state."""
        extras = {name: _to_cpu(obj.local_state_dict()) for name, obj in self.extra.items()
                  if hasattr(obj, "local_state_dict")}
        return {"rng": rng_state(), "progress": self.progress, **extras}

    def state_dict(self) -> dict:
        """The checkpoint (a collective in distributed runs: every rank's local state is gathered;
        only rank 0 gets the full list)."""
        local = self.local_state_dict()
        ranks = [local]
        if is_dist_ready():
            ranks = [None] * get_world_size() if is_main_process() else None
            torch.distributed.gather_object(local, ranks, dst=0)
        return {**self.shared_state_dict(), "rng": ranks[0]["rng"] if ranks else None, "ranks": ranks,
                "world_size": get_world_size()}

    def save(self, output_dir: str) -> str:
        """Check that all ranks agree, then write <output_dir>/checkpoint.pth on rank 0 (atomically).

        Call on every rank. Raises utils.dist.RankMismatchError if the ranks' weights, architecture or
        optimizer states differ.
        """
        path = os.path.join(output_dir, RESUME_NAME)
        world = get_world_size()
        if world > 1:
            shared = {k: v for k, v in self.shared_state_dict().items() if k != "config"}  # config has local_rank
            digest = check_rank_consistency(shared, f"{self.stage} run state at epoch {self.epoch}")
        state = self.state_dict()
        if is_main_process():
            atomic_save(state, path)
        barrier()  # no rank goes on (or exits) before the file is complete
        if world > 1:
            rank0_print(f"saved {path}: the {world} ranks hold identical state (digest {digest})")
        return path

    # --- restoring ---------------------------------------------------------------
    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != RUN_FORMAT or state.get("stage") != self.stage:
            raise ResumeError(f"the --resume file is not a {self.stage} run checkpoint (format "
                              f"{state.get('format')!r}, stage {state.get('stage')!r}); pass the checkpoint.pth "
                              f"written by the same script")
        if state["model_type"] != self.config.model_type:
            raise ResumeError(f"the --resume file is a run of {state['model_type']}, not "
                              f"{self.config.model_type}; pass --model_type {state['model_type']} or another file")
        self._check_same_student(state)
        self._check_same_run(state)
        self.vit.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        for name, obj in self.extra.items():
            obj.load_state_dict(state[name])
        self.epoch, self.global_step, self.best_top1 = state["epoch"], state["global_step"], state["best_top1"]
        self.step_in_epoch = state.get("step_in_epoch", 0)
        ranks = state.get("ranks") or [{"rng": state["rng"]}]
        local = ranks[get_rank()] if len(ranks) == get_world_size() else ranks[0]
        for name, obj in self.extra.items():
            if hasattr(obj, "load_local_state_dict") and name in local:
                obj.load_local_state_dict(local[name])
        self.progress = local.get("progress")
        set_rng_state(local["rng"])

    def _check_same_student(self, state: dict) -> None:
        """Stage 2 fine-tunes the compact model; a checkpoint of the masked full-size one (written before,
        without the key) cannot continue it."""
        kind = type(self.vit).__name__
        saved = state.get("student") or (kind if kind != "CompactViT" else "the masked full-size model")
        if saved != kind:
            raise ResumeError(f"the --resume file fine-tuned {saved}, this run fine-tunes {kind} (stage 2 trains the "
                              f"compact model since it was written): start stage 2 again from the stage-1 file")

    def _check_same_run(self, state: dict) -> None:
        """A resume continues the same run: the keys that shape the model or set the length of the
        run (the search length, the target schedule and its gains follow from them) must not change,
        nor may the number of processes."""
        saved = state.get("config") or {}
        for key in RESUME_KEYS:
            if key in saved and key in self.config and saved[key] != self.config[key]:
                raise ResumeError(f"--{key} is {self.config[key]!r} but the --resume run used {saved[key]!r}: a "
                                  f"resumed run must keep the model's shape and the run's length and schedule; pass "
                                  f"--{key} {saved[key]} or start a new run in another --output_dir")
        ranks = state.get("ranks") or []
        if ranks and len(ranks) != get_world_size():
            raise ResumeError(f"the --resume run ran on {len(ranks)} process(es), this one on {get_world_size()}: "
                              f"the steps per epoch and so the search's schedule would change; resume with "
                              f"--nproc_per_node {len(ranks)} or start a new run in another --output_dir")

    def maybe_resume(self, resume: str, output_dir: str) -> Optional[str]:
        """Restore from --resume (a path or "auto"); returns the file used, if any.

        A process restarted by torchrun (TORCHELASTIC_RESTART_COUNT > 0) resumes from the run's
        own <output_dir>/checkpoint.pth whenever there is one, whatever --resume says: a restart
        continues the run instead of starting over (or over again from the --resume file).
        """
        restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0
        if restarted and os.path.isfile(os.path.join(output_dir, RESUME_NAME)):
            resume = "auto"
        path = resolve_resume(resume, output_dir)
        if path is not None:
            self.load_state_dict(load_resume(path))
        return path

    def take_resume_point(self) -> Tuple[int, Optional[dict]]:
        """(steps of the current epoch already done, their partial averages), once: the next
        epoch starts from its beginning."""
        point = (self.step_in_epoch, self.progress)
        self.step_in_epoch, self.progress = 0, None
        return point

    # --- stopping ----------------------------------------------------------------
    def exit_preempted(self, output_dir: str, logger, stats: Optional[dict] = None,
                       code: int = EXIT_PREEMPTED) -> None:
        """After SIGTERM or SIGINT: save a resumable checkpoint (mid-epoch when `stats`, the result of a
        stopped train_one_epoch, is given), log it, and exit with `code` (128 + the signal). Every rank
        calls it."""
        if stats is not None:
            self.step_in_epoch, self.progress = stats["stopped_at"], stats["progress"]
        path = self.save(output_dir)
        where = f"epoch {self.epoch} step {self.step_in_epoch}" if self.step_in_epoch else f"the end of epoch " \
                                                                                          f"{self.epoch - 1}"
        name = signal.Signals(code - 128).name if 0 < code - 128 < signal.NSIG else "a stop signal"
        logger.info(f"{name} received: saved {path} at {where} (global step {self.global_step}); exiting with "
                    f"code {code}. Continue with --resume auto (same --output_dir)")
        logger.close()
        cleanup()
        sys.exit(code)
