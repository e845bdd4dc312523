"""Learning-rate schedule (method.md §13.4): warm-up to the peak, then cosine decay to `final_lr`
(or, with decay "none", the peak held to the end).

Step s = 0, 1, ..., steps-1 is the optimizer step being taken. Warm-up covers steps 0..W-1 and
reaches the peak exactly at step W-1 (linear: peak*(s+1)/W; cosine: peak*(1-cos(pi*(s+1)/W))/2).
The decay starts from the peak at step W-1 (step 0 when there is no warm-up) and lands exactly on
`final_lr` at the last step. Nothing else moves: no momentum cycling, no hidden initial rate.
"""

from __future__ import annotations

import math

from .config import OptimConfig


def lr_at(
    step: int,
    peak: float,
    steps: int,
    warmup_steps: int = 0,
    warmup: str = "linear",
    final_lr: float = 0.0,
    decay: str = "cosine",
) -> float:
    """The learning rate of optimizer step `step` (0-based) for a group whose peak is `peak`."""
    if not 0 <= step < steps:
        raise ValueError(f"step {step} is outside a schedule of {steps} steps")
    if step < warmup_steps:
        frac = (step + 1) / warmup_steps
        if warmup == "linear":
            return peak * frac
        if warmup == "cosine":
            return peak * (1 - math.cos(math.pi * frac)) / 2
        raise ValueError(f"warmup must be 'linear' or 'cosine', got {warmup!r}")
    if decay == "none":  # constant at the peak after the warm-up
        return peak
    if decay != "cosine":
        raise ValueError(f"decay must be 'cosine' or 'none', got {decay!r}")
    start = max(warmup_steps - 1, 0)  # the step at which the decay starts from the peak
    span = steps - 1 - start
    progress = (step - start) / span if span > 0 else 1.0
    return final_lr + (peak - final_lr) * (1 + math.cos(math.pi * progress)) / 2


def lr_lambda(peak: float, steps: int, optim: OptimConfig):
    """A LambdaLR factor function for a group whose base (peak) learning rate is `peak`."""

    def factor(step: int) -> float:
        # LambdaLR asks for one step past the end after the last optimizer step; hold the end.
        return (
            lr_at(min(step, steps - 1), peak, steps, optim.warmup_steps, optim.warmup, optim.final_lr, optim.decay)
            / peak
        )

    return factor
