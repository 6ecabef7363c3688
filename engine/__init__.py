"""The training recipe: what assembles a run (build), the loop that trains and
evaluates it (loop), the distillation loss, the run state saved for --resume,
the steps both stages take around an epoch (stage), what stage 1 reports
(stage1_log), and how entry scripts end on bad input (entry). Above utils/,
data/, models/ and uvc/; below the entry scripts."""
from engine.loop import evaluate, train_one_epoch

__all__ = ["evaluate", "train_one_epoch"]
