"""On a CUDA GPU (`pytest -m gpu`; skipped elsewhere): bf16 against fp32, activation checkpointing,
a one-rank FSDP2 step and evaluation, each against a reference computed independently."""

from __future__ import annotations

import json
import socket

import pytest
import torch
from typer.testing import CliRunner

from arc_encoder.cli import app
from arc_encoder.devices import cast_weights
from arc_encoder.training.config import config_from_dict
from arc_encoder.training.distributed import Runtime, enable_activation_checkpointing
from arc_encoder.training.trainer import Trainer
from conftest import build_tiny_arc
from test_activation_checkpointing import losses_and_gradients, padded_samples
from test_eval_runner import write_fixture
from training_data import TokenBatches, random_texts

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture
def exact_fp32():
    """fp32 matmuls without TF32 for the references (the library turns TF32 on for training)."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(before)


def test_bf16_forward_agrees_with_fp32_and_fp32_gpu_with_cpu(tiny_models, exact_fp32):
    samples = padded_samples()
    cpu = build_tiny_arc(tiny_models, seed=5).eval()
    full = build_tiny_arc(tiny_models, seed=5).eval().cuda()
    half = build_tiny_arc(tiny_models, seed=5).eval()
    cast_weights(half.decoders, torch.bfloat16)
    half.cuda()
    with torch.no_grad():
        reference, n = cpu(samples, 0)
        on_gpu, n_gpu = full(samples, 0)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low, n_low = half(samples, 0)
    assert n == n_gpu == n_low
    assert on_gpu.item() / n == pytest.approx(reference.item() / n, rel=1e-4)
    assert low.item() / n == pytest.approx(reference.item() / n, rel=2e-2)


def test_checkpointing_changes_nothing_on_the_gpu(tiny_models, exact_fp32):
    samples = padded_samples()
    results = []
    for checkpointed in (False, True):
        arc = build_tiny_arc(tiny_models, seed=5, decoders=[tiny_models["llama"], tiny_models["llama-wide"]])
        arc.train().cuda()
        if checkpointed:
            enable_activation_checkpointing(arc)
        results.append(losses_and_gradients(arc, samples))
    for (loss, grads, saved), (ck_loss, ck_grads, ck_saved) in zip(*results):
        torch.testing.assert_close(ck_loss, loss, rtol=0, atol=1e-5)
        assert set(ck_grads) == set(grads) and ck_saved < 0.5 * saved
        for name, grad in grads.items():
            torch.testing.assert_close(ck_grads[name], grad, rtol=0, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


class OneRankGroup(Runtime):
    """A process group of one: the trainer shards with FSDP2 as it would on many GPUs."""

    @property
    def distributed(self) -> bool:
        return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_one_rank_fsdp2_step_matches_the_plain_step(tiny_models, tmp_path):
    from torch.distributed.tensor import DTensor

    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        records, updates = {}, {}
        for parallel, runtime in (("fsdp", OneRankGroup(0, 1, device)), ("plain", Runtime(0, 1, device))):
            config = config_from_dict(
                {
                    "data": {"kind": "pretrain"},
                    "steps": 2,
                    "device": "cuda",
                    "precision": "bf16",
                    "parallel": "fsdp" if parallel == "fsdp" else "ddp",
                    "out_dir": str(tmp_path / parallel),
                    "log": {"progress": False, "plot": False},
                }
            )
            arc = build_tiny_arc(tiny_models, seed=7)
            before = arc.adapters[0].up.weight.detach().clone()
            trainer = Trainer(config, arc, TokenBatches(random_texts(4, 12), 2), runtime=runtime)
            records[parallel] = trainer.train_step()
            weight = arc.adapters[0].up.weight
            if parallel == "fsdp":
                assert isinstance(weight, DTensor)  # sharded (over one rank), as on eight
                weight = weight.full_tensor()
            updates[parallel] = (weight.detach().cpu() - before).float()
        # FSDP2 gathers bf16 parameters (MixedPrecisionPolicy); the plain step autocasts: bf16 either way
        assert records["fsdp"]["loss"] == pytest.approx(records["plain"]["loss"], rel=2e-2)
        assert records["fsdp"]["grad_norm"] == pytest.approx(records["plain"]["grad_norm"], rel=5e-2)
        # AdamW's first step moves each weight by about lr * sign(gradient): the same signs, bar a few
        size = updates["plain"].abs().mean()
        assert size > 0 and (updates["fsdp"] - updates["plain"]).abs().mean() < 0.2 * size
    finally:
        torch.distributed.destroy_process_group()


def test_eval_runs_on_cuda_in_bf16(saved_model, tmp_path):
    folder, _ = saved_model
    data = write_fixture(tmp_path / "tiny.jsonl", n=5)
    out = tmp_path / "eval.json"
    args = ["eval", "--model", folder, "--task", "squad", "--data", str(data), "--methods", "arc", "--shots", "1"]
    args += ["--limit", "2", "--max-new-tokens", "2", "--no-progress", "--device", "cuda", "--dtype", "bf16"]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = json.loads(out.read_text())["runs"][0]["config"]
    assert config["device"].startswith("cuda") and config["dtype"] == "bfloat16"
