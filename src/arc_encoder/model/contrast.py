"""A loss that pays for the content gap directly.

The cross-entropy of text read after a document's vectors mixes two things: what every document's
vectors do (tell the decoder a document is there, in the format it expects) and what this
document's vectors say. At the start of training the first dominates the gradient, and a projector
learns the format and, for hundreds of steps, none of the content (docs/experiments.md). The
content gap (the loss with another sample's document minus the loss with the right one, per token)
has no gradient along anything the two documents share; a hinge on it adds that pull:

    loss = CE(right) + weight * n * max(0, margin - (CE(mismatched) / n' - CE(right) / n))

CE summed over the supervised tokens (n of them with the right document, n' with the swapped
one: the same text, so n' = n unless a block length moves a token out of the window). Once the
right document is worth `margin` nats per token the hinge is silent and the cross-entropy alone
trains. The mismatched samples (each sample's last document swapped for the next sample's,
splice.mismatched) go through the decoder in the same forward as the right ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Contrast:
    weight: float  # of the hinge, against the summed cross-entropy
    margin: float  # nats per supervised token the right document should be worth

    def __post_init__(self):
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"contrast needs a finite weight > 0, got {self.weight}")
        if not (math.isfinite(self.margin) and self.margin > 0):
            raise ValueError(f"contrast needs a finite margin > 0 (nats per token), got {self.margin}")


def contrastive_loss(
    token_losses: torch.Tensor, sample_of_token: list[int], right_samples: int, contrast: Contrast
) -> tuple[torch.Tensor, int]:
    """token_losses [T]: cross-entropy of each supervised token of a batch whose first
    `right_samples` samples read their own documents and the rest the swapped ones;
    sample_of_token: the sample of each. Returns (loss sum, supervised tokens of the right samples)."""
    right = torch.tensor([i < right_samples for i in sample_of_token], device=token_losses.device)
    n_right, n_swapped = int(right.sum()), int((~right).sum())
    if n_right == 0 or n_swapped == 0:
        raise ValueError("the contrastive loss needs supervised tokens with the right and the swapped documents")
    ce_right = token_losses[right].sum()
    gap = token_losses[~right].sum() / n_swapped - ce_right / n_right  # nats per token
    return ce_right + contrast.weight * n_right * torch.relu(contrast.margin - gap), n_right
