"""Where the projectors start, before the first step of a fresh run (trainer.prepare_projectors).

- Standardizing projectors (`projector_input: standardize`) measure the per-dimension mean and
  spread of the pooled encoder outputs once, on a few training segments, and keep them fixed.
- `projector_init: lstsq` starts every projector from the least-squares map from the encoder's
  output at each token to the decoder's embedding of that token: a frozen decoder then reads the
  vectors as its own tokens from step 0.
"""

from __future__ import annotations

import torch

from ..model.arc import ARCModel


def pooled_rows(arc: ARCModel, adapter, segments: list[list[int]], batch_size: int) -> torch.Tensor:
    """Every pooled encoder output of these segments (encoder token ids), one row each: [R, d_e]."""
    rows = []
    for start in range(0, len(segments), batch_size):
        pooled, counts = arc.pooled_outputs(segments[start : start + batch_size], adapter)
        rows += [pooled[i, :m] for i, m in enumerate(counts)]
    return torch.cat(rows).float()


@torch.no_grad()
def calibrate_projector_inputs(arc: ARCModel, segments: list[list[int]], batch_size: int = 16) -> bool:
    """Measure the per-dimension mean and spread of the pooled encoder outputs on these
    segments (encoder token ids) for every adapter that standardizes its input and has not
    been calibrated. Returns whether any adapter was."""
    todo = [a for a in arc.adapters if hasattr(a, "calibrated") and not bool(a.calibrated)]
    if not todo:
        return False
    if not segments:
        raise ValueError("calibrating the projector inputs needs at least one segment")
    for adapter in todo:
        pooled = pooled_rows(arc, adapter, segments, batch_size)  # [R, d_e]
        adapter.input_mean.copy_(pooled.mean(0))
        adapter.input_scale.copy_(pooled.std(0, correction=0).clamp(min=1e-3))
        adapter.calibrated.fill_(True)
    return True


@torch.no_grad()
def fit_projectors_to_embeddings(arc: ARCModel, segments: list[list[int]], batch_size: int = 16) -> dict[int, float]:
    """Start each projector from the least-squares map, at pooling factor 1, from the encoder's
    output at every token to the decoder's embedding of that token (segments: encoder token ids).

    A frozen decoder reads vectors that look like its own token embeddings at once (it copies
    them as text); from there a pooling-factor curriculum (x1 -> x2 -> x4, TrainConfig
    .pooling_schedule) keeps the document in the vectors while they learn to pack more tokens.
    Needs decoders that share the encoder's vocabulary. Returns R^2 per decoder."""
    if not segments:
        raise ValueError("fitting the projectors needs at least one segment")
    r2 = {}
    for decoder, adapter in enumerate(arc.adapters):
        if not arc.shares_vocabulary(decoder):
            raise ValueError(
                f"projector_init=lstsq needs a decoder with the encoder's vocabulary; decoder {decoder} "
                f"({arc.config.decoders[decoder]}) has another tokenizer"
            )
        with arc.encoder.pooling_factor(1):
            x = pooled_rows(arc, adapter, segments, batch_size)  # [R, d_e], one row per encoder token
        ids = torch.tensor([t for seg in segments for t in seg], device=arc.device)
        y = arc.decoders[decoder].get_input_embeddings()(ids).float()  # [R, d_dec]
        r2[decoder] = adapter.fit_linear(x, y)
    return r2
