"""Training: typed YAML configs, the LR schedule, resumable checkpoints, the recipe (`run`)."""

from .config import TrainConfig, load_config
from .trainer import Trainer, TrainingDiverged, run

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged", "load_config", "run"]
