"""The shared start of a batch's prompts (few-shot examples), run once through the decoder and
kept: later batches that start the same way reuse its keys and values."""

from __future__ import annotations

import torch

from .decoder import (
    SharedPrefix,
    batch_cache,
    cache_bytes,
    common_prefix_length,
    shared_prefix_cache,
    shared_start,
    shares_prefixes,
)
from .splice import splice

# Shorter shared prompt starts are not worth a separate decoder call.
MIN_SHARED_PREFIX = 16
# Largest shared-prefix cache kept between generate() calls (keys and values of every layer).
MEMO_MAX_BYTES = 512 * 2**20


class PrefixMemo:
    def __init__(self):
        # (decoder index, prefix embeddings [P, d], their keys/values), or None
        self.entry: tuple[int, torch.Tensor, SharedPrefix] | None = None

    def split(self, dec, decoder: int, batch):
        """Left-padded batch -> (suffix embeds [B, S, d], mask over prefix + suffix [B, P + S],
        suffix positions [B, S], cache holding the shared prefix's keys and values).

        The prefix is the memo's when every prompt starts with it, else what this batch's prompts
        share, cut to what they share with the memo when that is long enough: a first batch whose
        questions happen to share a paragraph must not leave a memo no later batch matches. Under
        MIN_SHARED_PREFIX positions nothing is split (cache None)."""
        whole = batch.embeds, batch.attention_mask, batch.position_ids, None
        if not shares_prefixes(dec):
            return whole
        real = batch.attention_mask.bool()
        rows = [batch.embeds[i][real[i]] for i in range(real.shape[0])]  # [n_i, d] each
        memo = self.entry
        if memo is not None and (
            memo[0] != decoder or memo[1].device != rows[0].device or memo[1].dtype != rows[0].dtype
        ):
            memo = None
        if memo is not None and all(
            r.shape[0] > memo[1].shape[0] and torch.equal(r[: memo[1].shape[0]], memo[1]) for r in rows
        ):
            _, prefix, shared = memo
        else:
            P = common_prefix_length(rows) if len(rows) > 1 else 0
            if memo is not None and shared_start(memo[1], rows[0][:P]) >= MIN_SHARED_PREFIX:
                P = shared_start(memo[1], rows[0][:P])
            if P < MIN_SHARED_PREFIX:
                return whole
            prefix = rows[0][:P]
            shared = shared_prefix_cache(dec, prefix)
            # kept for later batches unless large (long prompts of big models): then this batch only
            self.entry = (decoder, prefix, shared) if cache_bytes(shared) <= MEMO_MAX_BYTES else None
        P = prefix.shape[0]
        suffix = splice([r[P:] for r in rows], [[] for _ in rows], [[] for _ in rows], left_pad=True)
        mask = torch.cat([suffix.attention_mask.new_ones(len(rows), P), suffix.attention_mask], dim=1)
        return suffix.embeds, mask, suffix.position_ids + P, batch_cache(dec, shared, len(rows))
