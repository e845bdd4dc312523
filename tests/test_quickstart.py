"""The whole quickstart on tiny models and a few steps: every stage's outputs exist and parse."""

import dataclasses
import json
import os
import shutil

import pytest

import arc_encoder.quickstart as quickstart
from arc_encoder.evaluation import metrics
from arc_encoder.evaluation.tasks import load_jsonl
from arc_encoder.quickstart import (
    CONFIGS,
    FINETUNE_CONFIG,
    PRETRAIN_CONFIG,
    QuickstartConfig,
    find_data,
    run_quickstart,
)
from arc_encoder.training.config import load_config
from conftest import SHARED_DATA


@pytest.mark.skipif(not (SHARED_DATA / "squad" / "dev.jsonl").exists(), reason="shared data absent")
def test_tiny_quickstart_end_to_end(tiny_models, tmp_path, monkeypatch):
    q = QuickstartConfig(
        out=str(tmp_path / "qs"),
        data=str(SHARED_DATA),
        model={
            "preset": "smollm2-arc8",
            "arc": {
                "backbone": tiny_models["llama-long"],
                "decoders": [tiny_models["llama-long"]],
                "drop_layers": 1,
                "bottleneck": 16,
                "chunk_tokens": 256,
            },
            "pretrained": False,
        },
        from_scratch=True,
        finetune_factors=[4, 8],
        finetune_shots=1,
        eval_shots=2,
        eval_questions=6,
        pretrain_steps=3,
        finetune_steps=2,
        pretrain_batch=2,
        finetune_batch=2,
    )
    report = run_quickstart(q)
    out = tmp_path / "qs"
    for name in (
        "report.json",
        "report.png",
        "model/arc_config.json",
        "model/model.safetensors",
        "predictions-arc4.json",
        "predictions-arc8.json",
        "pretrain/metrics.jsonl",
    ):
        assert (out / name).is_file(), name
    saved = json.loads((out / "report.json").read_text())
    assert saved["pretrain"]["steps"] == 3
    # the table is computed from the evaluated answers: recompute EM from the saved predictions
    predictions = json.loads((out / "predictions-arc4.json").read_text())
    for row in saved["table"]:
        if row["method"] != "arc8":
            rows = predictions["arc" if row["method"] == "arc4" else row["method"]]
            assert len(rows) == 6
            em = 100 * sum(metrics.exact_match(r["prediction"], r["answers"]) for r in rows) / len(rows)
            assert row["em"] == pytest.approx(em)
    assert {r["method"] for r in saved["table"]} == {"closed", "open", "arc4", "mismatched", "truncate", "arc8"}
    # ARC - closed is the mean of the per-question EM differences
    by_id = {r["id"]: r["em"] for r in predictions["closed"]}
    diffs = [r["em"] - by_id[r["id"]] for r in predictions["arc"]]
    assert saved["arc_minus_closed_em"]["diff"] == pytest.approx(sum(diffs) / len(diffs))
    assert report["example"]["vectors"] >= 1

    # An interrupted run continues with --resume: finished stages are reused, not retrained.
    with pytest.raises(FileExistsError, match="--resume"):
        run_quickstart(q)
    shutil.rmtree(out / "finetune-x8" / "checkpoints")  # as if stopped while fine-tuning at x8
    trained = []
    real = quickstart.train_stage
    monkeypatch.setattr(
        quickstart, "train_stage", lambda config, *a: trained.append(config.out_dir) or real(config, *a)
    )
    with pytest.raises(ValueError, match="pretrain_steps"):  # other settings: not the same run
        run_quickstart(dataclasses.replace(q, resume=True, pretrain_steps=4))
    resumed = run_quickstart(dataclasses.replace(q, resume=True, eval_questions=3))
    assert trained == [str(out / "finetune-x8")]
    assert resumed["pretrain"] == saved["pretrain"] | {"seconds": 0.0}
    assert resumed["finetune"]["4"]["checkpoint"] == saved["finetune"]["4"]["checkpoint"]
    assert json.loads((out / "report.json").read_text())["evaluation"]["arc4"]["questions"] == 3


@pytest.mark.skipif(not (SHARED_DATA / "squad" / "dev.jsonl").exists(), reason="shared data absent")
def test_tiny_demo_from_a_shipped_model(tiny_arc, tiny_models, tmp_path, monkeypatch):
    """The default path (make demo): the shipped model's table first, then further fine-tuning."""
    from arc_encoder.model import delta

    long = tiny_models["llama-long"]
    tiny_arc(backbone=long, decoders=[long], chunk_tokens=256, bottleneck=16, pooling_factors=[4]).save_delta(
        tmp_path / "tiny-shipped"
    )
    sha = json.loads((tmp_path / "tiny-shipped" / "arc_config.json").read_text())["sha256"]
    monkeypatch.setattr(delta, "SHIPPED_DIR", tmp_path)
    monkeypatch.setitem(delta.SHIPPED, "tiny-shipped", sha)
    q = QuickstartConfig(
        out=str(tmp_path / "demo"),
        data=str(SHARED_DATA),
        start_from="tiny-shipped",
        eval_shots=2,
        eval_questions=5,
        finetune_steps=2,
        finetune_batch=2,
    )
    report = run_quickstart(q)
    assert report["pretrain"] is None
    labels = [r["method"] for r in report["table"]]
    assert labels == ["closed", "open", "arc4 shipped", "mismatched", "truncate", "arc4 fine-tuned"]
    assert report["finetune"]["4"]["steps"] == 2
    shipped = json.loads((tmp_path / "demo" / "predictions-arc4-shipped.json").read_text())
    tuned = json.loads((tmp_path / "demo" / "predictions-arc4-fine-tuned.json").read_text())
    assert [r["id"] for r in tuned["arc"]] == [r["id"] for r in shipped["arc"]]  # the same questions
    diffs = [a["em"] - b["em"] for a, b in zip(tuned["arc"], shipped["arc"])]
    assert report["arc4_fine-tuned_minus_arc4_shipped_em"]["diff"] == pytest.approx(sum(diffs) / len(diffs))
    assert set(report["example"]["answers"]) == set(labels)


def test_stages_are_the_shipped_configs(tmp_path):
    """What a stage trains is configs/smollm2-arc4-default*.yaml, read as `arc-encoder train`
    reads it: only the output folder, the data folder, the final-only checkpoint and the options
    a user set differ."""
    q = QuickstartConfig()
    data = tmp_path / "data"
    os.environ["ARC_ENCODER_DATA"] = str(data)
    try:
        pre_yaml = load_config(CONFIGS / PRETRAIN_CONFIG)
        ft_yaml = load_config(CONFIGS / FINETUNE_CONFIG)
    finally:
        del os.environ["ARC_ENCODER_DATA"]

    def same_run(a, b, *differing):
        skip = {"out_dir", "device", "checkpoint", *differing}
        return {k: v for k, v in a.to_dict().items() if k not in skip} == {
            k: v for k, v in b.to_dict().items() if k not in skip
        }

    pre = quickstart.pretrain_stage_config(q, data, tmp_path / "qs")
    assert same_run(pre, pre_yaml)
    assert pre.out_dir == str(tmp_path / "qs" / "pretrain") and pre.checkpoint.every == 0
    assert pre.data["sources"] == [str(data / "prose/wiki.txt")]

    shipped = quickstart.finetune_stage_config(q, data, "smollm2-arc4", 4, tmp_path / "qs")
    assert same_run(shipped, ft_yaml, "model", "seed")
    # its own factor, and only its first decoder (the shipped model may serve several)
    assert shipped.model.init_from == "smollm2-arc4" and shipped.model.arc == {"decoders": ["smollm2-135m"]}
    assert shipped.seed == ft_yaml.seed + 1  # another data order than the shipped model's

    options = dataclasses.replace(
        q, from_scratch=True, finetune_shots=3, finetune_batch=2, finetune_freeze_encoder=False
    )
    scratch = quickstart.finetune_stage_config(options, data, tmp_path / "p", 8, tmp_path / "qs")
    assert scratch.model.arc == {"pooling_factors": [8]} and scratch.seed == ft_yaml.seed
    assert scratch.data["n_shots"] == 3 and scratch.batch_size == 2 and not scratch.freeze_encoder
    assert scratch.out_dir == str(tmp_path / "qs" / "finetune-x8")


def test_a_shorter_run_keeps_the_shape_of_the_schedule(tmp_path):
    """Warm-up, the pooling-factor and span-length curricula and the evaluation cadence are
    shares of the run: at another step count they keep their share."""
    config = quickstart.pretrain_stage_config(QuickstartConfig(), tmp_path, tmp_path / "qs")
    assert (config.steps, config.optim.warmup_steps, config.pooling_schedule) == (480, 20, [[1, 40], [2, 100]])
    half = quickstart.at_steps(config, 240)
    assert half.steps == 240 and half.optim.warmup_steps == 10 and half.pooling_schedule == [[1, 20], [2, 50]]
    assert half.eval.every == config.eval.every // 2 and half.optim.lr_encoder == config.optim.lr_encoder
    tiny = quickstart.at_steps(config, 6)  # stretches shorter than a step vanish
    assert tiny.optim.warmup_steps == 0 and tiny.pooling_schedule == [[2, 1]] and tiny.eval.every == 1
    assert quickstart.at_steps(config, 2).pooling_schedule == []
    evaluations = config.steps // config.eval.every
    for steps in (6, 15, 31, 133):  # rounded up: a short run never evaluates more often than the config's
        shorter = quickstart.at_steps(config, steps)
        assert steps // shorter.eval.every <= evaluations
    long = load_config(CONFIGS / "smollm2-arc4-default-long.yaml")  # a span-length curriculum
    assert quickstart.at_steps(long, long.steps * 2).data["curriculum_batches"] == 2 * long.data["curriculum_batches"]


def test_the_budget_sizes_the_run(tmp_path, monkeypatch):
    """Without a fixed step count, the steps that fit the budget at the timed step cost, and a time
    limit of what is left: the run never overruns."""
    config = quickstart.finetune_stage_config(QuickstartConfig(), tmp_path, "smollm2-arc4", 4, tmp_path / "qs")
    runs = []
    monkeypatch.setattr(quickstart, "seconds_per_step", lambda c, folder: (2.0, 10.0))  # 2.5 s with the margin
    monkeypatch.setattr(quickstart, "run", lambda c: runs.append(c) or tmp_path / "ckpt")
    checkpoint, steps, _ = quickstart.train_stage(config, budget_s=110.5, fixed_steps=None)
    (trained,) = runs
    assert checkpoint == tmp_path / "ckpt" and steps == trained.steps == 40  # (110.5 - 10) / 2.5, rounded down
    assert trained.time_limit_minutes == pytest.approx(100.5 / 60, rel=0.01)
    assert trained.optim.warmup_steps == int(config.optim.warmup_steps * 40 / config.steps)
    quickstart.train_stage(config, budget_s=110.5, fixed_steps=7)
    assert runs[-1].steps == 7 and runs[-1].time_limit_minutes is None


@pytest.mark.skipif(not (SHARED_DATA / "squad" / "dev.jsonl").exists(), reason="shared data absent")
def test_step_time_is_measured_through_the_trainer(tiny_arc, tiny_models, tmp_path, monkeypatch):
    from arc_encoder.model import delta

    long = tiny_models["llama-long"]
    tiny_arc(backbone=long, decoders=[long], bottleneck=16).save_delta(tmp_path / "tiny-shipped")
    sha = json.loads((tmp_path / "tiny-shipped" / "arc_config.json").read_text())["sha256"]
    monkeypatch.setattr(delta, "SHIPPED_DIR", tmp_path)
    monkeypatch.setitem(delta.SHIPPED, "tiny-shipped", sha)
    q = QuickstartConfig(finetune_batch=2)
    config = quickstart.finetune_stage_config(q, SHARED_DATA, "tiny-shipped", 4, tmp_path / "qs")
    per_step, around = quickstart.seconds_per_step(config, tmp_path / "timing")
    assert 0 < per_step < 60 and around > 0
    assert not (tmp_path / "timing").exists()  # the timing run leaves nothing behind


def test_missing_data_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("ARC_ENCODER_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(quickstart, "__file__", str(tmp_path / "a" / "b" / "c" / "quickstart.py"))
    with pytest.raises(FileNotFoundError, match="--data"):
        find_data(str(tmp_path / "nowhere"))


@pytest.mark.skipif(not (SHARED_DATA / "squad" / "dev.jsonl").exists(), reason="shared data absent")
def test_question_count_follows_the_budget(tiny_arc, tiny_models, monkeypatch):
    long = tiny_models["llama-long"]  # open-book 2-shot SQuAD prompts need ~2,000 positions here
    model = tiny_arc(backbone=long, decoders=[long], chunk_tokens=256).eval()
    dev = load_jsonl(SHARED_DATA / "squad" / "dev.jsonl")[:20]
    calls = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda prompts, **kw: calls.append(len(prompts)) or real(prompts, **kw))
    ticks = iter(range(0, 1000, 1))  # perf_counter: every generate call takes 1 "second"
    monkeypatch.setattr(quickstart.time, "perf_counter", lambda: next(ticks))
    n = quickstart.eval_question_count(model, dev, shots=2, budget_s=800.0, methods=5, batch=4)
    assert calls == [4, 4]  # one batch of open-book, one of ARC prompts, each a batch of 4 prompts
    # 1 s per batch of 4: 0.25 s open + 4 x 0.25 s ARC per question; 80% of 800 s / 1.25 s
    assert n == 512
    assert quickstart.eval_question_count(model, dev, shots=2, budget_s=1.0, methods=5, batch=4) == 50
