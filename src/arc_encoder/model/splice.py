"""Splicing compressed blocks into a decoder's input embeddings (method.md §4).

A sample is a text stream (decoder token ids) plus compressed blocks, each placed after a given
number of text tokens. Offsets here are *absolute* (tokens of text before the block), unlike the
official code's relative offsets; equal offsets put blocks back to back (chunked documents).

    text  = t0 t1 t2 t3 t4, blocks A (2 vectors) at 2, B (1 vector) at 2
    spliced = t0 t1 A A B t2 t3 t4        positions 0..7, contiguous through the vectors

Loss: a supervised text token is predicted by whatever sits just before it in the spliced
sequence. With `supervise_first_token` (paper, method.md §13.7) that may be a block's last vector
(its <Cont>/<Rec>); without it (official code) text tokens right after a block are not predicted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Sample:
    """One decoder sequence with compressed segments, as data builders and prompts produce it."""

    text_ids: list[int]  # decoder token ids of the text stream
    segments: list[list[int]]  # encoder token ids of each compressed segment, in order
    offsets: list[int]  # per segment: text tokens before it (non-decreasing)
    targets: list[bool] | None = None  # per text token: does it carry loss?

    def __post_init__(self):
        if len(self.segments) != len(self.offsets):
            raise ValueError(f"{len(self.segments)} segments but {len(self.offsets)} offsets")
        if any(b < a for a, b in zip(self.offsets, self.offsets[1:])):
            raise ValueError(f"offsets must be non-decreasing, got {self.offsets}")
        if self.offsets and not 0 <= self.offsets[-1] <= len(self.text_ids):
            raise ValueError(f"offset {self.offsets[-1]} is outside a text of {len(self.text_ids)} tokens")
        if self.targets is not None and len(self.targets) != len(self.text_ids):
            raise ValueError(f"{len(self.targets)} targets for {len(self.text_ids)} text tokens")


def mismatched(samples: list[Sample]) -> list[Sample]:
    """Each sample's last segment swapped for the next sample's that differs (wrapping around)."""
    out = []
    for i, s in enumerate(samples):
        others = (samples[(i + k) % len(samples)] for k in range(1, len(samples)))
        other = next((o for o in others if o.segments and o.segments[-1] != s.segments[-1]), None)
        if other is None:
            raise ValueError("every sample of the batch has the same document: nothing to swap in")
        out.append(Sample(s.text_ids, s.segments[:-1] + [other.segments[-1]], s.offsets, s.targets))
    return out


@dataclass
class SplicedBatch:
    embeds: torch.Tensor  # [B, L, d] decoder input embeddings
    attention_mask: torch.Tensor  # [B, L] 1 = real, 0 = padding
    position_ids: torch.Tensor  # [B, L] 0.. over each sample's real positions
    text_positions: list[list[int]]  # per sample, spliced position of each text token
    block_positions: list[list[int]]  # per sample, spliced position where each block starts
    spans: list[tuple[int, int]]  # per sample, (first real position, real positions): host ints


def splice(
    text_embeds: list[torch.Tensor],
    blocks: list[list[torch.Tensor]],
    offsets: list[list[int]],
    left_pad: bool = False,
) -> SplicedBatch:
    """Interleave text embeddings [s_i, d] with blocks [k, d] at the given text offsets, and pad.

    Blocks take the text embeddings' dtype, the decoder's: a float32 adapter's output enters a
    bfloat16 decoder in bfloat16 (the cast is differentiable, so gradients reach the adapter)."""
    rows, text_positions, block_positions = [], [], []
    for text, sample_blocks, sample_offsets in zip(text_embeds, blocks, offsets):
        pieces, tpos, bpos, cursor, length = [], [], [], 0, 0
        for block, offset in zip(sample_blocks, sample_offsets):
            pieces.append(text[cursor:offset])
            tpos.extend(range(length, length + offset - cursor))
            length += offset - cursor
            bpos.append(length)
            pieces.append(block.to(text.dtype))
            length += block.shape[0]
            cursor = offset
        pieces.append(text[cursor:])
        tpos.extend(range(length, length + text.shape[0] - cursor))
        rows.append(torch.cat(pieces))
        text_positions.append(tpos)
        block_positions.append(bpos)

    B, L = len(rows), max(r.shape[0] for r in rows)
    d = rows[0].shape[-1]
    embeds = rows[0].new_zeros(B, L, d)
    mask = torch.zeros(B, L, dtype=torch.long)
    positions = torch.zeros(B, L, dtype=torch.long)
    spans = []
    for i, row in enumerate(rows):
        n = row.shape[0]
        start = L - n if left_pad else 0
        embeds[i, start : start + n] = row
        mask[i, start : start + n] = 1
        positions[i, start : start + n] = torch.arange(n)
        text_positions[i] = [p + start for p in text_positions[i]]
        block_positions[i] = [p + start for p in block_positions[i]]
        spans.append((start, n))
    device = embeds.device
    return SplicedBatch(embeds, mask.to(device), positions.to(device), text_positions, block_positions, spans)


def loss_positions(
    batch: SplicedBatch, samples: list[Sample], supervise_first_token: bool
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """Flat indices into [B*L] of the positions that predict a supervised token, those tokens,
    and which they are: (sample i, text token k) per row."""
    L = batch.embeds.shape[1]
    index, labels, tokens = [], [], []
    for i, sample in enumerate(samples):
        if sample.targets is None:
            continue
        tpos = batch.text_positions[i]
        start, n = batch.spans[i]  # the host's record of the real positions: no mask read back
        for k, (token, supervised) in enumerate(zip(sample.text_ids, sample.targets)):
            pos = tpos[k]
            if not supervised or pos == 0 or not start <= pos - 1 < start + n:  # nothing before it
                continue
            after_block = k == 0 or tpos[k - 1] != pos - 1
            if after_block and not supervise_first_token:
                continue
            index.append(i * L + pos - 1)
            labels.append(token)
            tokens.append((i, k))
    device = batch.embeds.device
    return (
        torch.tensor(index, dtype=torch.long, device=device),
        torch.tensor(labels, dtype=torch.long, device=device),
        tokens,
    )
