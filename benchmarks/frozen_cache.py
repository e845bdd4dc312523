"""What `frozen_block_cache_mb` buys a step of the answers stage (configs/smollm2-arc4-answers.yaml).

The same N batches of the stage's data stream (warm start from the shipped model, its seed) are
trained three times from the same start: without the cache, with the cache empty (it fills as it
goes: every paragraph seen for the first time), and again with the cache full (every paragraph
read before, as 80% of a 600-step session's are). Each pass starts from the same weights and
optimizer state, so the steps compute the same things; only where the frozen blocks' output comes
from differs. Prints the median step time of each pass and the loss difference between them.

    python benchmarks/frozen_cache.py --steps 12 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from arc_encoder.loading import quiet_transformers
from arc_encoder.training.config import load_config
from arc_encoder.training.model_init import build_model
from arc_encoder.training.trainer import Runtime, Trainer, build_data


def timed_pass(trainer: Trainer, batches) -> tuple[list[float], list[float]]:
    times, losses = [], []
    for batch in batches:
        trainer.iterator = iter([batch])
        start = time.perf_counter()
        record = trainer.train_step(check=True)
        times.append(time.perf_counter() - start)
        losses.append(float(record["loss"]))
    return times, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/smollm2-arc4-answers.yaml")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-mb", type=float, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_transformers()
    config = load_config(args.config, [f"frozen_block_cache_mb={args.cache_mb}", "log.progress=false"])
    arc = build_model(config, log=lambda *_: None)
    stream = iter(build_data(config, arc, Runtime(0, 1, torch.device("cpu"))))
    batches = [next(stream) for _ in range(args.steps)]
    trainer = Trainer(config, arc, data=[])
    cache = arc.encoder.frozen_cache
    start = copy.deepcopy((arc.state_dict(), trainer.optimizer.state_dict(), trainer.scheduler.state_dict()))
    results = {}
    for name in ("no cache", "cache filling", "cache full"):
        weights, optimizer, scheduler = copy.deepcopy(start)
        arc.load_state_dict(weights)
        trainer.optimizer.load_state_dict(optimizer)
        trainer.scheduler.load_state_dict(scheduler)
        trainer.step = 0
        arc.encoder.frozen_cache = None if name == "no cache" else cache
        hits = cache.hits
        times, losses = timed_pass(trainer, batches)
        results[name] = {
            "median_s": statistics.median(times),
            "losses": losses,
            "hit_rate": (cache.hits - hits) / sum(len(s.segments) for b in batches for s in b.samples)
            if name != "no cache"
            else 0.0,
        }
        print(f"{name}: median step {results[name]['median_s']:.2f} s, hit rate {results[name]['hit_rate']:.0%}")
    base = results["no cache"]
    for name in ("cache filling", "cache full"):
        diff = max(abs(a - b) for a, b in zip(results[name]["losses"], base["losses"]))
        speedup = base["median_s"] / results[name]["median_s"]
        print(f"{name}: {speedup:.2f}x the steps/s, largest loss difference {diff:.2e}")
    print(f"cache: {json.dumps(cache.stats())}")


if __name__ == "__main__":
    main()
