"""The frozen lower blocks' outputs, kept per segment across training steps.

When only the encoder's last blocks train (`train_encoder_blocks`, or a frozen encoder), the
embeddings and the blocks below them compute the same output for the same segment at every step.
A few-shot QA stream reads each paragraph many times (about five questions per SQuAD paragraph,
and the shots' paragraphs besides), so the trainer can keep those outputs and run only the trained
blocks on a segment it has seen: the forward pass of the frozen blocks is a large share of a CPU
step. Each segment's own attention sees only that segment (positions 0..n-1), so its output does
not depend on the batch it came in, up to float rounding of a differently padded matmul.

    segments (token ids) -> cached [n_s, d] or frozen blocks on the misses -> right-padded [S, N, d]

The store is least-recently-used, bounded in megabytes, and lives on the encoder's device.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch.nn.utils.rnn import pad_sequence


class FrozenBlockCache:
    def __init__(self, blocks: int, max_mb: float):
        if blocks < 1:
            raise ValueError(f"a frozen-block cache needs at least one frozen block, got {blocks}")
        if not max_mb > 0:
            raise ValueError(f"a frozen-block cache needs a positive size in MB, got {max_mb}")
        self.blocks = blocks  # the encoder's first `blocks` blocks (and its embeddings) are frozen
        self.max_bytes = int(max_mb * 2**20)
        self._store: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    @torch.no_grad()
    def hidden(self, encoder, segments: list[list[int]], pad_id: int) -> torch.Tensor:
        """The residual stream after the frozen blocks for each segment, right-padded [S, N, d]."""
        keys = [tuple(s) for s in segments]
        missing = list(dict.fromkeys(k for k in keys if k not in self._store))  # unique, in order
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        computed = self._compute(encoder, missing, pad_id) if missing else {}
        for key in keys:
            if key in self._store:
                self._store.move_to_end(key)
        rows = [computed[k] if k in computed else self._store[k] for k in keys]  # [n_s, d] each
        for key, h in computed.items():
            self._keep(key, h)
        return pad_sequence(rows, batch_first=True)  # [S, N, d], zeros after each segment

    def _compute(self, encoder, keys: list[tuple[int, ...]], pad_id: int) -> dict[tuple[int, ...], torch.Tensor]:
        """Embeddings and the frozen blocks on the segments not kept yet: {segment: [n, d]}."""
        lengths = [len(k) for k in keys]
        h = encoder.embed_tokens(encoder.padded_ids(keys, pad_id))  # [S', N', d]
        for layer, layer_type in zip(list(encoder.layers)[: self.blocks], encoder.layer_types):
            h = encoder._plain_block(layer, layer_type, h, lengths)
        return {key: h[i, : len(key)].clone() for i, key in enumerate(keys)}

    def _keep(self, key: tuple[int, ...], h: torch.Tensor) -> None:
        size = h.numel() * h.element_size()
        if size > self.max_bytes:
            return
        self._store[key] = h
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self._store.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()

    def stats(self) -> dict[str, float]:
        """Segments kept, their megabytes, and the share of lookups that found one."""
        looked = self.hits + self.misses
        return {
            "segments": len(self._store),
            "mb": self.bytes / 2**20,
            "hit_rate": self.hits / looked if looked else 0.0,
        }
