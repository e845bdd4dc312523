"""Which encoder positions are pooled together, and how (method.md §2.3, §2.4).

A segment of n tokens pooled by factor p becomes m = ceil(n/p) vectors (one if n < p). Group sizes
are as equal as possible with the remainder spread over the *front* groups, so there is never a
short tail group: n=9, p=8 -> [5, 4]; n=25, p=8 -> [7, 6, 6, 6].
"""

from __future__ import annotations

from itertools import accumulate

import torch


def group_sizes(n: int, factor: int) -> list[int]:
    """Sizes of the consecutive groups that pooling by `factor` makes of `n` tokens."""
    if n < 1:
        raise ValueError(f"cannot pool an empty segment (n={n})")
    if factor < 1:
        raise ValueError(f"pooling factor must be >= 1, got {factor}")
    if n < factor:
        return [n]
    groups = -(-n // factor)  # ceil(n / factor)
    base, extra = divmod(n, groups)
    return [base + 1] * extra + [base] * (groups - extra)


def pooled_length(n: int, factor: int) -> int:
    return len(group_sizes(n, factor))


def group_index(lengths: list[int], factor: int) -> tuple[list[list[int]], list[int]]:
    """Per segment, the group id of each token, and the number of groups."""
    ids, counts = [], []
    for n in lengths:
        sizes = group_sizes(n, factor)
        ids.append([g for g, size in enumerate(sizes) for _ in range(size)])
        counts.append(len(sizes))
    return ids, counts


def pool(hidden: torch.Tensor, lengths: list[int], factor: int, mode: str = "mean"):
    """Pool each segment's positions in groups.

    hidden: [B, N, d] right-padded, segment b real up to lengths[b].
    Returns pooled [B, M, d] (right-padded, M = max groups), the new lengths, and for each segment
    the index of the last token of every group (the causal variant needs it).
    """
    B, N, d = hidden.shape
    ids, counts = group_index(lengths, factor)
    M = max(counts)
    # One flat scatter for the whole batch: token (b, t) goes to pooled slot b*M + group.
    target = torch.full((B, N), B * M, dtype=torch.long)  # padding goes to a dump row
    for b, row in enumerate(ids):
        target[b, : len(row)] = torch.tensor(row) + b * M
    target = target.to(hidden.device).view(-1)
    ends = [[e - 1 for e in accumulate(group_sizes(n, factor))] for n in lengths]  # host ints: no tensor read
    if mode == "mean":
        summed = hidden.new_zeros(B * M + 1, d).index_add(0, target, hidden.reshape(B * N, d))
        sizes = torch.bincount(target, minlength=B * M + 1).clamp(min=1).to(hidden.dtype)
        pooled = summed / sizes[:, None]
    elif mode == "last":
        last = torch.tensor([b * N + e for b, seg in enumerate(ends) for e in seg], device=hidden.device)
        slots = torch.tensor([b * M + g for b, seg in enumerate(ends) for g in range(len(seg))], device=hidden.device)
        pooled = hidden.new_zeros(B * M + 1, d).index_copy(0, slots, hidden.reshape(B * N, d)[last])
    else:
        raise ValueError(f"unknown pooling mode {mode!r}; expected 'mean' or 'last'")
    return pooled[: B * M].view(B, M, d), counts, ends
