"""Delta saves (only what differs from the backbone) and shipped models: bit-exact rebuilds,
checksums, size limits, warm starts."""

from __future__ import annotations

import json

import pytest
import torch

from arc_encoder.model import delta as delta_module
from arc_encoder.model.arc import ARCModel
from arc_encoder.model.weights import read_weights
from arc_encoder.training.config import config_from_dict
from arc_encoder.training.model_init import build_model
from arc_encoder.training.trainer import Trainer, seed_everything
from training_data import TokenBatches, random_texts

TEXTS = random_texts(8, 16)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_config(tmp_path, backbone, **extra):
    tree = {
        "model": {
            "arc": {
                "backbone": backbone,
                "drop_layers": 1,
                "decoders": [backbone],
                "bottleneck": 32,
                "pooling_factors": [2],
            }
        },
        "data": {"kind": "pretrain"},
        "optim": {"lr_encoder": 1e-3, "lr_projector": 3e-3, "lr_special": 3e-3},
        "steps": 3,
        "batch_size": 4,
        "train_encoder_blocks": 1,
        "out_dir": str(tmp_path / "run"),
        "checkpoint": {"every": 0},
        "log": {"every": 1, "progress": False, "plot": False},
        **extra,
    }
    return config_from_dict(tree)


@pytest.fixture
def trained(tiny_models, tmp_path):
    """A tiny model whose last encoder block, projector and special tokens were trained."""
    config = train_config(tmp_path, tiny_models["llama"])
    seed_everything(0)
    arc = build_model(config, log=lambda *_: None)
    Trainer(config, arc, TokenBatches(TEXTS, config.batch_size)).fit()
    return arc.eval()


def test_a_delta_rebuilds_the_trained_model_bit_for_bit(trained, tmp_path):
    trained.save_pretrained(tmp_path / "full")
    size = trained.save_delta(tmp_path / "delta")
    full = ARCModel.from_pretrained(tmp_path / "full").eval()
    small = ARCModel.from_pretrained(tmp_path / "delta").eval()

    saved = read_weights(tmp_path / "delta" / "model.safetensors")
    blocks = {k.split(".")[2] for k in saved if k.startswith("encoder.layers.")}
    assert blocks == {"2"}  # of blocks 0-2, only the last one trained
    assert not any(k.startswith("encoder.embed_tokens") for k in saved)
    assert size == sum(v.numel() * v.element_size() for v in saved.values())
    assert not (tmp_path / "delta" / "encoder").exists()

    reference = trained.state_dict()
    for model in (full, small):
        for k, v in model.state_dict().items():
            assert torch.equal(v, reference[k]), k
    assert small.fingerprint() == trained.fingerprint()
    documents = ["a first small document", "and another one, a little longer than the first"]
    for a, b in zip(trained.compress(documents), small.compress(documents)):
        assert torch.equal(a.chunks[0], b.chunks[0])


def test_a_float16_delta_is_the_trained_model_rounded_once(trained, tmp_path):
    full_size = trained.save_delta(tmp_path / "fp32")
    half_size = trained.save_delta(tmp_path / "fp16", dtype=torch.float16)
    assert half_size * 2 == full_size
    loaded = ARCModel.from_pretrained(tmp_path / "fp16")
    saved = read_weights(tmp_path / "fp16" / "model.safetensors")
    reference = trained.state_dict()
    for k, v in loaded.state_dict().items():
        assert v.dtype == torch.float32, k
        expected = reference[k].half().float() if k in saved else reference[k]
        assert torch.equal(v, expected), k


def test_a_corrupt_or_truncated_delta_is_refused(trained, tmp_path):
    trained.save_delta(tmp_path / "d")
    weights = tmp_path / "d" / "model.safetensors"
    data = bytearray(weights.read_bytes())

    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt or was changed.*recorded in its arc_config.json"):
        ARCModel.from_pretrained(tmp_path / "d")

    weights.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ValueError, match="corrupt or was changed"):
        ARCModel.from_pretrained(tmp_path / "d")

    weights.unlink()
    with pytest.raises(FileNotFoundError, match="missing weights file"):
        ARCModel.from_pretrained(tmp_path / "d")

    trained.save_delta(tmp_path / "d")
    meta_file = tmp_path / "d" / "arc_config.json"
    meta = json.loads(meta_file.read_text())
    del meta["sha256"]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="records no sha256"):
        ARCModel.from_pretrained(tmp_path / "d")


def test_a_name_that_is_neither_a_folder_nor_shipped_lists_the_shipped_models(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"neither a saved model folder nor a shipped model \(.*smollm2-arc4"):
        ARCModel.from_pretrained(tmp_path / "nope")


def test_a_delta_over_the_size_limit_is_refused_before_writing(trained, tmp_path):
    with pytest.raises(ValueError, match=r"over the 0.001 MB asked for: encoder blocks \['2'\]"):
        trained.save_delta(tmp_path / "d", max_mb=0.001)
    assert not (tmp_path / "d").exists()


def test_a_shipped_name_loads_from_the_package_folder_and_checks_the_pinned_sum(trained, tmp_path, monkeypatch):
    trained.save_delta(tmp_path / "tiny-arc")
    sha = json.loads((tmp_path / "tiny-arc" / "arc_config.json").read_text())["sha256"]
    monkeypatch.setattr(delta_module, "SHIPPED_DIR", tmp_path)
    monkeypatch.setitem(delta_module.SHIPPED, "tiny-arc", sha)
    loaded = ARCModel.from_pretrained("tiny-arc")
    assert loaded.fingerprint() == trained.fingerprint()

    # a weights file re-saved with a matching arc_config.json is still not the shipped one
    monkeypatch.setitem(delta_module.SHIPPED, "tiny-arc", "0" * 64)
    with pytest.raises(ValueError, match="pinned for this shipped model"):
        ARCModel.from_pretrained("tiny-arc")


def test_training_warm_starts_from_a_delta(trained, tiny_models, tmp_path):
    trained.save_delta(tmp_path / "d")
    config = train_config(tmp_path, "unused", model={"init_from": str(tmp_path / "d")})
    arc = build_model(config, log=lambda *_: None)
    reference = trained.state_dict()
    for k, v in arc.state_dict().items():
        assert torch.equal(v, reference[k]), k


def test_convert_delta_command(trained, tmp_path):
    from typer.testing import CliRunner

    from arc_encoder.cli import app

    trained.save_pretrained(tmp_path / "full")
    result = CliRunner().invoke(app, ["convert", "delta", str(tmp_path / "full"), str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["megabytes"] > 0
    assert ARCModel.from_pretrained(tmp_path / "d").fingerprint() == trained.fingerprint()
    again = CliRunner().invoke(app, ["convert", "delta", str(tmp_path / "full"), str(tmp_path / "d")])
    assert again.exit_code == 1 and "is not empty" in again.output
    small = CliRunner().invoke(app, ["convert", "delta", str(tmp_path / "full"), str(tmp_path / "e"), "--max-mb", "0"])
    assert small.exit_code == 1 and "over the 0.0 MB" in small.output
