"""Batches drawn from several pipelines by share: a training config's `data` and `data_mix`.

An answers stage learns what answers need and lets the rest of the document go (greedy
reconstruction falls as answers rise). Mixing in a share of batches of another kind, for
instance reading batches (lookup, cloze, reconstruction) cut from the same paragraphs, asks the
vectors to keep the words too, at the cost of those steps' answers:

    data:      {kind: finetune, sources: [squad/train.jsonl], ...}     # share 1 - 0.2
    data_mix:  [{kind: pretrain, share: 0.2, sources: [squad/train.jsonl], text_field: context,
                 objectives: {lookup: 1.0}, ...}]

Each `next_batch` draws one pipeline by share and returns its next batch, so every batch stays
of one task (the trainer's rule). The draw has its own generator, per rank, saved with the
pipelines' positions: a resumed run draws the same pipelines in the same order.
"""

from __future__ import annotations

import random

from .batch import Batch
from .resume import rng_state, set_rng_state


class DataMixture:
    def __init__(self, pipelines: list, shares: list[float], rng: random.Random):
        if len(pipelines) != len(shares) or len(pipelines) < 2:
            raise ValueError("a data mixture needs at least two pipelines and one share per pipeline")
        if any(not 0 < s < 1 for s in shares) or abs(sum(shares) - 1) > 1e-9:
            raise ValueError(f"data mixture shares must each lie in (0, 1) and sum to 1, got {shares}")
        self.pipelines, self.shares, self.rng = pipelines, list(shares), rng
        self.drawn = [0] * len(pipelines)  # batches served by each pipeline

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        return self.next_batch(0)

    def next_batch(self, decoder: int = 0) -> Batch:
        i = self.rng.choices(range(len(self.pipelines)), self.shares)[0]
        self.drawn[i] += 1
        return self.pipelines[i].next_batch(decoder)

    def state_dict(self) -> dict:
        return {
            "shares": list(self.shares),
            "rng": rng_state(self.rng),
            "drawn": list(self.drawn),
            "pipelines": [p.state_dict() for p in self.pipelines],
        }

    def load_state_dict(self, state: dict) -> None:
        if "pipelines" not in state:
            raise ValueError("data state was saved by a single pipeline; this run mixes several (data_mix)")
        if len(state["pipelines"]) != len(self.pipelines) or state["shares"] != self.shares:
            raise ValueError(
                f"data state was saved for pipelines with shares {state['shares']}, this run has {self.shares}; "
                "resuming would not continue the same mixture"
            )
        set_rng_state(self.rng, state["rng"])
        self.drawn = list(state["drawn"])
        for pipeline, saved in zip(self.pipelines, state["pipelines"]):
            pipeline.load_state_dict(saved)
