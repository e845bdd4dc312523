"""Cached teacher logits for distillation: equal to a fresh teacher forward, refused for another
decoder or data file, and the top-k KL against a hand computation."""

from __future__ import annotations

import math
import re

import pytest
import torch
import yaml
from typer.testing import CliRunner

from arc_encoder.cli import app
from arc_encoder.model import distill
from arc_encoder.model.distill import Distillation, kl_to_teacher, kl_to_top_k, teacher_top_k
from arc_encoder.model.splice import Sample
from arc_encoder.model.teacher_cache import (
    MissingTeacherLogits,
    TeacherCache,
    file_fingerprint,
    weights_fingerprint,
)
from arc_encoder.training.config import config_from_dict
from arc_encoder.training.distill_cache import build_teacher_cache
from arc_encoder.training.model_init import build_model
from arc_encoder.training.trainer import Trainer, build_data
from conftest import CORPUS
from training_data import tiny_run


def test_top_k_kl_by_hand():
    # one row over a vocabulary of 4; the teacher's top-2 are tokens 2 (logit 3) and 0 (logit 1)
    student = torch.tensor([[0.5, 2.0, -1.0, 0.0]])
    values, indices = torch.tensor([[3.0, 1.0]]), torch.tensor([[2, 0]])
    T = 2.0
    p = [math.exp(3 / T) / (math.exp(3 / T) + math.exp(1 / T)), math.exp(1 / T) / (math.exp(3 / T) + math.exp(1 / T))]
    q = [
        math.exp(-1 / T) / (math.exp(-1 / T) + math.exp(0.5 / T)),
        math.exp(0.5 / T) / (math.exp(-1 / T) + math.exp(0.5 / T)),
    ]
    expected = T**2 * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert math.isclose(float(kl_to_top_k(student, values, indices, T)), expected, rel_tol=1e-6)
    # over the whole vocabulary it is the full KL
    teacher = torch.randn(3, 7)
    student = torch.randn(3, 7)
    full = teacher.topk(7, dim=-1)
    assert torch.allclose(kl_to_top_k(student, *full, 1.5), kl_to_teacher(student, teacher, 1.5), atol=1e-6)


def samples_of(tok):
    seg = tok("the river runs past the old mill", add_special_tokens=False)["input_ids"]
    other = tok("bakers sell bread", add_special_tokens=False)["input_ids"]
    text = tok("where bakers sell bread at dawn", add_special_tokens=False)["input_ids"]
    return [
        Sample(text_ids=text, segments=[seg], offsets=[2], targets=[True] * len(text)),
        # a block first; the first text token is not supervised
        Sample(text_ids=text[:4], segments=[other], offsets=[0], targets=[False, True, True, True]),
    ]


def hand_teacher_rows(arc, sample):
    """The decoder reading text[:offset] + document + text[offset:]: its logits [n, V] at the
    positions predicting each supervised text token (that has something before it)."""
    (seg,), (offset,) = sample.segments, sample.offsets
    ids = sample.text_ids[:offset] + seg + sample.text_ids[offset:]
    logits = arc.decoders[0](input_ids=torch.tensor([ids])).logits[0]
    rows, tokens = [], []
    for k, supervised in enumerate(sample.targets):
        position = k if k < offset else k + len(seg)  # of text token k in the teacher's input
        if supervised and position > 0:
            rows.append(logits[position - 1])
            tokens.append(k)
    return tokens, torch.stack(rows)


def manifest_parts(arc, data_file):
    decoders = [{"name": arc.config.decoders[0], "fingerprint": weights_fingerprint(arc.decoders[0])}]
    return decoders, [file_fingerprint(data_file)]


def test_cached_logits_equal_a_fresh_teacher_forward(tiny_arc, tmp_path):
    arc = tiny_arc(seed=3, special_tokens=False).eval()
    samples = samples_of(arc.encoder_tokenizer)
    data_file = tmp_path / "d.txt"
    data_file.write_text("some text\n")
    cache = TeacherCache.create(tmp_path / "cache", *manifest_parts(arc, data_file), k=5)
    for sample, top in zip(samples, teacher_top_k(arc, samples, 0, 5)):
        cache.put(sample, 0, *top)
    reopened = TeacherCache.open(tmp_path / "cache", *manifest_parts(arc, data_file))
    with torch.no_grad():
        for sample in samples:
            tokens, logits = hand_teacher_rows(arc, sample)
            entry = reopened.get(sample, 0)
            assert entry["tokens"].tolist() == tokens
            values, indices = logits.topk(5, dim=-1)
            assert torch.equal(entry["indices"], indices)
            assert torch.allclose(entry["values"], values, atol=1e-5)
    assert tokens == [1, 2, 3]  # the second sample: its first token is not supervised
    changed = Sample(samples[1].text_ids, samples[1].segments, [0], [False, True, True, False])
    assert not reopened.has(changed, 0) and not reopened.has(samples[1], 1)  # keyed by sample and decoder


def test_cache_kl_equals_the_live_kl_restricted_to_top_k(tiny_arc, tmp_path):
    arc = tiny_arc(seed=3, special_tokens=False).eval()
    sample = samples_of(arc.encoder_tokenizer)[0]
    data_file = tmp_path / "d.txt"
    data_file.write_text("some text\n")
    cache = TeacherCache.create(tmp_path / "cache", *manifest_parts(arc, data_file), k=6)
    cache.put(sample, 0, *teacher_top_k(arc, [sample], 0, 6)[0])
    weight, T, k = 0.7, 2.0, 4
    with torch.no_grad():
        plain, n = arc([sample])
        cached, n2 = arc([sample], distill=Distillation(weight, T, cache, k))
        # student rows by hand, as in test_distill
        dec = arc.decoders[0]
        embed = dec.get_input_embeddings()
        (block,) = arc.decoder_blocks(arc.encode_segments(sample.segments, 0), 0, None)
        text = sample.text_ids
        student = dec(
            inputs_embeds=torch.cat([embed(torch.tensor(text[:2])), block, embed(torch.tensor(text[2:]))])[None]
        )
        student = student.logits[0]
        tokens, teacher = hand_teacher_rows(arc, sample)
    kl = 0.0
    for k_text, teacher_row in zip(tokens, teacher):
        student_row = student[k_text - 1 if k_text < 2 else k_text - 1 + block.shape[0]]
        top = teacher_row.double().topk(k).indices
        p = torch.softmax(teacher_row.double()[top] / T, -1)  # the teacher over its top-k, renormalised
        log_q = torch.log_softmax(student_row.double()[top] / T, -1)  # the student over the same tokens
        kl += float((p * (p.log() - log_q)).sum())
    assert n == n2 == len(tokens)
    assert math.isclose(float(cached - plain), weight * T**2 * kl, rel_tol=1e-4, abs_tol=1e-5)
    with pytest.raises(ValueError, match="holds top-6 logits, not 7"):
        arc([sample], distill=Distillation(weight, T, cache, 7))


def test_a_cache_for_another_decoder_or_data_file_is_refused_by_name(tiny_models, tiny_arc, tmp_path):
    arc = tiny_arc(seed=0)
    data_file, other_file = tmp_path / "wiki.txt", tmp_path / "squad.txt"
    data_file.write_text("some text\n")
    other_file.write_text("other text\n")
    decoders, data = manifest_parts(arc, data_file)
    TeacherCache.create(tmp_path / "cache", decoders, data, k=4)
    assert TeacherCache.open(tmp_path / "cache", decoders, data, k=4).k == 4
    # the same weights, loaded again, have the same fingerprint; another model's differ
    assert weights_fingerprint(tiny_arc(seed=5).decoders[0]) == decoders[0]["fingerprint"]
    other = tiny_arc(seed=0, decoders=[tiny_models["mistral"]])
    other_decoders, _ = manifest_parts(other, data_file)
    with pytest.raises(ValueError, match=re.escape(f"was built for decoder 0 {tiny_models['llama']!r}")) as e:
        TeacherCache.open(tmp_path / "cache", other_decoders, data)
    assert tiny_models["mistral"] in str(e.value)
    same_name = [{**decoders[0], "fingerprint": "0" * 32}]
    with pytest.raises(ValueError, match=f"weights {decoders[0]['fingerprint']}.*weights {'0' * 32}"):
        TeacherCache.open(tmp_path / "cache", same_name, data)
    with pytest.raises(ValueError, match=r"built from data file\(s\) .*wiki.txt.*not from this run's .*squad.txt"):
        TeacherCache.open(tmp_path / "cache", decoders, [file_fingerprint(other_file)])
    data_file.write_text("some text, edited\n")  # same path, other content
    with pytest.raises(ValueError, match="built from data file"):
        TeacherCache.open(tmp_path / "cache", decoders, [file_fingerprint(data_file)])
    with pytest.raises(ValueError, match="holds the teacher's top-4 logits; distill.k asks for 8"):
        TeacherCache.open(tmp_path / "cache", decoders, data, k=8)
    with pytest.raises(FileNotFoundError, match="is not a distillation cache"):
        TeacherCache.open(tmp_path / "nowhere", decoders, data)


# ----------------------------------------------------------------------------------- end to end


def run_config(tmp_path, tiny_models, **distill):
    tree = tiny_run(tmp_path, tiny_models)
    tree["distill"] = {"weight": 1.0, "tasks": ["reconstruction", "continuation"], "k": 8, **distill}
    return config_from_dict(tree)


def test_a_run_reads_the_cache_instead_of_the_teacher(tiny_models, tmp_path, monkeypatch):
    config = run_config(tmp_path, tiny_models, cache=str(tmp_path / "cache"))
    counts = build_teacher_cache(config, steps=2, progress=False, log=lambda *_: None)
    assert counts["batches"] == 2 and counts["cached"] + counts["present"] == 4
    again = build_teacher_cache(config, steps=2, progress=False, log=lambda *_: None)
    assert again["cached"] == 0 and again["present"] == 4  # built once per sample

    def no_teacher(*args):
        raise AssertionError("the teacher ran although its logits are cached")

    monkeypatch.setattr(distill, "teacher_logits", no_teacher)
    torch.manual_seed(0)
    arc = build_model(config, log=lambda *_: None)
    trainer = Trainer(config, arc, build_data(config, arc, trainer_runtime()))
    records = [trainer.train_step() for _ in range(2)]
    assert all(math.isfinite(r["loss"]) for r in records)
    with pytest.raises(MissingTeacherLogits, match="extend it with arc-encoder distill-cache"):
        trainer.train_step()  # step 3 was not cached
    # a run on other data is refused before it starts
    other = tmp_path / "other.txt"
    other.write_text("\n\n".join(CORPUS[5:10]) + "\n")
    moved = run_config(tmp_path, tiny_models, cache=str(tmp_path / "cache"))
    moved.data["sources"] = [str(other)]
    with pytest.raises(ValueError, match=r"built from data file\(s\) .*docs.txt.*other.txt"):
        Trainer(moved, arc, build_data(moved, arc, trainer_runtime()))


def trainer_runtime():
    from arc_encoder.training.distributed import Runtime

    return Runtime(0, 1, torch.device("cpu"))


def test_the_distill_cache_command(tiny_models, tmp_path):
    config = run_config(tmp_path, tiny_models, cache=str(tmp_path / "cache"))
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    runner = CliRunner()
    result = runner.invoke(app, ["distill-cache", str(path), "--steps", "1"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "samples cached" in result.output and (tmp_path / "cache" / "manifest.json").is_file()
    result = runner.invoke(app, ["distill-cache", str(path), "distill.k=4", "--steps", "1"])
    assert result.exit_code == 2 and "holds top-8 logits, not 4" in result.output
    result = runner.invoke(app, ["distill-cache", str(path), "distill.cache=null"])
    assert result.exit_code == 2 and "distill.cache must name the folder" in result.output


@pytest.mark.parametrize(
    "distill, message",
    [
        ({"weight": 1.0, "k": 0}, "distill.k must be >= 1, got 0"),
        ({"weight": 1.0, "cache": " "}, "distill.cache must be a folder path or null"),
        ({"weight": 1.0, "cahce": "x"}, "unknown key(s) ['cahce'] in section 'distill'"),
    ],
)
def test_bad_cache_settings_are_named(distill, message):
    with pytest.raises((TypeError, ValueError), match=re.escape(message)):
        config_from_dict({"data": {"kind": "pretrain", "sources": ["x.txt"]}, "distill": distill})


def test_runs_saved_before_the_cache_keys_resume():
    from arc_encoder.training.config import resume_differences

    current = config_from_dict({"data": {"kind": "pretrain", "sources": ["x.txt"]}}).to_dict()
    saved = {**current, "distill": {k: v for k, v in current["distill"].items() if k not in ("cache", "k")}}
    assert resume_differences(saved, current) == []
    cached = {**current, "distill": {**current["distill"], "cache": "runs/teacher"}}
    assert resume_differences(saved, cached) == ["distill.cache: None -> 'runs/teacher'"]
