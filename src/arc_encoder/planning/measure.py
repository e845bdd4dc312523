"""What a step really allocates, to check the plan against: the peak of the bytes a function
allocates beyond what was already held, read from the CPU profiler's memory record (every
allocation and free, in time order), or from the CUDA allocator's peak on a GPU."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from ..model.splice import Sample
from .shapes import StepShape


def peak_allocated_bytes(fn: Callable[[], None], device: torch.device) -> int:
    """Peak bytes allocated while `fn` runs, beyond those held when it starts."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    records = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    held = peak = 0
    for record in sorted(records, key=lambda e: e.start_ns()):
        held += record.nbytes()  # negative for a free
        peak = max(peak, held)
    return peak


def continuation_samples(shape: StepShape, prefix: int, vocab: int, seed: int = 0) -> list[Sample]:
    """Pretraining continuation samples of exactly `shape`: `prefix` text tokens, one compressed
    segment, then the supervised continuation (random token ids from 3 up, clear of pad/bos/eos)."""
    rng = random.Random(seed)
    target = shape.loss_tokens // shape.rows

    def ids(n: int) -> list[int]:
        return [rng.randrange(3, vocab) for _ in range(n)]

    return [
        Sample(ids(prefix + target), [ids(shape.segment_tokens)], [prefix], [False] * prefix + [True] * target)
        for _ in range(shape.rows)
    ]
