"""The kinds of subject a report describes: a model type, a dense checkpoint, a stage-1/2 file or a
compact model, and the error a report gives for anything else."""
from dataclasses import dataclass
from typing import Optional

from models.compact import FORMAT as COMPACT_FORMAT
from uvc.deploy.stagefile import STAGE1_FORMAT, STAGE2_FORMAT


KINDS = {"model_type": "model type (dense)", "dense": "dense checkpoint", STAGE1_FORMAT: "stage-1 file",
         STAGE2_FORMAT: "stage-2 file", COMPACT_FORMAT: "compact model"}


class ReportError(ValueError):
    """Input the report cannot describe; the message is one line for the user."""


@dataclass
class Subject:
    """What was asked about: a dense model, or a compressed one with its compact spec."""
    kind: str  # a key of KINDS
    source: str  # the model type or the file
    model_type: str
    dense_spec: dict  # sizes of the dense model, in the compact-spec vocabulary (no "blocks")
    compact_spec: Optional[dict] = None  # None: the dense model itself
    arch: Optional[dict] = None  # stage-1/2 files: the architecture spec (kept indices)
    checkpoint: Optional[dict] = None  # the file's content
    config: Optional[dict] = None  # stage-1/2 files: the run's config

    @property
    def compressed(self) -> bool:
        return self.compact_spec is not None
