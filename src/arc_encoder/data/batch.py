"""What data pipelines hand the trainer: homogeneous batches of spliced samples."""

from __future__ import annotations

from dataclasses import dataclass

from ..model.splice import Sample

TASKS = ("reconstruction", "continuation", "lookup", "cloze", "finetune")


@dataclass
class Batch:
    samples: list[Sample]
    task: str  # one of TASKS; every sample of a batch has the same task (method.md §5.1)

    @property
    def special(self) -> str:
        """Which special token follows each compressed segment: <Rec> only for reconstruction."""
        return "rec" if self.task == "reconstruction" else "cont"

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {TASKS}")
        if not self.samples:
            raise ValueError("a batch needs at least one sample")
