"""`arc-encoder distill-cache CONFIG`: the teacher's top-k logits for every sample a run will draw.

    arc-encoder distill-cache configs/my-run.yaml distill.cache=runs/teacher-k32 distill.k=32
    arc-encoder train configs/my-run.yaml distill.cache=runs/teacher-k32

The builder reads the run's own data pipeline (same config, seed and decoder choice per step, for
`steps` x `grad_accum` batches of each rank), and for every batch of a distilled task
(`distill.tasks`) it runs the frozen decoder on the raw documents and keeps its k largest logits
per supervised token (model/teacher_cache.py). Samples already cached are skipped, so a cache can
be extended for a longer run, and is shared by every run that draws the same samples (the teacher
does not depend on the encoder). Training with `distill.cache` then reads those logits instead of
running the teacher: one decoder forward less per distilled batch.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tqdm import tqdm

from ..model.distill import teacher_top_k
from ..model.teacher_cache import TeacherCache
from .config import TrainConfig, load_config
from .distributed import Runtime, pick_device
from .model_init import build_model
from .run_teacher_cache import data_fingerprints, decoder_fingerprints
from .trainer import build_data, choose_decoder


def build_teacher_cache(
    config: TrainConfig, steps: int | None = None, world_size: int = 1, progress: bool = True, log=print
) -> dict[str, int]:
    """Cache the teacher's top-k for the batches of `steps` optimizer steps (default: the
    config's) of each of `world_size` ranks. Returns counts: samples cached, already there, batches."""
    d = config.distill
    if not d.cache:
        raise ValueError("distill.cache must name the folder to write the teacher's logits to")
    steps = config.steps if steps is None else steps
    if steps < 1 or world_size < 1:
        raise ValueError(f"steps and world_size must be >= 1, got {steps} and {world_size}")
    # on the run's device (a GPU when there is one, `device: auto`); the teacher runs in float32
    arc = build_model(config, log=log).eval().to(pick_device(config.device))
    vocab = min(dec.get_output_embeddings().weight.shape[0] for dec in arc.decoders)
    if d.k > vocab:
        raise ValueError(f"distill.k={d.k} is more than the decoder's {vocab} tokens")
    cache = TeacherCache.create(d.cache, decoder_fingerprints(arc), data_fingerprints(config), d.k)
    weights = config.decoder_weights or [1.0] * len(arc.decoders)
    counts = {"cached": 0, "present": 0, "batches": 0}
    started = time.perf_counter()
    bar = tqdm(total=steps * world_size, desc="teacher logits", disable=not progress, dynamic_ncols=True)
    for rank in range(world_size):
        data = build_data(config, arc, Runtime(rank, world_size, arc.device))
        for step in range(steps):
            decoder = choose_decoder(step, weights, config.decoder_order, config.seed)
            for _ in range(config.optim.grad_accum):
                batch = data.next_batch(decoder)
                counts["batches"] += 1
                if batch.task not in d.tasks:
                    continue
                missing = [s for s in batch.samples if s.segments and not cache.has(s, decoder)]
                counts["present"] += len(batch.samples) - len(missing)
                if missing:
                    for sample, top in zip(missing, teacher_top_k(arc, missing, decoder, d.k)):
                        cache.put(sample, decoder, *top)
                    counts["cached"] += len(missing)
            bar.update(1)
            bar.set_postfix(cached=counts["cached"], present=counts["present"])
    bar.close()
    log(
        f"{cache.path}: {counts['cached']} samples cached, {counts['present']} already there, "
        f"{counts['batches']} batches read in {time.perf_counter() - started:.0f} s"
    )
    return counts


def distill_cache_command(config_path: Path, overrides: list[str], steps: int | None, world_size: int) -> int:
    """Exit status: 0 built, 2 a bad config or a cache built for something else."""
    try:
        config = load_config(config_path, overrides)
        build_teacher_cache(config, steps, world_size)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
