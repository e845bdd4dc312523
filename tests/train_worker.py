"""Run under torchrun by test_train_distributed: the same training with DDP, then with FSDP2
(frozen decoders sharded, then replicated).

For each mode: 2 steps and a checkpoint, then a fresh model resumes from it and trains to step 4.
Every rank writes the full weights it ends with, so the test can compare ranks with each other and
with one process that saw the same global batches.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arc_encoder.training import checkpoint as ckpt  # noqa: E402
from arc_encoder.training.config import config_from_dict  # noqa: E402
from arc_encoder.training.distributed import Runtime, init_distributed  # noqa: E402
from arc_encoder.training.sharded_build import build_for_rank  # noqa: E402
from arc_encoder.training.trainer import Trainer, seed_everything  # noqa: E402
from training_data import TokenBatches, random_texts  # noqa: E402

TEXTS = random_texts(11, 12)  # 11: batches never repeat within a run, so a lost data position shows
GLOBAL_BATCH = 4


# How each run is wrapped: (parallel, fsdp_decoders).
MODES = {"ddp": ("ddp", "shard"), "fsdp": ("fsdp", "shard"), "fsdp-replicate": ("fsdp", "replicate")}


def distributed_config(out_dir, model: str, wide: str, mode: str, steps: int):
    lr = 2e-3  # the same constant rate for every group, so a resume may change `steps`
    parallel, decoders = MODES[mode]
    return config_from_dict(
        {
            "model": {
                "arc": {
                    "backbone": model,
                    "drop_layers": 1,
                    "decoders": [model, wide],
                    "bottleneck": 32,
                    "pooling_factors": [2],
                }
            },
            "data": {"kind": "pretrain"},
            "optim": {
                "lr_encoder": lr,
                "lr_projector": lr,
                "lr_special": lr,
                "final_lr": lr,
                "weight_decay": 0.1,
                "grad_accum": 2,
            },
            "decoder_order": "round_robin",
            "parallel": parallel,
            "fsdp_decoders": decoders,
            "device": "cpu",
            "steps": steps,
            "batch_size": GLOBAL_BATCH,
            "out_dir": str(out_dir),
            "checkpoint": {"every": 0},
            "eval": {"every": 2},
            "log": {"every": 1, "progress": False, "plot": False},
        }
    )


def make_trainer(config, runtime=None, seed: int = 0) -> Trainer:
    """As `arc-encoder train` builds it: under FSDP2 on several ranks, rank 1 holds the model on
    the meta device until its shards arrive from rank 0."""
    seed_everything(seed)
    runtime = runtime or Runtime(0, 1, torch.device("cpu"))
    arc = build_for_rank(config, runtime, log=lambda *_: None)
    rank, world = runtime.rank, runtime.world_size
    # each rank gets its slice of the same global batches
    data = TokenBatches(TEXTS, GLOBAL_BATCH, rank=rank, world_size=world)
    # held-out batches per decoder; rank 1 has fewer of them (an uneven shard)
    held_out = TokenBatches(TEXTS, GLOBAL_BATCH, "continuation", rank=rank, world_size=world)
    evals = [[held_out.batch(i) for i in range(2 - rank)], [held_out.batch(5)]]
    return Trainer(config, arc, data, evals, runtime=runtime)


def main(out: Path, model: str, wide: str) -> None:
    torch.set_num_threads(1)
    runtime = init_distributed("cpu")
    for parallel in MODES:
        first = make_trainer(distributed_config(out / parallel, model, wide, parallel, 2), runtime)
        first.fit()
        resumed = make_trainer(distributed_config(out / parallel, model, wide, parallel, 4), runtime, seed=99)
        resumed.resume()
        resumed.fit()
        save_file(ckpt.model_state(resumed.arc), str(out / f"{parallel}-rank{runtime.rank}.safetensors"))
        # how the frozen decoders were held: DTensor shards, or whole tensors on every rank
        kinds = sorted({type(p).__name__ for p in resumed.arc.decoders.parameters()})
        (out / f"{parallel}-rank{runtime.rank}-decoders.txt").write_text(",".join(kinds))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
