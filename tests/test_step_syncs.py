"""A training step that never waits for the device, except where it reads its loss (log steps).

On a CPU every tensor is a host tensor, so the test counts the Python-level calls that would read
a device tensor back on a GPU (item, tolist, bool/int/float of a tensor, nonzero, boolean-mask
indexing, .cpu(), .numpy()) and where they come from. Two origins are not this library's and are
left out: torch.optim's AdamW reads its step counters, which it keeps on the host (and fused
AdamW, used on CUDA, reads none); transformers' mask builder reads the decoder's attention mask
once or twice per decoder forward to choose its causal fast path."""

from __future__ import annotations

import collections
import contextlib
import json
from pathlib import Path

import pytest
import torch

from test_train_loop import TEXTS, make_config, new_trainer, snapshot
from training_data import TokenBatches

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "nonzero", "cpu", "numpy")
NOT_OURS = ("torch/optim/", "transformers/masking_utils.py")


@contextlib.contextmanager
def counted_reads():
    """Counter of {(read, file:line of the first frame outside torch's Tensor class): calls}."""
    import traceback

    counts = collections.Counter()

    def origin() -> str:
        for frame in reversed(traceback.extract_stack()[:-2]):
            if not frame.filename.endswith(("torch/_tensor.py", __file__)):
                return f"{frame.filename}:{frame.lineno}"
        return "?"

    def spy(name, real):
        def read(self, *args, **kwargs):
            counts[(name, origin())] += 1
            return real(self, *args, **kwargs)

        return read

    real_getitem = torch.Tensor.__getitem__

    def getitem(self, index):
        parts = index if isinstance(index, tuple) else (index,)
        if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
            counts[("boolean index", origin())] += 1
        return real_getitem(self, index)

    with pytest.MonkeyPatch.context() as patch:
        for name in READS:
            patch.setattr(torch.Tensor, name, spy(name, getattr(torch.Tensor, name)))
        patch.setattr(torch.Tensor, "__getitem__", getitem)
        patch.setattr(torch, "nonzero", spy("torch.nonzero", torch.nonzero))
        yield counts


def ours(counts) -> dict:
    return {k: n for k, n in counts.items() if not any(part in k[1].replace("\\", "/") for part in NOT_OURS)}


@pytest.fixture
def padded_trainer(tiny_models, tmp_path):
    """Two micro-batches of texts of different lengths (padded rows), clipping on."""
    config = make_config(tmp_path, tiny_models["llama"], steps=4, log__every=4, optim__grad_accum=2)
    return new_trainer(config, TokenBatches(TEXTS, 4))


def test_an_unchecked_step_reads_nothing_back(padded_trainer):
    with counted_reads() as counts:
        record = padded_trainer.train_step(check=False)
    assert ours(counts) == {}, ours(counts)
    mask_reads = sum(n for (_, where), n in counts.items() if "masking_utils" in where)
    assert mask_reads <= 2 * 2  # transformers: at most two reads per decoder forward, two micro-batches
    assert isinstance(record["loss"], torch.Tensor) and isinstance(record["grad_norm"], torch.Tensor)


def test_a_checked_step_reads_its_loss(padded_trainer):
    # the counter sees the reads of a log step: it is not blind
    with counted_reads() as counts:
        record = padded_trainer.train_step(check=True)
    reads = ours(counts)
    assert any(Path(where.rsplit(":", 1)[0]).name == "trainer.py" for _, where in reads), reads
    assert isinstance(record["loss"], float) and isinstance(record["tokens"], int)


def test_unchecked_steps_train_bitwise_as_checked_ones(tiny_models, tmp_path):
    # clipping active (a small grad_clip), two micro-batches: every step checked, or only the 4th
    runs = []
    for every in (1, 4):
        config = make_config(
            tmp_path / str(every), tiny_models["llama"], steps=4, log__every=every, optim__grad_clip=0.05
        )
        trainer = new_trainer(config)
        trainer.fit()
        runs.append((snapshot(trainer.arc), (Path(config.out_dir) / "metrics.jsonl").read_text().splitlines()))
    (checked, log_checked), (unchecked, log_unchecked) = runs
    for name, value in checked.items():
        assert torch.equal(value, unchecked[name]), name
    last = [json.loads(lines[-1]) for lines in (log_checked, log_unchecked)]
    for key in ("step", "loss", "grad_norm", "tokens", "input_tokens"):  # the same step-4 record
        assert last[0][key] == last[1][key], key


def test_a_nan_in_an_unchecked_step_stops_at_the_next_check(tiny_models, tmp_path):
    from arc_encoder.training.trainer import TrainingDiverged

    config = make_config(tmp_path, tiny_models["llama"], steps=4, log__every=4)
    trainer = new_trainer(config)
    trainer.train_step(check=False)
    trainer.arc.adapters[0].down.weight.data[0, 0] = float("nan")  # step 2's loss is NaN
    trainer.train_step(check=False)
    with pytest.raises(TrainingDiverged, match="step 3: the loss or gradient norm of step 2 was not finite"):
        trainer.train_step(check=True)
