"""The one model configuration: what the encoder is, how it pools, which decoders it feeds;
and the typed construction every config section (model, data, training) is built with."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal


# ----------------------------------------------------------------------------- typed construction
def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp, where: str) -> Any:
    """Check `value` against the annotation `tp`, converting where YAML is loose (ints for
    floats, "1e-4", which YAML reads as a string)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(value, option, where)
            except TypeError as e:
                errors.append(str(e))
        raise TypeError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {_type_name(tp)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise TypeError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected a mapping (section), got {value!r}")
        return build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise TypeError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TypeError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"{where}: unsupported field type {tp}")


def build(cls, values: dict[str, Any], section: str = ""):
    """A dataclass from a mapping; unknown keys and mistyped values are errors naming them."""
    return cls(**typed_fields(cls, values, section))


def typed_fields(cls, values: dict[str, Any], section: str = "") -> dict[str, Any]:
    """The values of a mapping checked (names and types) against dataclass `cls`, not yet built."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        where = f"section '{section}'" if section else f"the top level ({cls.__name__})"
        raise ValueError(f"unknown key(s) {unknown} in {where}; known keys: {names}")
    return {k: coerce(v, hints[k], f"{section}.{k}" if section else k) for k, v in values.items()}


class DictConfig:
    """To and from plain dicts (JSON, YAML, checkpoints) for the config dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], section: str = ""):
        """Typed construction (`build`): unknown keys and mistyped values are errors naming them."""
        return build(cls, values, section)


# Encoder tokens per chunk of a document, unless a model's config says otherwise.
DEFAULT_CHUNK_TOKENS = 256


@dataclass
class ARCConfig(DictConfig):
    # Encoder backbone: a Hugging Face decoder-only model (name, folder, or embedded alias).
    backbone: str = "smollm2-135m"
    # How many of the backbone's final blocks to drop (paper: 2 of Llama-3.2-3B's 28).
    # The default keeps 12 of SmolLM2's 30 blocks: ~32% of the decoder's FLOPs per token.
    drop_layers: int = 18
    # Bidirectional attention inside each segment (paper); causal is an ablation.
    causal: bool = False
    # "mean" or "last" pooling of groups of positions, or "memory" (ICAE-like memory tokens).
    pooling: str = "mean"
    # One factor per final block, applied before that block: [4] pools by 4 in the last block;
    # [2, 2, 2] pools by 2 before each of the last three (overall 8); 1 = no pooling there.
    pooling_factors: list[int] = field(default_factory=lambda: [4])
    # Keys the pooled queries may attend in a pooling block: None = every token of the segment
    # (paper); w >= 0 = the tokens of groups at most w away from the query's own (0: own group).
    # A local field stops every vector from summarising the same whole-segment direction.
    pooled_receptive_field: int | None = None
    # Positions (RoPE) of the pooled queries: "index" = 0..m-1 (paper), "group" = the position of
    # the first token of their group, beside the keys they summarise.
    pooled_positions: str = "index"
    # What the projector reads: "raw" encoder outputs (paper), or "standardize"d ones (each
    # dimension centred and scaled by statistics measured once on training text, then fixed).
    projector_input: str = "raw"
    # Number of memory tokens per segment when pooling == "memory".
    memory_tokens: int = 0
    # Frozen decoders fed by this encoder; each gets its own projector and special tokens.
    decoders: list[str] = field(default_factory=lambda: ["smollm2-135m"])
    # Width of the projector's middle layer; these are the vectors a store keeps. None: one linear
    # map from encoder to decoder width, and the store keeps the encoder's outputs.
    bottleneck: int | None = 512
    # Append a learned <Rec>/<Cont> vector after every compressed segment.
    special_tokens: bool = True
    # Paper (method.md §13.7): the special token's output predicts the first text token after its
    # block. False reproduces the official code, which leaves that token unsupervised.
    supervise_first_token: bool = True
    # Documents are split into chunks of at most this many encoder tokens, cut at word boundaries,
    # compressed in parallel and placed back to back: by ARCModel.compress, the store and the
    # service alike (model/chunking.py). The encoder's attention is quadratic in a chunk's length.
    # A model saved before this setting had a default (null) reads as the default.
    chunk_tokens: int | None = DEFAULT_CHUNK_TOKENS
    max_chunks: int = 32
    # transformers attention backend for encoder and decoders ("sdpa" or "eager").
    attn_implementation: str = "sdpa"

    def __post_init__(self):
        if self.pooling not in ("mean", "last", "memory"):
            raise ValueError(f"pooling must be 'mean', 'last' or 'memory', got {self.pooling!r}")
        if self.pooling == "memory":
            if self.memory_tokens < 1:
                raise ValueError("pooling='memory' needs memory_tokens >= 1")
            if any(f != 1 for f in self.pooling_factors):
                raise ValueError("memory tokens replace pooling: set pooling_factors to []")
        elif self.memory_tokens:
            raise ValueError("memory_tokens is only used with pooling='memory'")
        if self.pooled_receptive_field is not None and self.pooled_receptive_field < 0:
            raise ValueError(f"pooled_receptive_field must be None or >= 0, got {self.pooled_receptive_field}")
        if self.projector_input not in ("raw", "standardize"):
            raise ValueError(f"projector_input must be 'raw' or 'standardize', got {self.projector_input!r}")
        if self.pooled_positions not in ("index", "group"):
            raise ValueError(f"pooled_positions must be 'index' or 'group', got {self.pooled_positions!r}")
        if any((not isinstance(f, int)) or f < 1 for f in self.pooling_factors):
            raise ValueError(f"pooling_factors must be integers >= 1, got {self.pooling_factors}")
        if not self.decoders:
            raise ValueError("at least one decoder is needed")
        if self.drop_layers < 0:
            raise ValueError("drop_layers must be >= 0")
        if self.bottleneck is not None and (
            isinstance(self.bottleneck, bool) or not isinstance(self.bottleneck, int) or self.bottleneck < 1
        ):
            raise ValueError(f"bottleneck must be an integer >= 1 or None, got {self.bottleneck!r}")
        if self.chunk_tokens is None:
            self.chunk_tokens = DEFAULT_CHUNK_TOKENS
        if isinstance(self.chunk_tokens, bool) or not isinstance(self.chunk_tokens, int) or self.chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be an integer >= 1, got {self.chunk_tokens!r}")
        if isinstance(self.max_chunks, bool) or not isinstance(self.max_chunks, int) or self.max_chunks < 1:
            raise ValueError(f"max_chunks must be an integer >= 1, got {self.max_chunks!r}")

    @property
    def pooling_factor(self) -> int:
        """Overall factor: tokens per compressed vector for long segments."""
        total = 1
        for f in self.pooling_factors:
            total *= f
        return total


# Named architectures. Paths of large models are hub names; point them at local folders.
# A name means one model: where its trained weights ship in the package (model/delta.py SHIPPED:
# "smollm2-arc4", the default model), loading it by name (`--model`, `load_model`,
# `ARCModel.from_pretrained`) gives those weights and "NAME-untrained" fresh ones; a training
# config's `model.preset` and `ARCModel.from_config` build the architecture with fresh weights.
PRESETS: dict[str, ARCConfig] = {
    "smollm2-arc4": ARCConfig(),
    "smollm2-arc8": ARCConfig(pooling_factors=[8]),
    "smollm2-gemma3-arc4": ARCConfig(decoders=["smollm2-135m", "gemma3-270m"]),
    "smollm2-memory": ARCConfig(pooling="memory", pooling_factors=[], memory_tokens=16),
    # The paper's released configuration: Llama-3.2-3B minus 2 blocks, PF 8, 3072 -> 2048 -> 4096.
    "llama3-arc8": ARCConfig(
        backbone="meta-llama/Llama-3.2-3B",
        drop_layers=2,
        pooling_factors=[8],
        decoders=["meta-llama/Llama-3.1-8B"],
        bottleneck=2048,
    ),
    "llama3-arc4": ARCConfig(
        backbone="meta-llama/Llama-3.2-3B",
        drop_layers=2,
        pooling_factors=[4],
        decoders=["meta-llama/Llama-3.1-8B"],
        bottleneck=2048,
    ),
    "llama3-mistral-arc4": ARCConfig(
        backbone="meta-llama/Llama-3.2-3B",
        drop_layers=2,
        pooling_factors=[4],
        decoders=["meta-llama/Llama-3.1-8B", "mistralai/Mistral-7B-v0.3"],
        bottleneck=2048,
    ),
}
