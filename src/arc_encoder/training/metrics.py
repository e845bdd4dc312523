"""Where training metrics go: a JSONL file (always), TensorBoard (optional), a PNG at the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..records import read_jsonl

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "curves.png"


class MetricsLog:
    """Append one JSON record per line; mirror numbers to TensorBoard when asked."""

    def __init__(self, out_dir: str | Path, tensorboard: bool = False, resume_step: int | None = None):
        self.path = Path(out_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            # records written after the checkpoint we resume from would appear twice
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self.file = open(self.path, "a", encoding="utf-8")
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError(
                    "log.tensorboard: true needs the tensorboard package (pip install tensorboard)"
                ) from e
            self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            step = record["step"]
            for key, value in _numbers(record):
                if key != "step":
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()


def _numbers(record: dict[str, Any], prefix: str = ""):
    for key, value in record.items():
        if isinstance(value, dict):
            yield from _numbers(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{prefix}{key}", value


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl (a run folder or the file itself; [] if none yet)."""
    path = Path(path)
    path = path / METRICS_FILE if path.is_dir() else path
    return read_jsonl(path) if path.is_file() else []


def plot_curves(metrics_path: str | Path, png_path: str | Path) -> Path:
    """Training loss, held-out losses, the held-out content gap and learning rates against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval" in r]
    fig, (ax_loss, ax_gap, ax_lr) = plt.subplots(
        3, 1, figsize=(8, 9), sharex=True, gridspec_kw={"height_ratios": [3, 2, 1]}
    )
    if train:
        ax_loss.plot([r["step"] for r in train], [r["loss_avg"] for r in train], label="train", lw=1)
    for name in sorted({k for r in evals for k in r["eval"]}):
        if "/accuracy" in name:
            continue
        points = [(r["step"], r["eval"][name]) for r in evals if name in r["eval"]]
        ax = ax_gap if name.endswith("/gap") else ax_loss
        ax.plot(*zip(*points), marker="o", ms=3, label=f"held-out {name}")
    ax_loss.set_ylabel("loss (nats / token)")
    ax_gap.set_ylabel("content gap\n(mismatched - right)")
    for ax in (ax_loss, ax_gap):
        if ax.lines:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for group in sorted({g for r in train for g in r["lr"]}):
        ax_lr.plot([r["step"] for r in train], [r["lr"][group] for r in train], label=group)
    ax_lr.set_yscale("log")
    ax_lr.set_xlabel("step")
    ax_lr.set_ylabel("learning rate")
    ax_lr.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return Path(png_path)
