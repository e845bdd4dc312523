"""Run under torchrun by test_train_distributed: a weight made non-finite on rank 1 only, after an
optimizer step, with DDP (fp32) and then FSDP2 (bf16: autocast, bf16 frozen decoders, bf16
all-gathers over fp32 shards); then a time limit that passes on rank 1 alone. Each rank writes what
stopped it, and the dtypes it saw; the process group times out after 60 s, so a rank left waiting
for the other fails instead of hanging the test."""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arc_encoder.training import trainer as trainer_module  # noqa: E402
from arc_encoder.training.distributed import init_distributed  # noqa: E402
from arc_encoder.training.trainer import TrainingDiverged  # noqa: E402
from train_worker import distributed_config, make_trainer  # noqa: E402

PLANTED = "adapters.0.up.weight"  # [64, 32]: under FSDP2 each rank holds 32 of its rows


def plant_nan_on_rank_1(trainer, at_step: int) -> None:
    """After the optimizer step of step `at_step` (1-based), rank 1 alone sets one value of its
    own copy (DDP) or shard (FSDP2) of PLANTED to NaN."""
    real_step = trainer.optimizer.step
    param = dict(trainer.arc.named_parameters())[PLANTED]

    def step(*args, **kwargs):
        out = real_step(*args, **kwargs)
        if trainer.runtime.rank == 1 and trainer.step == at_step - 1:
            with torch.no_grad():
                local = param.to_local() if hasattr(param, "to_local") else param
                local.view(-1)[0] = float("nan")
        return out

    trainer.optimizer.step = step


def record_dtypes(trainer) -> dict:
    """The dtype of adapter 0's projector as the forward reads it (FSDP2: the gathered copy), and
    of the weights and AdamW moments the optimizer updates."""
    seen = {}
    arc, blocks = trainer.arc, trainer.arc.decoder_blocks

    def spy(chunks, decoder, special):
        seen["forward"] = str(arc.adapters[decoder].up.weight.dtype)
        return blocks(chunks, decoder, special)

    arc.decoder_blocks = spy
    seen["decoders"] = sorted({str(p.dtype) for p in arc.decoders.parameters()})
    return seen


def clock_late_on_rank_1(trainer, from_step: int):
    """A clock module whose perf_counter jumps an hour ahead on rank 1 once `from_step` steps are
    done: rank 1 alone finds the time limit passed."""
    real = time.perf_counter

    class Clock:
        @staticmethod
        def perf_counter():
            late = trainer.runtime.rank == 1 and trainer.step >= from_step
            return real() + (3600.0 if late else 0.0)

    return Clock


def main(out: Path, model: str, wide: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    runtime = init_distributed("cpu")
    for parallel in ("ddp", "fsdp"):
        config = distributed_config(out / parallel, model, wide, parallel, 4)
        config.eval.every = 0
        if parallel == "fsdp":
            config.precision, config.decoder_dtype = "bf16", "bf16"
        trainer = make_trainer(config, runtime)
        plant_nan_on_rank_1(trainer, at_step=2)
        dtypes = record_dtypes(trainer)
        try:
            trainer.fit()
            outcome = "finished"
        except TrainingDiverged as e:
            outcome = f"TrainingDiverged: {e}"
        except Exception as e:  # a collective that timed out waiting for the other rank
            outcome = f"{type(e).__name__}: {e}"
        dtypes["trained"] = sorted({str(p.dtype) for p in trainer.trainable})
        dtypes["moments"] = sorted({str(s["exp_avg"].dtype) for s in trainer.optimizer.state.values()})
        (out / f"{parallel}-rank{runtime.rank}.txt").write_text(outcome)
        (out / f"{parallel}-rank{runtime.rank}.json").write_text(json.dumps(dtypes))
        dist.barrier()
    # the time limit passed on rank 1 alone after step 1: both ranks must stop at the same step
    config = distributed_config(out / "time", model, wide, "ddp", 8)
    config.eval.every, config.log.every, config.time_limit_minutes = 0, 2, 30.0
    trainer = make_trainer(config, runtime)
    trainer_module.time = clock_late_on_rank_1(trainer, from_step=1)
    try:
        trainer.fit()
        outcome = f"stopped at step {trainer.step}"
    except Exception as e:  # a collective that timed out waiting for the other rank
        outcome = f"{type(e).__name__}: {e}"
    finally:
        trainer_module.time = time
    (out / f"time-rank{runtime.rank}.txt").write_text(outcome)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
