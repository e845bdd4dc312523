"""Training config: schedule values by hand, typos named, overrides typed, shipped YAMLs valid."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from arc_encoder.training.config import (
    OptimConfig,
    config_from_dict,
    load_config,
    resume_differences,
)
from arc_encoder.training.schedule import lr_at, lr_lambda

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


# ----------------------------------------------------------------------------- schedule
def test_linear_warmup_then_cosine_to_final_by_hand():
    # 10 steps, warm-up 4, peak 1.0, final 0.1: warm-up 0.25 0.5 0.75 1.0 (peak at step 3),
    # then cos decay over steps 3..9 (6 intervals)
    lrs = [lr_at(s, 1.0, 10, 4, "linear", 0.1) for s in range(10)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 6)) / 2, abs=1e-15)  # 0.93971
    assert lrs[4] == pytest.approx(0.939711431702997, abs=1e-12)
    assert lrs[6] == pytest.approx(0.55, abs=1e-15)  # halfway: (peak + final) / 2
    assert lrs[9] == 0.1  # exactly the final rate
    assert all(a > b for a, b in zip(lrs[3:], lrs[4:]))


def test_cosine_warmup_and_no_warmup_by_hand():
    assert lr_at(0, 2.0, 10, 4, "cosine", 0.0) == pytest.approx(2.0 * (1 - math.sqrt(0.5)) / 2)  # 0.29289
    assert lr_at(1, 2.0, 10, 4, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_at(3, 2.0, 10, 4, "cosine", 0.0) == 2.0
    # no warm-up: the first step runs at the peak, the last at final_lr
    assert [lr_at(s, 1.0, 5, 0, "linear", 0.2) for s in (0, 2, 4)] == [1.0, pytest.approx(0.6), 0.2]
    with pytest.raises(ValueError, match="outside"):
        lr_at(10, 1.0, 10)


def test_lambda_lr_gives_each_group_its_schedule():
    optim = OptimConfig(warmup_steps=3, warmup="linear", final_lr=1e-6)
    steps, peaks = 12, [1e-3, 3e-2]
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in peaks]
    opt = torch.optim.AdamW([{"params": [p], "lr": lr} for p, lr in zip(params, peaks)])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [lr_lambda(lr, steps, optim) for lr in peaks])
    seen = []
    for _ in range(steps):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    for s, row in enumerate(seen):
        for lr, peak in zip(row, peaks):
            assert lr == pytest.approx(lr_at(s, peak, steps, 3, "linear", 1e-6), rel=1e-12)
    assert seen[2] == pytest.approx(peaks, rel=1e-12)  # warm-up ends exactly at the peak
    assert seen[-1] == pytest.approx([1e-6, 1e-6], rel=1e-9)  # final step exactly final_lr


# ----------------------------------------------------------------------------- validation
BASE = {"data": {"kind": "pretrain", "sources": ["x.txt"]}}


@pytest.mark.parametrize(
    "tree, names",
    [
        ({"stepz": 10}, ["'stepz'", "top level"]),
        ({"optim": {"lr_encodr": 1e-4}}, ["'lr_encodr'", "'optim'"]),
        ({"checkpoint": {"evry": 5}}, ["'evry'", "'checkpoint'"]),
        ({"model": {"arc": {"pooling_factor": [4]}}}, ["'pooling_factor'", "'model.arc'"]),
        ({"eval": {"data": {}, "batchs": 3}}, ["'batchs'", "'eval'"]),
    ],
)
def test_misspelled_key_is_named_with_its_section(tree, names):
    with pytest.raises(ValueError) as err:
        config_from_dict({**BASE, **tree})
    for name in names:
        assert name in str(err.value)


@pytest.mark.parametrize(
    "tree, message",
    [
        ({"steps": "many"}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"optim": {"betas": 0.9}}, "optim.betas"),
        ({"optim": {"warmup": "quadratic"}}, "optim.warmup"),
        ({"freeze_encoder": "no"}, "freeze_encoder"),
        ({"model": {"arc": {"pooling_factors": "4"}}}, "model.arc.pooling_factors"),
        ({"optim": {"warmup_steps": 100}, "steps": 100}, "warmup_steps"),
        ({"optim": {"lr_special": 0}}, "lr_special"),
        ({"data": {"sources": ["x"]}}, "data.kind"),
        ({"model": {"preset": "nope"}}, "preset"),
        ({"optim": "fast"}, "optim"),
        ({"optim": {"lr_encoder": float("nan")}}, "optim.lr_encoder must be a finite number"),
        ({"optim": {"lr_projector": float("inf")}}, "optim.lr_projector must be a finite number"),
        ({"optim": {"betas": [0.9, float("nan")]}}, "optim.betas[1] must be a finite number"),
        ({"optim": {"grad_clip": float("inf")}}, "optim.grad_clip must be a finite number"),
        ({"pooling_schedule": [[1, 5], [2, 3]]}, "pooling_schedule[1]: until_step 3 must be after"),
        ({"pooling_schedule": [[2, 500]], "steps": 100}, "pooling_schedule[0]: until_step 500"),
        ({"pooling_schedule": [[0, 5]]}, "pooling_schedule[0]: factor must be >= 1"),
        ({"pooling_schedule": [[2]]}, "pooling_schedule[0] must be [factor, until_step]"),
        ({"pooling_schedule": [2, 5]}, "pooling_schedule[0]: expected a list"),
        ({"projector_init": "svd"}, "projector_init"),
    ],
)
def test_bad_values_are_named(tree, message):
    with pytest.raises((TypeError, ValueError), match=re.escape(message)):
        config_from_dict({**BASE, **tree})


def test_overrides_are_parsed_and_typed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  kind: pretrain\n  sources: [a.txt]\noptim:\n  lr_encoder: 1.0e-5\n")
    config = load_config(
        path,
        [
            "optim.lr_encoder=1e-4",
            "steps=200",
            "optim.betas=[0.8, 0.9]",
            "model.arc.pooling_factors=[4]",
            "data.seq_len=64",
            "freeze_encoder=true",
            "eval.data.sources=[dev.jsonl]",
        ],
    )
    assert config.optim.lr_encoder == 1e-4 and isinstance(config.optim.lr_encoder, float)
    assert config.steps == 200 and isinstance(config.steps, int)
    assert config.optim.betas == [0.8, 0.9]
    assert config.model.arc == {"pooling_factors": [4]}
    assert config.arc_config().pooling_factors == [4]
    assert config.data == {"kind": "pretrain", "sources": ["a.txt"], "seq_len": 64}
    assert config.freeze_encoder is True
    assert config.eval.data == {"sources": ["dev.jsonl"]}
    with pytest.raises(TypeError, match="steps"):
        load_config(path, ["steps=lots"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(path, ["steps"])
    with pytest.raises(ValueError, match="'stepz'"):
        load_config(path, ["stepz=3"])
    with pytest.raises(ValueError, match="optim.lr_encoder is not a section"):
        load_config(path, ["optim.lr_encoder.x=3"])


def test_environment_variables_and_bad_files(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text(
        'data:\n  kind: pretrain\n  sources: ["${ARC_T_DATA:-/default}/wiki.txt"]\nout_dir: "${ARC_T_OUT}"\n'
    )
    monkeypatch.delenv("ARC_T_DATA", raising=False)
    monkeypatch.setenv("ARC_T_OUT", "/runs/x")
    config = load_config(path)
    assert config.data["sources"] == ["/default/wiki.txt"] and config.out_dir == "/runs/x"
    monkeypatch.setenv("ARC_T_DATA", "/mine")
    assert load_config(path).data["sources"] == ["/mine/wiki.txt"]
    monkeypatch.delenv("ARC_T_OUT")
    with pytest.raises(ValueError, match="ARC_T_OUT"):
        load_config(path)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("steps: [1,\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "twice.yaml").write_text("steps: 10\noptim:\n  lr_encoder: 1e-4\n  lr_encoder: 1e-3\n")
    with pytest.raises(ValueError, match=r"(?s)twice\.yaml is not valid YAML.*key 'lr_encoder' is given twice.*line 4"):
        load_config(tmp_path / "twice.yaml")
    (tmp_path / "latin1.yaml").write_bytes("out_dir: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.yaml is not UTF-8 text"):
        load_config(tmp_path / "latin1.yaml")


DATA = {"kind": "pretrain", "sources": ["wiki.txt"]}


@pytest.mark.parametrize(
    "tree, message",
    [
        ({"data": {**DATA, "continuation": "abc"}}, "data.continuation: expected a number, got 'abc'"),
        ({"data": {**DATA, "prefix": "false"}}, "data.prefix: expected true or false, got 'false'"),
        ({"data": {**DATA, "seqlen": 8}}, "unknown key(s) ['seqlen'] in section 'data'"),
        ({"data": {"kind": "pretrain", "add_eos": "no way"}}, "data.add_eos: expected true or false"),
        ({"data": {**DATA, "continuation": 2.0}}, "continuation must be a share in [0, 1]"),
        ({"data": DATA, "eval": {"every": 5, "data": {"distinct": "yes"}}}, "eval.data.distinct: expected true"),
        ({"model": {"arc": {"bottleneck": 0}}}, "bottleneck must be an integer >= 1 or None"),
        ({"time_limit_minutes": -1}, "time_limit_minutes must be a positive number"),
    ],
)
def test_the_data_section_and_limits_are_checked_before_any_model_loads(tree, message):
    with pytest.raises((TypeError, ValueError), match=re.escape(message)):
        config_from_dict({**BASE, **tree})


def test_resume_differences_allow_only_safe_changes():
    a = config_from_dict({**BASE, "steps": 100}).to_dict()
    b = config_from_dict({**BASE, "steps": 300, "log": {"every": 1}, "checkpoint": {"keep": 5}}).to_dict()
    assert resume_differences(a, b) == []
    c = config_from_dict(
        {**BASE, "optim": {"lr_encoder": 2e-5}, "batch_size": 4, "model": {"arc": {"pooling_factors": [8]}}}
    ).to_dict()
    diffs = resume_differences(a, c)
    assert any(d.startswith("optim.lr_encoder: 1e-05 -> 2e-05") for d in diffs)
    assert any(d.startswith("batch_size: 8 -> 4") for d in diffs)
    assert any(d.startswith("model.arc.pooling_factors") for d in diffs)


# ----------------------------------------------------------------------------- shipped files
def test_configs_are_shipped():
    names = {p.relative_to(p.parents[1] if p.parent.name == "paper" else p.parent).as_posix() for p in CONFIGS}
    for name in [
        "smollm2-arc4-default.yaml",
        "smollm2-arc4-default-finetune.yaml",
        "smollm2-gemma3-adapt.yaml",
        "paper/llama3-arc8-pretrain.yaml",
        "paper/llama3-arc4-finetune.yaml",
        "paper/mistral-arc4-finetune.yaml",
        "paper/llama3-arc8-finetune.yaml",
        "paper/multi-decoder-finetune.yaml",
        "paper/olmo-adapt.yaml",
        "paper/llama2-chat-long-context.yaml",
    ]:
        assert name in names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_validates(path):
    config = load_config(path)
    if config.model.init_from is None:
        config.arc_config()  # the model section builds a valid ARCConfig
    else:
        from arc_encoder.config import ARCConfig

        ARCConfig.from_dict({**ARCConfig().to_dict(), **config.model.arc})
    # the data section is what the pipeline of its kind accepts
    data = pytest.importorskip(
        "arc_encoder.data.pretrain" if config.data["kind"] == "pretrain" else "arc_encoder.data.finetune"
    )
    cls = data.PretrainDataConfig if config.data["kind"] == "pretrain" else data.FinetuneDataConfig
    for section in (config.data, {**config.data, **config.eval.data}):
        cls.from_dict({k: v for k, v in section.items() if k != "kind"})


def test_constant_schedule_holds_the_peak_after_warm_up():
    from arc_encoder.training.schedule import lr_at

    assert [lr_at(s, 1.0, 6, warmup_steps=2, decay="none") for s in range(6)] == [0.5, 1, 1, 1, 1, 1]
    with pytest.raises(TypeError, match="optim.decay"):
        load_config(None, ["optim.decay=linear"])
