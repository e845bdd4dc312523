"""Streaming decodes incrementally: the streamed pieces add up to the one-shot decode, never show
half a character, and each step decodes a few tokens, not the whole answer; stop strings are found
the same way; one decode-parameter model with each API's default and status code."""

import os

import pytest
from pydantic import ValidationError

from arc_encoder.model.detokenize import IncrementalDecoder, StopStrings
from arc_encoder.serving.decoding import DecodeParams, decode_params
from arc_encoder.serving.refusals import ClientError
from conftest import tiny_tokenizer
from data_tokenizers import byte_fallback_bpe, char_tokenizer

# Multi-byte characters of 2, 3 and 4 bytes, split across tokens by byte-level tokenizers.
TEXT = "Café au lait, naïve “quotes” — 日本語のテキスト 🙂🎉 and\n\nemoji 👩‍🔬 at the end."
SMOLLM2 = os.path.expanduser("~/.cache/arc-encoder/smollm2-135m")


def tokenizer(name: str):
    if name == "char":
        return char_tokenizer(bos=True)
    if name == "tiny":
        return tiny_tokenizer()
    if name == "byte-fallback":
        return byte_fallback_bpe()
    if not os.path.isdir(SMOLLM2):
        pytest.skip("SmolLM2 tokenizer not cached")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(SMOLLM2)


class CountingDecodes:
    """A tokenizer whose decode calls are recorded (how many ids each decoded)."""

    def __init__(self, tok):
        self.tok, self.lengths = tok, []

    def decode(self, ids, **kwargs):
        self.lengths.append(len(ids))
        return self.tok.decode(ids, **kwargs)


@pytest.mark.parametrize("name", ["char", "tiny", "byte-fallback", "smollm2"])
def test_streamed_text_is_the_one_shot_decode(name):
    tok = tokenizer(name)
    ids = tok(TEXT, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    counting = CountingDecodes(tok)
    stream = IncrementalDecoder(counting)
    pieces = [stream.add(ids[: k + 1]) for k in range(len(ids))]  # one call per new token
    assert "".join(pieces) == stream.text == tok.decode(ids, skip_special_tokens=True) == TEXT
    assert not any("\ufffd" in p for p in pieces)  # never half a character
    assert max(counting.lengths) <= 12 < len(ids)  # a window of tokens, not the whole list
    if name == "char":  # one token per byte: after "Caf", é's first byte shows nothing, its second é
        assert pieces[:5] == ["C", "a", "f", "", "é"]


def test_stop_strings_are_found_where_the_full_decode_finds_them():
    tok = char_tokenizer(bos=False)
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    for stop in (["\n\n"], ["テキ"], ["🎉 a", "zzz"], ["end."], ["absent"]):
        watch = StopStrings(tok, stop)
        first = next((k for k in range(1, len(ids) + 1) if watch.reached(ids[:k])), None)
        expected = next((k for k in range(1, len(ids) + 1) if any(s in tok.decode(ids[:k]) for s in stop)), None)
        assert first == expected, stop
    assert not StopStrings(tok, []).reached(ids)


def test_one_decode_parameter_model_each_api_its_default_and_status():
    options = (0.0, 1.0, ["\n"], None)
    native = decode_params(None, "max_new_tokens", 64, 512, 422, *options)
    assert native == DecodeParams(64, 0.0, 1.0, ("\n",), None) and native.batchable
    assert decode_params(None, "max_tokens", 16, 12, 400, *options).max_new_tokens == 12  # the cap if lower
    assert decode_params(5, "max_tokens", 16, 12, 400, *options).max_new_tokens == 5
    for status, field in ((422, "max_new_tokens"), (400, "max_tokens")):
        with pytest.raises(ClientError) as refused:
            decode_params(13, field, 16, 12, status, *options)
        assert (refused.value.status, refused.value.param) == (status, field)
        assert refused.value.message == f"{field}=13 exceeds the server's cap of 12"
    assert not DecodeParams(4, temperature=0.7, seed=3).batchable  # a seeded sampler runs alone
    for bad in (dict(max_new_tokens=0), dict(top_p=0.0), dict(temperature=-1.0), dict(stop=("",))):
        with pytest.raises(ValidationError):
            DecodeParams(**bad)
