"""FSDP2 from rank 0's weights (training/sharded_build.py): rank 1 never holds the whole model,
yet the shards are bitwise the weights one process builds, and the first step's loss is the same."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from arc_encoder.training.model_init import build_model
from arc_encoder.training.sharded_build import model_structure
from arc_encoder.training.trainer import Trainer, seed_everything
from test_train_distributed import run_two_ranks
from train_worker import GLOBAL_BATCH, TEXTS, distributed_config
from training_data import TokenBatches

MODES = ("fsdp", "fsdp-replicate")


@pytest.fixture(scope="module")
def two_ranks(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded")
    run_two_ranks("sharded_build_worker.py", out, tiny_models, timeout=240)
    return out


def one_process(tiny_models, out_dir, mode: str):
    """(state dict, buffers, parameter elements, first step's loss) of the same run in one
    process, every tensor whole."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = distributed_config(out_dir, tiny_models["llama"], tiny_models["llama-wide"], mode, 1)
        config.eval.every = 0
        seed_everything(0)
        trainer = Trainer(config, build_model(config, log=lambda *_: None), TokenBatches(TEXTS, GLOBAL_BATCH), None)
        state = {k: v.clone() for k, v in trainer.arc.state_dict().items()}
        buffers = {k: v.clone() for k, v in trainer.arc.named_buffers()}
        elements = sum(p.numel() for p in trainer.arc.parameters())
        return state, buffers, elements, trainer.train_step()["loss"]
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("mode", MODES)
def test_shards_from_rank0_equal_one_process_build(two_ranks, tiny_models, tmp_path, mode):
    state, buffers, elements, loss = one_process(tiny_models, tmp_path / "one", mode)
    ranks = [json.loads((two_ranks / f"{mode}-rank{r}.json").read_text()) for r in range(2)]
    # rank 1 built no weights: every tensor on the meta device, no storage, before sharding
    assert ranks[1]["before"] == {"devices": ["meta"], "bytes": 0}, ranks[1]
    assert ranks[0]["before"]["devices"] == ["cpu"]
    if mode == "fsdp":  # after sharding each rank holds about half of every tensor
        assert ranks[1]["after"]["local_elements"] < 0.55 * elements
    # gathered from the shards: bitwise the weights (decoders included) one process builds
    gathered = load_file(str(two_ranks / f"{mode}-state.safetensors"))
    assert set(gathered) == set(state)
    for name, value in state.items():
        assert gathered[name].dtype == value.dtype and torch.equal(gathered[name], value), name
    # the RoPE tables, in no state dict, reached rank 1 too
    for rank in range(2):
        held = load_file(str(two_ranks / f"{mode}-rank{rank}-buffers.safetensors"))
        assert set(held) == set(buffers)
        for name, value in buffers.items():
            assert torch.equal(held[name], value), (rank, name)
    # the first step: the ranks agree exactly; one process sums the same global batch in another order
    assert ranks[0]["loss"] == ranks[1]["loss"]
    assert ranks[0]["loss"] == pytest.approx(loss, rel=1e-6, abs=0)


def test_meta_structure_matches_the_built_model(tiny_models, tmp_path):
    config = distributed_config(tmp_path, tiny_models["llama"], tiny_models["llama-wide"], "fsdp", 1)
    built, meta = build_model(config, log=lambda *_: None), model_structure(config)
    shapes = {n: (tuple(t.shape), t.dtype) for n, t in built.state_dict().items()}
    assert {n: (tuple(t.shape), t.dtype) for n, t in meta.state_dict().items()} == shapes
    assert all(t.is_meta for t in (*meta.parameters(), *meta.buffers()))
    assert [n for n, _ in meta.named_buffers()] == [n for n, _ in built.named_buffers()]
