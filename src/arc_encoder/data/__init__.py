"""Training data: document sources, pretraining and fine-tuning batch pipelines."""

from .batch import TASKS, Batch
from .finetune import FinetuneData, FinetuneDataConfig
from .pretrain import PretrainData, PretrainDataConfig
from .sources import BadRecord, SourceSpec, parse_sources

__all__ = [
    "TASKS",
    "BadRecord",
    "Batch",
    "FinetuneData",
    "FinetuneDataConfig",
    "PretrainData",
    "PretrainDataConfig",
    "SourceSpec",
    "parse_sources",
]
