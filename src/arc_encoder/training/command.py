"""`arc-encoder train CONFIG.yaml [key=value ...] [--resume]`, also under torchrun."""

from __future__ import annotations

import sys
from pathlib import Path

from .config import load_config
from .trainer import TrainingDiverged, run


def train_command(config_path: Path, overrides: list[str], resume: bool) -> int:
    """Validate the config, train, and return an exit status (2: bad config, 1: training failed)."""
    try:
        config = load_config(config_path, overrides)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        run(config, resume=resume)
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (FileExistsError, FileNotFoundError, ValueError) as e:  # resume / init_from / data problems
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
