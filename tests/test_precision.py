"""Precision: frozen decoders stored in bf16 under fp32 trained weights, float32 vectors feeding a
bf16 model, and the RoPE tables that must stay float32 whatever the weights are cast to."""

from __future__ import annotations

import pytest
import torch

from arc_encoder import ARCConfig, ARCModel, Doc
from arc_encoder.devices import cast_weights
from arc_encoder.model.generate import prompt_embeddings
from arc_encoder.model.prompting import Compressed
from arc_encoder.training.config import config_from_dict
from conftest import build_tiny_arc
from training_data import TokenBatches, random_texts, reconstruction

DOCUMENT = "Paris is the capital of France and its largest city."


def test_float32_vectors_feed_a_bfloat16_model(tiny_models):
    reference = build_tiny_arc(tiny_models, seed=5).eval()
    stored = reference.compress([DOCUMENT])[0]  # float32, as a store keeps them
    assert stored.chunks[0].dtype == torch.float32
    model = cast_weights(build_tiny_arc(tiny_models, seed=5), torch.bfloat16).eval()
    assert model.dtype == torch.bfloat16 and model.decoders[0].dtype == torch.bfloat16
    prompt = ["Document: ", stored, "\nAnswer:"]
    for parts in (prompt, ["Document: ", Doc(DOCUMENT), "\nAnswer:"]):  # stored vectors, and compressed now
        out = model.generate(parts, max_new_tokens=4)[0]
        assert len(out.token_ids) > 0 and out.compressed_vectors == stored.n_vectors
    # what the bf16 decoder reads is the float32 model's input rounded to bf16, not something else
    low = prompt_embeddings(model, prompt)[0].embeds
    high = prompt_embeddings(reference, prompt)[0].embeds
    assert low.dtype == torch.bfloat16 and high.dtype == torch.float32
    torch.testing.assert_close(low.float(), high, rtol=2e-2, atol=2e-2)
    # and bf16 vectors feed a float32 model
    low_vectors = Compressed([c.to(torch.bfloat16) for c in stored.chunks], 0, stored.document_tokens)
    assert reference.generate(["Document: ", low_vectors, "\nAnswer:"], max_new_tokens=2)[0].token_ids


def test_cast_keeps_rope_tables_float32_and_parameters_themselves(tiny_models):
    arc = build_tiny_arc(tiny_models)
    first = arc.encoder.layers[0].self_attn.q_proj.weight
    cast_weights(arc, torch.bfloat16)
    assert arc.encoder.layers[0].self_attn.q_proj.weight is first and first.dtype == torch.bfloat16
    tables = {n: b.dtype for n, b in arc.named_buffers() if "inv_freq" in n}
    assert tables and set(tables.values()) == {torch.float32}, tables
    assert {p.dtype for p in arc.parameters()} == {torch.bfloat16}


def test_bf16_decoders_under_fp32_trained_weights(tiny_models):
    config = ARCConfig(
        backbone=tiny_models["llama"],
        drop_layers=1,
        decoders=[tiny_models["llama"], tiny_models["llama-wide"]],
        bottleneck=32,
        pooling_factors=[2],
    )
    torch.manual_seed(3)
    full = ARCModel.from_config(config)
    torch.manual_seed(3)
    half = ARCModel.from_config(config, decoder_dtype=torch.bfloat16)
    for decoder in half.decoders:
        assert {p.dtype for p in decoder.parameters()} == {torch.bfloat16}
        assert decoder.base_model.rotary_emb.inv_freq.dtype == torch.float32  # read as transformers keeps it
    assert {p.dtype for n, p in half.named_parameters() if not n.startswith("decoders.")} == {torch.float32}
    samples = [reconstruction(t) for t in random_texts(3, 12, seed=1)]
    for decoder in (0, 1):
        loss, n = half(samples, decoder)
        loss.backward()
        reference, _ = full(samples, decoder)
        # the same model, its frozen decoder rounded to bf16: the same loss to bf16's precision
        assert loss.item() / n == pytest.approx(reference.item() / n, rel=2e-2)
        grad = half.adapters[decoder].up.weight.grad
        assert grad is not None and grad.dtype == torch.float32 and torch.isfinite(grad).all()
    assert half.encoder.layers[-1].mlp.down_proj.weight.grad.dtype == torch.float32


@pytest.mark.parametrize(
    "precision, decoder_dtype, device, expected",
    [
        ("auto", "auto", "cuda", "bf16"),  # the paper's setting: bf16 autocast, bf16 decoders
        ("bf16", "auto", "cuda", "bf16"),
        ("fp32", "auto", "cuda", "fp32"),
        ("auto", "auto", "cpu", "fp32"),
        ("bf16", "auto", "cpu", "fp32"),  # a CPU computes fp32 faster: auto keeps it there
        ("fp32", "bf16", "cpu", "bf16"),  # asked for: half the memory
        ("bf16", "fp32", "cuda", "fp32"),
    ],
)
def test_decoder_dtype_resolution(precision, decoder_dtype, device, expected):
    config = config_from_dict({"precision": precision, "decoder_dtype": decoder_dtype})
    assert config.frozen_decoder_dtype(device) == expected


def test_decoder_dtype_is_validated():
    with pytest.raises(TypeError, match=r"decoder_dtype: 'fp16' is not one of \['auto', 'fp32', 'bf16'\]"):
        config_from_dict({"decoder_dtype": "fp16"})


def test_a_step_with_bf16_decoders_keeps_fp32_master_weights(tiny_models, tmp_path):
    from arc_encoder.training.model_init import build_model
    from arc_encoder.training.trainer import Trainer, seed_everything

    arc_section = {
        "backbone": tiny_models["llama"],
        "drop_layers": 1,
        "decoders": [tiny_models["llama"]],
        "bottleneck": 32,
        "pooling_factors": [2],
    }
    config = config_from_dict(
        {
            "model": {"arc": arc_section},
            "decoder_dtype": "bf16",
            "device": "cpu",
            "steps": 2,
            "batch_size": 2,
            "out_dir": str(tmp_path / "run"),
            "log": {"progress": False, "plot": False},
        }
    )
    seed_everything(0)
    arc = build_model(config, log=lambda *_: None)
    assert arc.decoders[0].dtype == torch.bfloat16  # read so from disk
    trainer = Trainer(config, arc, TokenBatches(random_texts(4, 12), 2))
    before = arc.adapters[0].up.weight.detach().clone()
    record = trainer.train_step()
    assert torch.isfinite(torch.tensor(record["loss"]))
    assert not torch.equal(before, arc.adapters[0].up.weight)
    assert arc.adapters[0].up.weight.dtype == torch.float32
    moments = [s["exp_avg"].dtype for s in trainer.optimizer.state.values()]
    assert moments and set(moments) == {torch.float32}
