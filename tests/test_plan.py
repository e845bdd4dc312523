"""`arc-encoder plan`: parameter and byte counts of a tiny config against hand arithmetic, unknown
architectures refused by name, and the activation estimate against a measured peak."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from arc_encoder.cli import app
from arc_encoder.model.arc import ARCModel
from arc_encoder.model.encoder import Encoder
from arc_encoder.planning.architectures import architecture
from arc_encoder.planning.measure import continuation_samples, peak_allocated_bytes
from arc_encoder.planning.memory import GIB, plan_terms
from arc_encoder.planning.meta_model import build_meta_model
from arc_encoder.planning.shapes import step_shapes
from arc_encoder.training.config import load_config
from arc_encoder.training.distributed import enable_activation_checkpointing

# Encoder backbone: V=100, d=32, f=64, 4 heads of 8, 2 KV heads, 3 blocks (1 dropped).
ENCODER = dict(
    model_type="llama", vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
)  # fmt: skip
# Decoder: V=120, d=48, f=96, 4 heads of 12 (no GQA), 2 blocks, untied head.
DECODER = dict(
    model_type="llama", vocab_size=120, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=False,
)  # fmt: skip


def write_setup(tmp_path: Path, **top) -> Path:
    arch = tmp_path / "configs" / "architectures" / "tiny"
    arch.mkdir(parents=True)
    (arch / "enc.json").write_text(json.dumps(ENCODER))
    (arch / "dec.json").write_text(json.dumps(DECODER))
    config = {
        "model": {
            "arc": {
                "backbone": "tiny/enc", "decoders": ["tiny/dec"], "drop_layers": 1,
                "pooling_factors": [4], "bottleneck": 16,
            },
            "pretrained": False,
        },
        "data": {"kind": "pretrain", "compress_tokens": 64, "target_tokens": 32, "prefix_tokens": 16,
                 "continuation": 1.0},
        "batch_size": 4,
        **top,
    }  # fmt: skip
    path = tmp_path / "configs" / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def plan_json(path: Path, *args: str) -> dict:
    result = CliRunner().invoke(app, ["plan", str(path), "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


# By hand. Encoder block: q 32*32 + k, v 32*16 each + o 32*32 + MLP 3*32*64 + two norms 2*32 = 9280;
# embeddings 100*32 = 3200; two blocks kept: 21760. Adapter: down 32*16 + up 16*48 + <Rec>, <Cont>
# 2*32 = 1344. Decoder block: 4 * 48*48 + 3*48*96 + 2*48 = 23136; embeddings and head 2 * 120*48;
# final norm 48: 57840.
TRAINED = 3200 + 2 * 9280 + 1344
FROZEN = 2 * 23136 + 2 * 120 * 48 + 48
EMBEDDING = 3200


def test_plan_json_counts_and_bytes_match_hand_arithmetic(tmp_path):
    path = write_setup(tmp_path, parallel="ddp")
    report = plan_json(path, "--gpus", "2")
    assert report["trainable_params"] == TRAINED == 23104
    assert report["frozen_params"] == FROZEN == 57840
    plans = {(p["strategy"], p["activation_checkpointing"]): p for p in report["plans"]}
    # On GPUs: bf16 autocast, frozen decoder stored in bf16; trained weights, grads, AdamW in fp32.
    ddp = plans["ddp", False]["bytes"]
    assert ddp["weights"] == 4 * TRAINED + 2 * FROZEN
    assert ddp["gradients"] == 4 * TRAINED
    assert ddp["optimizer"] == 8 * TRAINED
    assert ddp["ddp_buckets"] == 4 * TRAINED
    assert ddp["autocast_weight_copies"] == 2 * (TRAINED - EMBEDDING)
    fsdp = plans["fsdp", True]["bytes"]  # everything sharded over the 2 GPUs
    assert fsdp["weights"] == (4 * TRAINED) // 2 + (2 * FROZEN) // 2
    assert fsdp["gradients"] == 4 * TRAINED // 2 and fsdp["optimizer"] == 8 * TRAINED // 2
    # largest block: a decoder block, gathered in bf16 twice (running and prefetched)
    assert fsdp["fsdp_blocks_gathered"] == 2 * 2 * 23136
    for p in report["plans"]:
        b = p["bytes"]
        total = sum(b[k] for k in ("weights", "gradients", "optimizer", "buffers", "activations"))
        assert p["per_gpu_gib"] == round(total / GIB, 3)
    own = plans["ddp", False]
    assert (report["per_gpu_gib"], report["fits"]) == (own["per_gpu_gib"], own["fits"])
    assert plans["ddp", True]["bytes"]["activations"] < ddp["activations"]
    # fits: within 90% of the stated memory
    need = sum(own["bytes"][k] for k in ("weights", "gradients", "optimizer", "buffers", "activations")) / GIB
    assert plan_json(path, "--gpus", "2", "--gpu-memory", str(need / 0.9 * 1.01))["fits"] is True
    assert plan_json(path, "--gpus", "2", "--gpu-memory", str(need / 0.9 * 0.99))["fits"] is False


def test_plan_refuses_an_unknown_architecture_by_name(tmp_path):
    path = write_setup(tmp_path)
    result = CliRunner().invoke(app, ["plan", str(path), 'model.arc.decoders=["acme/Nonesuch-9B"]'])
    assert result.exit_code != 0
    with pytest.raises(LookupError, match="unknown architecture 'acme/Nonesuch-9B'.*known: tiny/dec, tiny/enc"):
        architecture("acme/Nonesuch-9B", tmp_path / "configs" / "architectures")


def test_committed_descriptions_give_the_published_sizes():
    folder = Path(__file__).resolve().parents[1] / "configs" / "architectures"
    with torch.device("meta"):
        sizes = {
            name: sum(p.numel() for p in AutoModelForCausalLM.from_config(architecture(name, folder)).parameters())
            for name in ("meta-llama/Llama-3.2-3B", "meta-llama/Llama-3.1-8B", "mistralai/Mistral-7B-v0.3")
        }
    # the parameter counts the model cards state: 3.21B, 8.03B, 7.25B
    assert sizes == {
        "meta-llama/Llama-3.2-3B": 3_212_749_824,
        "meta-llama/Llama-3.1-8B": 8_030_261_248,
        "mistralai/Mistral-7B-v0.3": 7_248_023_552,
    }


@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_estimate_is_within_25_percent_of_the_measured_peak(tmp_path, checkpointing):
    """A real tiny model, one fp32 training forward and backward on CPU: the profiler's peak of
    allocated bytes against the plan's activations and gradients for the same shapes."""
    path = write_setup(tmp_path, precision="fp32", activation_checkpointing=checkpointing)
    config = load_config(path)
    planned = build_meta_model(config, tmp_path / "configs" / "architectures")
    (shape,) = step_shapes(config, planned.config)
    terms = plan_terms(planned, shape, config, "ddp", 1, checkpointing, device_type="cpu")
    estimate = terms.activations + terms.gradients

    torch.manual_seed(0)
    meta_encoder = planned.arc.encoder
    encoder = Encoder(meta_encoder.hf_config, planned.config)
    decoder = AutoModelForCausalLM.from_config(planned.arc.decoders[0].config).requires_grad_(False)
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=2, bos_token_id=1)
    arc = ARCModel(planned.config, encoder, [decoder], tokenizer, [tokenizer]).train()
    if checkpointing:
        enable_activation_checkpointing(arc)
    samples = continuation_samples(shape, prefix=16, vocab=100)

    def step():
        loss = arc(samples, 0, "cont")[0]
        loss.backward()

    step()  # first call: lazy allocations outside the step's own
    for p in arc.parameters():
        p.grad = None
    measured = peak_allocated_bytes(step, torch.device("cpu"))
    assert 0.75 <= estimate / measured <= 1.25, (estimate, measured, terms.detail)


def test_a_warm_start_not_on_this_machine_needs_a_stand_in(tmp_path):
    path = write_setup(tmp_path)
    missing = f"model.init_from={tmp_path / 'no-such-run'}"
    result = CliRunner().invoke(app, ["plan", str(path), missing, "model.arc={}"])
    assert result.exit_code != 0 and "--init-preset" in str(result.exception)
    # naming its decoders, it is planned as the paper's encoder (what model.arc does not set), and says so
    config = load_config(path, [missing, 'model.arc={"backbone": "tiny/enc", "decoders": ["tiny/dec"]}'])
    planned = build_meta_model(config, tmp_path / "configs" / "architectures")
    assert (planned.config.drop_layers, planned.config.bottleneck, planned.config.pooling_factors) == (2, 2048, [8])
    assert planned.config.decoders == ["tiny/dec"] and "planned as preset llama3-arc8" in planned.notes[0]
