"""The KV-cache keyword of transformers 5.x: `past_key_values` up to 5.23, `cache` from 5.24. A
decoder given the wrong name ignores it and decodes every new token without the prompt."""

from __future__ import annotations

import types

import transformers
from transformers import AutoModelForCausalLM

from arc_encoder.model.decoder import _cache_keyword, returned_cache, with_cache


class OldStyle:
    def forward(self, input_ids=None, past_key_values=None, use_cache=None, **kwargs): ...


class NewStyle:
    def forward(self, input_ids=None, cache=None, use_cache=None, **kwargs): ...


def test_the_keyword_follows_the_forward_signature(tiny_models):
    assert with_cache(OldStyle(), "c") == {"past_key_values": "c"}
    assert with_cache(NewStyle(), "c") == {"cache": "c"}
    decoder = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    major, minor = (int(v) for v in transformers.__version__.split(".")[:2])
    assert _cache_keyword(type(decoder)) == ("cache" if (major, minor) >= (5, 24) else "past_key_values")


def test_the_returned_cache_is_read_under_either_name():
    assert returned_cache(types.SimpleNamespace(cache="new", past_key_values=None)) == "new"
    assert returned_cache(types.SimpleNamespace(past_key_values="old")) == "old"
