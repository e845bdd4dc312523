"""Two CPU ranks (gloo, launched with torchrun) against one process seeing the same global batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train_worker import distributed_config, make_trainer

HERE = Path(__file__).resolve().parent


def run_two_ranks(worker: str, out: Path, tiny_models, timeout: float) -> None:
    """torchrun, 2 CPU ranks (gloo): `worker OUT MODEL WIDE_MODEL`; fails the test on a non-zero exit."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), str(HERE), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(HERE / worker),
        str(out),
        tiny_models["llama"],
        tiny_models["llama-wide"],
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


@pytest.fixture(scope="module")
def two_ranks(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    run_two_ranks("train_worker.py", out, tiny_models, timeout=300)
    return out


@pytest.fixture(scope="module")
def one_rank(tiny_models, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = distributed_config(
            tmp_path_factory.mktemp("one") / "run", tiny_models["llama"], tiny_models["llama-wide"], "ddp", 4
        )
        trainer = make_trainer(config)
        start = {k: v.clone() for k, v in trainer.arc.state_dict().items()}
        trainer.fit()
        return start, {k: v.clone() for k, v in trainer.arc.state_dict().items() if not k.startswith("decoders.")}
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp", "fsdp-replicate"])
def test_two_ranks_match_one_rank(two_ranks, one_rank, parallel):
    start, expected = one_rank
    ranks = [load_file(str(two_ranks / f"{parallel}-rank{r}.safetensors")) for r in range(2)]
    held = {(two_ranks / f"{parallel}-rank{r}-decoders.txt").read_text() for r in range(2)}
    assert held == {"DTensor" if parallel == "fsdp" else "Parameter"}, (parallel, held)
    assert set(ranks[0]) == set(expected)
    for name, value in expected.items():
        # every trainable tensor, the special tokens included, was reduced: the ranks agree exactly
        assert torch.equal(ranks[0][name], ranks[1][name]), f"{parallel}: ranks disagree on {name}"
        # the same global batch: equal up to float summation order, which Adam amplifies a little
        # (an update is ~lr = 2e-3 per step; a rank-local gradient would be off by that much)
        torch.testing.assert_close(ranks[0][name], value, rtol=0, atol=1e-5, msg=lambda m: f"{parallel} {name}: {m}")
    # both decoders were trained (round robin), and <Rec> moved for each
    for name in ("adapters.0.rec", "adapters.1.rec", "adapters.0.up.weight", "adapters.1.up.weight"):
        assert not torch.equal(expected[name], start[name]), name
    # held-out losses were reduced over ranks (rank 1 held fewer batches: no hang)
    records = [json.loads(line) for line in (two_ranks / parallel / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval" in r]
    assert [r["step"] for r in evals] == [0, 2, 4]
    assert {"d0/continuation", "d1/continuation", "d0/continuation/gap", "d1/continuation/gap"} <= set(evals[0]["eval"])
    # the checkpoint rank 0 wrote is the weights the ranks hold
    saved = load_file(str(two_ranks / parallel / "checkpoints" / "step_00000004" / "model.safetensors"))
    for name, value in saved.items():
        assert torch.equal(value, ranks[0][name]), name


def test_a_weight_non_finite_on_one_rank_stops_both_in_fp32_ddp_and_bf16_fsdp(tiny_models, tmp_path):
    # rank 1 alone holds a NaN after step 2's update (its DDP replica, or its FSDP2 shard): both
    # ranks must stop with the named error at that step, within the worker's 60 s collective
    # timeout (a rank stopping alone would leave the other waiting in the next collective)
    run_two_ranks("diverge_worker.py", tmp_path, tiny_models, timeout=240)
    expected = (
        "TrainingDiverged: training stopped at step 2: 1 weight tensor(s) are no longer finite "
        "(first: adapters.0.up.weight); nothing of this step was saved"
    )
    for parallel in ("ddp", "fsdp"):
        for rank in (0, 1):
            outcome = (tmp_path / f"{parallel}-rank{rank}.txt").read_text()
            assert outcome.startswith(expected), f"{parallel} rank {rank}: {outcome}"
    # the FSDP2 run was the bf16 one: bf16 decoders, parameters gathered in bf16 for the forward,
    # fp32 shards and AdamW moments; the DDP run stayed fp32 throughout
    fp32, bf16 = "torch.float32", "torch.bfloat16"
    for rank in (0, 1):
        ddp, fsdp = (json.loads((tmp_path / f"{p}-rank{rank}.json").read_text()) for p in ("ddp", "fsdp"))
        assert ddp == {"decoders": [fp32], "forward": fp32, "trained": [fp32], "moments": [fp32]}, ddp
        assert fsdp == {"decoders": [bf16], "forward": bf16, "trained": [fp32], "moments": [fp32]}, fsdp
    # rank 1's clock passed the time limit after step 1; the ranks decide together at the next
    # log step (2), so both stop there instead of one waiting for the other in a collective
    for rank in (0, 1):
        assert (tmp_path / f"time-rank{rank}.txt").read_text() == "stopped at step 2"
