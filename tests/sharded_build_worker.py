"""Run under torchrun by test_sharded_build: an FSDP2 model built from rank 0's weights (rank 1
builds it on the meta device), frozen decoders sharded and then replicated. Each rank writes how
it held the model before sharding and the loss of one step; rank 0 writes the full state gathered
from the shards, every rank its buffers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arc_encoder.training.distributed import init_distributed  # noqa: E402
from arc_encoder.training.sharded_build import build_for_rank  # noqa: E402
from arc_encoder.training.trainer import Trainer, seed_everything  # noqa: E402
from train_worker import GLOBAL_BATCH, TEXTS, distributed_config  # noqa: E402
from training_data import TokenBatches  # noqa: E402


def owned(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies safetensors can write (tied tensors share storage)."""
    return {name: t.detach().clone().contiguous() for name, t in tensors.items()}


def main(out: Path, model: str, wide: str) -> None:
    torch.set_num_threads(1)
    runtime = init_distributed("cpu")
    for mode in ("fsdp", "fsdp-replicate"):
        config = distributed_config(out / mode, model, wide, mode, 1)
        config.eval.every = 0
        seed_everything(0)
        arc = build_for_rank(config, runtime, log=lambda *_: None)
        before = {
            "devices": sorted({t.device.type for t in (*arc.parameters(), *arc.buffers())}),
            "bytes": sum(t.untyped_storage().nbytes() for t in arc.parameters() if not t.is_meta),
        }
        data = TokenBatches(TEXTS, GLOBAL_BATCH, rank=runtime.rank, world_size=runtime.world_size)
        trainer = Trainer(config, arc, data, None, runtime)
        local = [p.to_local() if hasattr(p, "to_local") else p for p in arc.parameters()]
        after = {"local_elements": sum(t.numel() for t in local)}
        full = get_model_state_dict(arc, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if runtime.is_main:
            save_file(owned(full), str(out / f"{mode}-state.safetensors"))
        save_file(owned(dict(arc.named_buffers())), str(out / f"{mode}-rank{runtime.rank}-buffers.safetensors"))
        loss = trainer.train_step()["loss"]
        record = {"before": before, "after": after, "loss": loss}
        (out / f"{mode}-rank{runtime.rank}.json").write_text(json.dumps(record))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
