"""GPU step options: `compile`, `tf32`, fused AdamW. Checked on CPU: the keys, where each takes
effect, and that compiling the blocks (traced by dynamo, no code generation) changes no number."""

from __future__ import annotations

import pytest
import torch

from arc_encoder.training import distributed
from arc_encoder.training.checkpoint import _step_like, load_optimizer_state, optimizer_state
from arc_encoder.training.config import config_from_dict, resume_differences
from arc_encoder.training.distributed import optimizer_options, set_matmul_precision
from test_train_loop import TEXTS, make_config, new_trainer, snapshot
from training_data import TokenBatches


def test_compile_is_off_and_tf32_on_by_default_and_both_are_typed():
    config = config_from_dict({})
    assert config.compile is False and config.tf32 is True
    assert config_from_dict({"compile": True, "tf32": False}).compile is True
    for key in ("compile", "tf32"):
        with pytest.raises(TypeError, match=f"{key}: expected true or false, got 'yes'"):
            config_from_dict({key: "yes"})
    # neither moves a weight: a run may resume with them changed
    before = config_from_dict({}).to_dict()
    assert resume_differences(before, config_from_dict({"compile": True, "tf32": False}).to_dict()) == []


def test_fused_adamw_on_a_gpu_only():
    assert optimizer_options(torch.device("cuda", 0)) == {"fused": True}
    assert optimizer_options(torch.device("cpu")) == {}


def test_tf32_is_set_for_a_gpu_and_left_alone_on_a_cpu():
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        set_matmul_precision(torch.device("cpu"), tf32=True)
        assert torch.get_float32_matmul_precision() == "highest"
        set_matmul_precision(torch.device("cuda"), tf32=True)
        assert torch.get_float32_matmul_precision() == "high"  # TF32 tensor cores
        set_matmul_precision(torch.device("cuda"), tf32=False)
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.set_float32_matmul_precision(before)


def test_a_fused_adamw_resumes_with_its_step_where_the_kernel_wants_it():
    # the fused kernel keeps `step` as a float32 scalar on the parameter's device (the GPU), where
    # the default AdamW keeps it on the CPU; a resumed fused optimizer must get it there
    assert _step_like(torch.tensor(3.0), torch.empty(2, device="meta"), {"fused": True}).device.type == "meta"
    assert _step_like(torch.tensor(3.0), torch.empty(2, device="meta"), {"fused": None}).device.type == "cpu"

    def run(steps, state=None):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(5))
        opt = torch.optim.AdamW([p], lr=0.1, fused=True)  # fused AdamW runs on a CPU too
        if state is not None:
            p.data.copy_(state[0])
            load_optimizer_state(opt, state[1], {p: "p"})
        for _ in range(steps):
            p.grad = torch.sin(p.detach() * 3)
            opt.step()
        return p.detach().clone(), optimizer_state(opt, {p: "p"})

    straight, _ = run(4)
    resumed, _ = run(2, run(2))
    assert torch.equal(straight, resumed)


def test_compiled_checkpointed_blocks_train_as_plain_ones(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "COMPILE_BACKEND", "eager")  # dynamo's tracing, without a C++ compiler
    uneven = [t[: 8 + i] for i, t in enumerate(TEXTS)]  # padded batches
    results = []
    for compiled in (False, True):
        config = make_config(
            tmp_path / str(compiled), tiny_models["llama"], compile=compiled, activation_checkpointing=compiled
        )
        trainer = new_trainer(config, data=TokenBatches(uneven, config.batch_size))
        blocks = list(trainer.arc.encoder.layers) + list(trainer.arc.decoders[0].base_model.layers)
        assert all(getattr(b, "_arc_compiled", False) == compiled for b in blocks)
        losses = [trainer.train_step()["loss"] for _ in range(2)]
        results.append((losses, snapshot(trainer.arc)))
    (plain_losses, plain), (losses, weights) = results
    assert losses == pytest.approx(plain_losses, abs=1e-5)
    for name in plain:
        torch.testing.assert_close(weights[name], plain[name], rtol=0, atol=1e-5)
    assert trainer.optimizer.defaults["fused"] in (None, False)  # a CPU run keeps the default AdamW
