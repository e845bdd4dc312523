"""The element-wise mean of several saved models' trained tensors (a "model soup").

Checkpoints of runs that started from one model (same architecture, same backbone, same decoders)
stay close enough in weight space that their mean is itself a working model, and often a better
one than each: averaging cancels part of the noise a constant learning rate leaves in the last
steps. Only the encoder and adapters are averaged; the frozen decoders are named, not saved.
"""

from __future__ import annotations

from pathlib import Path

from .saved import load_state, locate


def average_models(model_class, sources: list[str | Path]):
    """A `model_class` (ARCModel) holding the mean of the trained tensors of `sources` (shipped
    names, saved folders or run folders). Every source must have the first one's config (the
    tensors' names and shapes are checked as any load checks them)."""
    if len(sources) < 2:
        raise ValueError(f"averaging needs at least two models, got {len(sources)}")
    first = locate(sources[0])
    for source in sources[1:]:
        other = locate(source)
        if other.config != first.config:
            diffs = sorted(k for k, v in first.config.to_dict().items() if other.config.to_dict().get(k) != v)
            raise ValueError(f"{source} differs from {sources[0]} in {diffs}: only models of one architecture average")
    model = model_class.from_pretrained(sources[0])
    first_state = model.trained_state()
    total = {k: v.detach().double().clone() for k, v in first_state.items()}
    for source in sources[1:]:
        state = model_class.from_pretrained(source).trained_state()
        for key in total:
            total[key] += state[key].double()
    mean = {k: (v / len(sources)).to(first_state[k].dtype) for k, v in total.items()}
    load_state(model, mean, f"the mean of {len(sources)} models")
    return model
