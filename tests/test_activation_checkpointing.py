"""Activation checkpointing recomputes blocks in the backward pass: it must change no number."""

from __future__ import annotations

import pytest
import torch

from arc_encoder.model.splice import Sample
from arc_encoder.training.distributed import enable_activation_checkpointing
from conftest import build_tiny_arc
from training_data import continuation, random_texts, reconstruction


def padded_samples() -> list[Sample]:
    """Texts of 9 to 21 tokens: both the encoder's segments and the decoder's sequences are padded."""
    texts = [t[: 9 + 4 * i] for i, t in enumerate(random_texts(4, 24, seed=3))]
    return [reconstruction(texts[0]), continuation(texts[1]), reconstruction(texts[2]), continuation(texts[3])]


def losses_and_gradients(arc, samples):
    """Per decoder: (summed loss, gradients of every trainable tensor, numel of the tensors
    autograd saved for the backward pass)."""
    out = []
    for decoder in range(len(arc.decoders)):
        arc.zero_grad(set_to_none=True)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            loss, _ = arc(samples, decoder)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in arc.named_parameters() if p.grad is not None}
        out.append((loss.detach(), grads, sum(saved)))
    return out


def test_checkpointing_changes_no_loss_and_no_gradient_on_a_padded_batch(tiny_models):
    samples = padded_samples()
    lengths = {len(s.text_ids) for s in samples}
    assert len(lengths) == len(samples)  # every sequence padded to another length
    results = []
    for checkpointed in (False, True):
        arc = build_tiny_arc(tiny_models, seed=5, decoders=[tiny_models["llama"], tiny_models["llama-wide"]])
        arc.train()
        if checkpointed:
            enable_activation_checkpointing(arc)
        results.append(losses_and_gradients(arc, samples))
    for decoder, ((loss, grads, saved), (ck_loss, ck_grads, ck_saved)) in enumerate(zip(*results)):
        torch.testing.assert_close(ck_loss, loss, rtol=0, atol=1e-5)
        # the encoder and this decoder's adapter get gradients, through the frozen decoder's blocks
        assert any(n.startswith("encoder.layers.") for n in grads) and f"adapters.{decoder}.up.weight" in grads
        assert set(ck_grads) == set(grads)
        for name, grad in grads.items():
            torch.testing.assert_close(ck_grads[name], grad, rtol=0, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
        # and the blocks were recomputed rather than stored: far fewer saved activations
        assert ck_saved < 0.5 * saved, (decoder, ck_saved, saved)


def test_a_checkpointed_block_refuses_a_kv_cache(tiny_models):
    from transformers import DynamicCache

    arc = build_tiny_arc(tiny_models)
    enable_activation_checkpointing(arc)
    decoder = arc.decoders[0]
    embeds = torch.randn(1, 5, decoder.config.hidden_size, requires_grad=True)
    with pytest.raises(RuntimeError, match="called with a KV cache.*use_cache=False"):
        decoder.base_model(inputs_embeds=embeds, cache=DynamicCache(config=decoder.config), use_cache=True)
    with torch.no_grad():  # generation (no backward, nothing recomputed) keeps its cache
        decoder.base_model(inputs_embeds=embeds, cache=DynamicCache(config=decoder.config), use_cache=True)
