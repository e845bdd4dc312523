"""`data_mix`: batches drawn from several pipelines by share (data/mixture.py), in the config, the
trainer and a resumed run."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch
import yaml
from typer.testing import CliRunner

from arc_encoder.cli import app
from arc_encoder.data.batch import Batch
from arc_encoder.data.mixture import DataMixture
from arc_encoder.data.pretrain import PretrainData, PretrainDataConfig
from arc_encoder.model.saved import list_checkpoints
from arc_encoder.model.splice import Sample
from arc_encoder.training.config import config_from_dict
from arc_encoder.training.run_teacher_cache import data_fingerprints
from conftest import tiny_tokenizer
from training_data import resumed_batches, tiny_run


class Counter:
    """A pipeline whose batches say which pipeline and which of its batches they are."""

    def __init__(self, task: str):
        self.task, self.served = task, 0

    def next_batch(self, decoder: int = 0) -> Batch:
        self.served += 1
        return Batch([Sample([self.served], [], [])], self.task)

    def state_dict(self) -> dict:
        return {"served": self.served}

    def load_state_dict(self, state: dict) -> None:
        self.served = state["served"]


def test_each_batch_comes_whole_from_one_pipeline_at_its_share():
    mix = DataMixture([Counter("finetune"), Counter("lookup")], [0.75, 0.25], random.Random(0))
    batches = [next(mix) for _ in range(4000)]
    lookups = [b for b in batches if b.task == "lookup"]
    assert abs(len(lookups) / 4000 - 0.25) < 0.03  # 4.4 binomial standard deviations
    # each pipeline's batches come in its own order, none skipped
    assert [b.samples[0].text_ids[0] for b in lookups] == list(range(1, len(lookups) + 1))
    assert mix.drawn == [4000 - len(lookups), len(lookups)]


@pytest.mark.parametrize(
    "shares, message",
    [([1.0], "at least two pipelines"), ([0.5, 0.6], "sum to 1"), ([0.0, 1.0], "each lie in (0, 1)")],
)
def test_bad_mixtures_are_refused(shares, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        DataMixture([Counter("finetune") for _ in shares], shares, random.Random(0))


def write_docs(path, n: int) -> str:
    docs = [f"Paragraph {i} tells of the tower by the river, where bakers sell bread at dawn." for i in range(n)]
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return str(path)


def test_a_resumed_mixture_draws_the_same_batches(tmp_path):
    tok = tiny_tokenizer()
    f = write_docs(tmp_path / "d.txt", 200)
    common = dict(compress_tokens=16, target_tokens=8, prefix=False, batch_size=2, shuffle_buffer=8)
    prose = PretrainDataConfig([f], seq_len=16, continuation=0.5, seed=1, **common)
    reading = PretrainDataConfig([f], seq_len=16, objectives={"lookup": 1.0}, lookup_cue_tokens=4, seed=2, **common)

    def make():
        pipelines = [PretrainData(prose, tok, tok), PretrainData(reading, tok, tok)]
        return DataMixture(pipelines, [0.6, 0.4], random.Random("mix"))

    expected, resumed, state = resumed_batches(make, 6, 10)
    assert resumed == expected
    tasks = {b.task for b in expected}
    assert "lookup" in tasks and len(tasks) >= 2
    other = DataMixture([PretrainData(prose, tok, tok), PretrainData(reading, tok, tok)], [0.5, 0.5], random.Random(0))
    with pytest.raises(ValueError, match=r"shares \[0.6, 0.4\], this run has \[0.5, 0.5\]"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="saved by a single pipeline"):
        other.load_state_dict(state["pipelines"][0])


@pytest.mark.parametrize(
    "mix, message",
    [
        ([{"kind": "pretrian", "share": 0.2, "sources": ["x.txt"]}], "data_mix[0].kind must be one of"),
        ([{"kind": "pretrain", "sources": ["x.txt"]}], "every data_mix entry needs a share in (0, 1), got [None]"),
        ([{"kind": "pretrain", "share": 1.5, "sources": ["x.txt"]}], "needs a share in (0, 1), got [1.5]"),
        (
            [{"kind": "pretrain", "share": 0.5, "sources": ["x.txt"]}] * 2,
            "data_mix shares sum to 1.0: they must leave `data` a share > 0",
        ),
        ([{"kind": "pretrain", "share": 0.2, "sources": ["x.txt"], "seq_lne": 8}], "'seq_lne'"),
    ],
)
def test_bad_data_mix_entries_are_named(mix, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        config_from_dict({"data": {"kind": "finetune", "sources": ["q.jsonl"]}, "data_mix": mix})


def test_a_data_mix_entry_must_be_a_section():
    with pytest.raises(TypeError, match=re.escape("data_mix[0]: expected a mapping, got 'pretrain'")):
        config_from_dict({"data": {"kind": "finetune", "sources": ["q.jsonl"]}, "data_mix": ["pretrain"]})


def test_a_training_run_mixes_resumes_and_fingerprints_every_source(tiny_models, tmp_path):
    tree = tiny_run(tmp_path, tiny_models)
    reading = tmp_path / "reading.txt"
    write_docs(reading, 40)
    tree["data_mix"] = [
        {
            "kind": "pretrain",
            "share": 0.5,
            "sources": [str(reading)],
            "seq_len": 16,
            "compress_tokens": 16,
            "prefix": False,
            "objectives": {"lookup": 1.0},
            "lookup_cue_tokens": 4,
            "lookup_target_tokens": 4,
        }
    ]
    tree["checkpoint"] = {"every": 3, "keep": 2}
    tree["steps"] = 6
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(tree))
    assert [f["path"] for f in data_fingerprints(config_from_dict(tree))] == [tree["data"]["sources"][0], str(reading)]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runner = CliRunner()
        result = runner.invoke(app, ["train", str(config), "time_limit_minutes=0.0001"])
        assert result.exit_code == 0, result.output + repr(result.exception)
        assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [1]  # stopped by the time limit
        result = runner.invoke(app, ["train", str(config), "--resume"])
        assert result.exit_code == 0, result.output + repr(result.exception)
        resumed_tasks = read_tasks(tmp_path / "run")
        tree["out_dir"] = str(tmp_path / "straight")
        config.write_text(yaml.safe_dump(tree))
        result = runner.invoke(app, ["train", str(config)])
        assert result.exit_code == 0, result.output + repr(result.exception)
    finally:
        torch.set_num_threads(threads)
    straight = read_tasks(tmp_path / "straight")
    assert "lookup" in straight.values() and set(straight.values()) - {"lookup"}
    assert resumed_tasks == straight  # the same pipeline drawn at every step after the resume


def read_tasks(run) -> dict[int, str]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["task"] for r in records if "task" in r}
