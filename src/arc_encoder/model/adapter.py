"""What each decoder owns: a projector and its special tokens (method.md §3).

The projector is two bias-free linear maps with no activation in between (encoder width ->
bottleneck -> decoder width). Being linear, `up(down(z))` lets a store keep only the bottleneck
`down(z)` and apply `up` when the vectors are used.

With `bottleneck=None` the projector is one linear map (encoder width -> decoder width) and the
store keeps the encoder's outputs themselves. A product of two small random maps learns its
strongest input direction first and the rest only much later (the incremental learning of deep
linear networks); the strongest direction of the encoder's output is the one every document
shares, so the product form can sit for a long time passing only that.
"""

from __future__ import annotations

import torch
from torch import nn

SPECIAL_KINDS = ("rec", "cont")  # <Rec> for reconstruction batches, <Cont> for everything else


class DecoderAdapter(nn.Module):
    def __init__(
        self,
        encoder_dim: int,
        bottleneck: int | None,
        decoder_dim: int,
        memory_tokens: int = 0,
        standardize: bool = False,
    ):
        super().__init__()
        if standardize:
            # Per-dimension mean and spread of the encoder's pooled outputs, measured once on
            # training text (training/projector_init.py) and then fixed. A few outlier
            # dimensions shared by every document carry most of the raw output's energy; removing
            # them leaves the projector only what differs between documents.
            self.register_buffer("input_mean", torch.zeros(encoder_dim))
            self.register_buffer("input_scale", torch.ones(encoder_dim))
            self.register_buffer("calibrated", torch.tensor(False))
        # down is the identity when there is no bottleneck: the stored vectors are the encoder's
        self.down = nn.Linear(encoder_dim, bottleneck, bias=False) if bottleneck else nn.Identity()
        self.vector_dim = bottleneck or encoder_dim  # width of the vectors a store keeps
        self.up = nn.Linear(self.vector_dim, decoder_dim, bias=False)
        # <Rec>, <Cont> live in encoder space and go through the projector like pooled vectors.
        # Two parameters, not one [2, d] table: the unused one then has no gradient, and AdamW
        # leaves it alone (weight decay included).
        self.rec = nn.Parameter(torch.ones(encoder_dim))
        self.cont = nn.Parameter(torch.ones(encoder_dim))
        self.memory = nn.Parameter(torch.ones(memory_tokens, encoder_dim)) if memory_tokens else None

    def projector_input(self, pooled: torch.Tensor) -> torch.Tensor:
        """What the first linear map reads: the pooled outputs, standardized if configured."""
        if hasattr(self, "input_mean"):
            pooled = (pooled - self.input_mean) / self.input_scale
        return pooled

    def compress(self, pooled: torch.Tensor) -> torch.Tensor:
        """[..., encoder_dim] -> [..., bottleneck]: the vectors a store keeps."""
        return self.down(self.projector_input(pooled))

    @torch.no_grad()
    def fit_linear(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Set the projector to the least-squares map from x [R, encoder_dim] (pooled outputs) to
        y [R, decoder_dim]; with a bottleneck, its best rank-`bottleneck` factorisation (truncated
        SVD, split evenly between the two maps). Returns R^2 of the fitted (factorised) map."""
        x = self.projector_input(x.float())
        w = torch.linalg.lstsq(x, y.float()).solution  # [d_e, d_dec]: x @ w ~ y
        if isinstance(self.down, nn.Identity):
            self.up.weight.copy_(w.T)
        else:
            u, s, vh = torch.linalg.svd(w, full_matrices=False)  # w = u diag(s) vh
            r = self.vector_dim
            root = s[:r].sqrt()
            self.down.weight.copy_((u[:, :r] * root).T)  # [r, d_e]
            self.up.weight.copy_((root[:, None] * vh[:r]).T)  # [d_dec, r]
        fitted = self.up(self.down(x))
        return 1.0 - float((fitted - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum())

    def special_bottleneck(self, kind: str) -> torch.Tensor:
        """[bottleneck] vector of <Rec> or <Cont>."""
        if kind not in SPECIAL_KINDS:
            raise ValueError(f"special token must be one of {SPECIAL_KINDS}, got {kind!r}")
        return self.down(getattr(self, kind))

    def expand(self, bottleneck: torch.Tensor) -> torch.Tensor:
        """[..., bottleneck] -> [..., decoder_dim]: what the decoder reads."""
        return self.up(bottleneck)
