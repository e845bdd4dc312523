"""Small, restartable batch sources for trainer tests (the real pipelines live in arc_encoder.data)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

from arc_encoder.data.batch import Batch
from arc_encoder.model.splice import Sample

BOS = 1  # the tiny tokenizer's <bos>


def resumed_batches(make: Callable, before: int, after: int):
    """A data pipeline's batches before+1 .. before+after, run straight through (`expected`) and
    after saving its state at `before` (through a JSON round trip) and restoring it into a fresh
    pipeline (`resumed`); `make()` builds a pipeline. Returns (expected, resumed, state)."""
    straight = make()
    expected = [next(straight) for _ in range(before + after)][before:]
    first = make()
    [next(first) for _ in range(before)]
    state = json.loads(json.dumps(first.state_dict()))
    restored = make()
    restored.load_state_dict(state)
    return expected, [next(restored) for _ in range(after)], state


def tiny_run(tmp_path, tiny_models) -> dict:
    """A training config tree for a 3-step run of the tiny llama ARC model on a small text file
    (tmp_path/docs.txt) with the real pretraining pipeline; callers add or change sections."""
    from conftest import CORPUS

    docs = tmp_path / "docs.txt"
    docs.write_text("\n\n".join(CORPUS[:5] * 4) + "\n")
    model = tiny_models["llama"]
    return {
        "model": {
            "arc": {"backbone": model, "drop_layers": 1, "decoders": [model], "bottleneck": 32, "pooling_factors": [2]}
        },
        "data": {
            "kind": "pretrain",
            "sources": [str(docs)],
            "seq_len": 16,
            "compress_tokens": 8,
            "target_tokens": 8,
            "prefix": False,
        },
        "optim": {"lr_encoder": 1e-3, "lr_projector": 1e-3, "lr_special": 1e-3},
        "steps": 3,
        "batch_size": 2,
        "device": "cpu",
        "out_dir": str(tmp_path / "run"),
        "log": {"every": 1, "progress": False, "plot": False},
    }


def random_texts(n: int, length: int, low: int = 3, high: int = 35, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(low, high) for _ in range(length)] for _ in range(n)]


def reconstruction(tokens: list[int]) -> Sample:
    """Compress the tokens, then decode them back: [block][<bos> t0 t1 ...], all supervised."""
    text = [BOS] + tokens
    return Sample(text_ids=text, segments=[tokens], offsets=[0], targets=[True] * len(text))


def continuation(tokens: list[int]) -> Sample:
    """Compress the first half, predict the second half after it."""
    half = len(tokens) // 2
    text = [BOS] + tokens[half:]
    return Sample(text_ids=text, segments=[tokens[:half]], offsets=[0], targets=[False] + [True] * (len(text) - 1))


class TokenBatches:
    """Batches cycling over fixed texts. Global batch g holds texts g*B .. g*B+B-1 (mod n); rank r
    of W takes its W-th slice, so W ranks together see exactly what one rank with batch B sees."""

    def __init__(
        self,
        texts,
        batch_size: int = 4,
        task: str = "reconstruction",
        rank: int = 0,
        world_size: int = 1,
        fail_at: int | None = None,
    ):
        if batch_size % world_size:
            raise ValueError("batch_size must split evenly over ranks")
        self.texts, self.batch_size, self.task = texts, batch_size, task
        self.rank, self.world_size, self.fail_at = rank, world_size, fail_at
        self.position = 0  # global batches handed out

    def batch(self, g: int) -> Batch:
        per_rank = self.batch_size // self.world_size
        start = g * self.batch_size + self.rank * per_rank
        texts = [self.texts[(start + i) % len(self.texts)] for i in range(per_rank)]
        make = reconstruction if self.task == "reconstruction" else continuation
        return Batch([make(t) for t in texts], self.task)

    def next_batch(self, decoder: int = 0) -> Batch:
        """The next batch; every tiny model shares one tokenizer, so any decoder can read it."""
        if self.fail_at is not None and self.position == self.fail_at:
            raise KeyboardInterrupt(f"simulated kill before batch {self.position}")
        batch = self.batch(self.position)
        self.position += 1
        return batch

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


def write_sharp_model(path, seed: int = 0, hidden: int = 64, init: float = 0.2) -> str:
    """A tiny llama whose weights are large enough for its outputs to move far from uniform.

    With transformers' default init (std 0.02) the LM head caps every logit near 1, so the loss
    cannot fall much below log(vocab) whatever the inputs are; a trained model has no such cap.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from conftest import tiny_config, tiny_tokenizer

    config = tiny_config("llama", hidden=hidden)
    config.initializer_range = init
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)
