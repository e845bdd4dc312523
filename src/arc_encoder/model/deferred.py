"""Decoders read the first time they are used.

A saved model may serve several decoders (a SmolLM2 and a Gemma adapter on one encoder), and a
user of one should not pay for the others: the embedded Gemma-3-270m takes a gigabyte of memory
and its package need not even be installed. `ARCModel.from_pretrained` therefore puts a
`DeferredDecoder` (the decoder's name and width, nothing read) in each place of the decoder list,
and `DecoderList` reads it, with its tokenizer, when that place is first indexed or iterated.
Compressing needs no decoder at all (only its tokenizer, to count tokens).

A deferred decoder follows the model's `.to(device)` and dtype casts through an empty buffer, so
it is read onto the device, in the dtype, the model has by then.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .decoder import load_frozen_decoder
from .registry import resolve_model


class DeferredDecoder(nn.Module):
    def __init__(self, name: str, width: int, attn_implementation: str, pretrained: bool, dtype: torch.dtype):
        super().__init__()
        self.name = name  # a registry name, hub name or folder (resolve_model)
        self.width = width  # the hidden size the saved adapter was trained for
        self.attn_implementation = attn_implementation
        self.pretrained = pretrained
        # empty: carries the device and dtype the model is moved and cast to
        self.register_buffer("placement", torch.empty(0, dtype=dtype), persistent=False)

    def load(self) -> PreTrainedModel:
        path = resolve_model(self.name)
        decoder = load_frozen_decoder(
            path, self.attn_implementation, self.pretrained, AutoConfig.from_pretrained(path), self.placement.dtype
        )
        if decoder.config.hidden_size != self.width:
            raise ValueError(
                f"decoder {self.name} has width {decoder.config.hidden_size}, "
                f"but this model's adapter for it was trained for width {self.width}"
            )
        return decoder.to(self.placement.device)

    def extra_repr(self) -> str:
        return f"{self.name!r}, width={self.width}, not read yet"


class DecoderList(nn.ModuleList):
    """The frozen decoders, in config order; a DeferredDecoder is read when first indexed."""

    def __getitem__(self, index):
        module = super().__getitem__(index)
        if isinstance(module, DeferredDecoder):
            module = module.load()
            self[index] = module
        return module

    def __iter__(self) -> Iterator[nn.Module]:
        return (self[i] for i in range(len(self)))

    def is_read(self, index: int) -> bool:
        return not isinstance(super().__getitem__(index), DeferredDecoder)

    def read_all(self) -> None:
        """Read every deferred decoder now (training, sharding and casts need them all)."""
        for _ in self:
            pass


class DeferredTokenizer:
    """A decoder tokenizer's place in `TokenizerList` until first read."""

    def __init__(self, name: str):
        self.name = name


class TokenizerList(list):
    """The decoders' tokenizers, in config order; a DeferredTokenizer is read when first indexed."""

    def __getitem__(self, index) -> PreTrainedTokenizerBase:
        item = super().__getitem__(index)
        if isinstance(item, DeferredTokenizer):
            item = AutoTokenizer.from_pretrained(resolve_model(item.name))
            self[index] = item
        return item

    def __iter__(self) -> Iterator[PreTrainedTokenizerBase]:
        return (self[i] for i in range(len(self)))


def decoder_width(decoder: nn.Module) -> int:
    """A decoder's hidden size, read or not."""
    return decoder.width if isinstance(decoder, DeferredDecoder) else decoder.config.hidden_size
