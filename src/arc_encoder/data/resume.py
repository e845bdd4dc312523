"""Saving and restoring data-pipeline positions: RNG states as plain lists, and run checks."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import MISSING, fields
from typing import Any


def rng_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_rng_state(rng: random.Random, state: Sequence) -> None:
    # Stored as lists, not tuples, so a state survives JSON / YAML / torch weights_only round trips.
    version, internal, gauss = state
    rng.setstate((version, tuple(internal), gauss))


def check_same_run(
    state: dict,
    config: dict,
    rank: int,
    world_size: int,
    decoders: int,
    resumable_changes: tuple[str, ...] = (),
    defaults: dict | None = None,
) -> None:
    """Refuse to resume a data pipeline into a different one: its positions would mean nothing.

    `defaults`: a key the saved config lacks (one added to the config after the state was saved)
    counts as its default, so older states resume while the new key keeps it."""
    if (state["rank"], state["world_size"]) != (rank, world_size):
        raise ValueError(
            f"data state was saved by rank {state['rank']} of {state['world_size']}, "
            f"cannot resume it as rank {rank} of {world_size}"
        )
    if state["decoders"] != decoders:
        raise ValueError(f"data state was saved for {state['decoders']} decoder(s), this pipeline has {decoders}")
    saved = {**(defaults or {}), **state["config"]}
    changed = sorted(k for k in config if k not in resumable_changes and saved.get(k) != config[k])
    if changed:
        raise ValueError(
            f"data config changed since the state was saved ({', '.join(changed)}); "
            "resuming would not continue the same stream"
        )


def config_defaults(cls) -> dict[str, Any]:
    """Default of every field of a config dataclass that has one (for check_same_run's `defaults`)."""
    out = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out
