"""The whole quickstart on tiny models and a few steps: every stage's outputs exist and parse."""

import dataclasses
import json
import shutil

import pytest

import arc_encoder.quickstart as quickstart
from arc_encoder.evaluation import metrics
from arc_encoder.evaluation.tasks import load_jsonl
from arc_encoder.quickstart import QuickstartConfig, find_data, run_quickstart
from conftest import SHARED_DATA


@pytest.mark.skipif(not (SHARED_DATA / "squad" / "dev.jsonl").exists(), reason="shared data absent")
def test_tiny_quickstart_end_to_end(tiny_models, tmp_path, monkeypatch):
    q = QuickstartConfig(
        out=str(tmp_path / "qs"),
        data=str(SHARED_DATA),
        preset="smollm2-arc8",
        arc={
            "backbone": tiny_models["llama-long"],
            "decoders": [tiny_models["llama-long"]],
            "drop_layers": 1,
            "bottleneck": 16,
            "chunk_tokens": 256,
        },
        pretrained=False,
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
        quickstart, "train_stage", lambda build, *a: trained.append(build(2).out_dir) or real(build, *a)
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


def test_stage_schedules_follow_the_calibrated_steps(tmp_path):
    """Warm-up and the pooling-factor curriculum are set from the real step count, not a placeholder."""
    q = QuickstartConfig()
    long = quickstart.pretrain_config(q, tmp_path, tmp_path / "p", 300)
    assert long.optim.warmup_steps == quickstart.PRETRAIN_WARMUP
    assert long.pooling_schedule == [[1, 60], [2, 120]] and long.projector_init == "lstsq"
    x8 = dataclasses.replace(q, arc={"pooling_factors": [8]})
    assert quickstart.pretrain_config(x8, tmp_path, tmp_path / "p", 10).pooling_schedule == [[1, 2], [2, 4]]
    x2 = dataclasses.replace(q, arc={"pooling_factors": [2]})
    assert quickstart.pretrain_config(x2, tmp_path, tmp_path / "p", 10).pooling_schedule == [[1, 2]]
    assert quickstart.pretrain_config(q, tmp_path, tmp_path / "p", 2).pooling_schedule == []
    assert quickstart.pretrain_config(q, tmp_path, tmp_path / "p", 40).optim.warmup_steps == 8
    held = long.eval.data
    assert held["distinct"] and held["samples_per_document"] == 1 and held["curriculum"] == []
    scratch = dataclasses.replace(q, from_scratch=True)
    ft = quickstart.finetune_config(scratch, tmp_path, tmp_path / "p", 4, tmp_path / "f", 100)
    assert ft.optim.warmup_steps == quickstart.FINETUNE_WARMUP
    assert ft.model.arc["pooled_receptive_field"] == 0 and ft.model.arc["pooling_factors"] == [4]
    # from a trained model, its own encoder settings stand
    assert quickstart.finetune_config(q, tmp_path, "smollm2-arc4", 4, tmp_path / "f", 9).model.arc == {
        "pooling_factors": [4]
    }


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
