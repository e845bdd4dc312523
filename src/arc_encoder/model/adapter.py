"""What each decoder owns: a projector and its special tokens (spec 3).

The projector is two bias-free linear maps with no activation in between (encoder width ->
bottleneck -> decoder width). Being linear, `up(down(z))` lets a store keep only the bottleneck
`down(z)` and apply `up` when the vectors are used.
"""

from __future__ import annotations

import torch
from torch import nn

REC, CONT = 0, 1  # rows of `special`: <Rec> for reconstruction, <Cont> for everything else
SPECIAL_KINDS = {"rec": REC, "cont": CONT}


class DecoderAdapter(nn.Module):
    def __init__(self, encoder_dim: int, bottleneck: int, decoder_dim: int, memory_tokens: int = 0):
        super().__init__()
        self.down = nn.Linear(encoder_dim, bottleneck, bias=False)
        self.up = nn.Linear(bottleneck, decoder_dim, bias=False)
        # <Rec>, <Cont> live in encoder space and go through the projector like pooled vectors.
        self.special = nn.Parameter(torch.ones(2, encoder_dim))
        self.memory = nn.Parameter(torch.ones(memory_tokens, encoder_dim)) if memory_tokens else None

    def compress(self, pooled: torch.Tensor) -> torch.Tensor:
        """[..., encoder_dim] -> [..., bottleneck]: the vectors a store keeps."""
        return self.down(pooled)

    def special_bottleneck(self, kind: str) -> torch.Tensor:
        """[bottleneck] vector of <Rec> or <Cont>."""
        return self.down(self.special[SPECIAL_KINDS[kind]])

    def expand(self, bottleneck: torch.Tensor) -> torch.Tensor:
        """[..., bottleneck] -> [..., decoder_dim]: what the decoder reads."""
        return self.up(bottleneck)
