"""Distillation to the decoder reading the raw document, against a hand computation."""

import math
import re

import pytest
import torch

from arc_encoder.model.distill import Distillation, teacher_inputs
from arc_encoder.model.splice import Sample
from arc_encoder.training.config import config_from_dict


def test_teacher_inputs_put_the_document_in_place_of_its_block():
    # text t0 t1 t2, block at offset 1 standing for d0..d3 (the module docstring's example)
    sample = Sample(text_ids=[10, 11, 12], segments=[[1, 2, 3]], offsets=[1], targets=[True] * 3)
    texts, predictors = teacher_inputs([sample], [[[20, 21, 22, 23]]], [(0, 1), (0, 2)])
    assert texts == [[10, 20, 21, 22, 23, 11, 12]]
    assert predictors == [(0, 4), (0, 5)]  # t1 predicted by d3, t2 by t1
    # two blocks, one at the very start
    two = Sample(text_ids=[10, 11], segments=[[1], [2]], offsets=[0, 1], targets=[True, True])
    texts, predictors = teacher_inputs([two], [[[20], [30, 31]]], [(0, 0), (0, 1)])
    assert texts == [[20, 10, 30, 31, 11]] and predictors == [(0, 0), (0, 3)]


def test_distilled_loss_adds_the_weighted_kl_computed_by_hand(tiny_arc):
    arc = tiny_arc(seed=3, special_tokens=False).eval()
    tok = arc.encoder_tokenizer
    seg = tok("the river runs past the old mill", add_special_tokens=False)["input_ids"]
    text = tok("where bakers sell bread at dawn", add_special_tokens=False)["input_ids"]
    sample = Sample(text_ids=text, segments=[seg], offsets=[2], targets=[True] * len(text))
    weight, temperature = 0.7, 2.0
    with torch.no_grad():
        plain, n = arc([sample])
        distilled, n2 = arc([sample], distill=Distillation(weight, temperature))
        # student: the decoder reading text[:2], the block, text[2:], as one embedded sequence
        dec = arc.decoders[0]
        embed = dec.get_input_embeddings()
        (block,) = arc.decoder_blocks(arc.encode_segments([seg], 0), 0, None)
        m = block.shape[0]
        student_in = torch.cat([embed(torch.tensor(text[:2])), block, embed(torch.tensor(text[2:]))])
        student = dec(inputs_embeds=student_in[None]).logits[0]  # [L, V]
        teacher = dec(input_ids=torch.tensor([text[:2] + seg + text[2:]])).logits[0]
    # rows predicting text token k (k = 0 has nothing before it)
    student_rows = [k - 1 if k < 2 else k - 1 + m for k in range(1, len(text))]
    teacher_rows = [k - 1 if k < 2 else k - 1 + len(seg) for k in range(1, len(text))]
    kl = 0.0
    for s_row, t_row in zip(student_rows, teacher_rows):
        p_t = torch.softmax(teacher[t_row].double() / temperature, -1)
        log_p_s = torch.log_softmax(student[s_row].double() / temperature, -1)
        kl += float((p_t * (p_t.log() - log_p_s)).sum())
    assert n == n2 == len(text) - 1
    assert math.isclose(float(distilled - plain), weight * temperature**2 * kl, rel_tol=1e-4, abs_tol=1e-5)
    assert kl > 0  # the vectors are not the text: there is something to distill


def test_distillation_gets_gradients_and_leaves_the_decoder_frozen(tiny_arc):
    arc = tiny_arc(seed=1).train()
    tok = arc.encoder_tokenizer
    seg = tok("the old mill and the town", add_special_tokens=False)["input_ids"]
    text = tok("bakers sell bread", add_special_tokens=False)["input_ids"]
    sample = Sample(text_ids=text, segments=[seg], offsets=[0], targets=[True] * len(text))
    loss, _ = arc([sample], distill=Distillation(1.0))
    loss.backward()
    assert arc.adapters[0].up.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in arc.decoders.parameters())


@pytest.mark.parametrize(
    "distill, message",
    [
        ({"weight": -1.0}, "distill.weight must be a finite number >= 0"),
        ({"weight": float("nan")}, "distill.weight must be a finite number >= 0"),
        ({"weight": 1.0, "temperature": 0}, "distill.temperature must be a finite number > 0"),
        ({"weight": 1.0, "tasks": ["reconstrution"]}, "distill.tasks: unknown task(s) ['reconstrution']"),
        ({"wieght": 1.0}, "unknown key(s) ['wieght'] in section 'distill'"),
    ],
)
def test_bad_distillation_settings_are_named(distill, message):
    with pytest.raises((TypeError, ValueError), match=re.escape(message)):
        config_from_dict({"data": {"kind": "pretrain", "sources": ["x.txt"]}, "distill": distill})


def test_the_trainer_distills_only_the_configured_tasks():
    from types import SimpleNamespace

    from arc_encoder.training.trainer import distillation_for

    base = {"data": {"kind": "pretrain", "sources": ["x.txt"]}}
    on = config_from_dict({**base, "distill": {"weight": 2.0, "temperature": 1.5}})
    off = config_from_dict(base)
    batch = lambda task: SimpleNamespace(task=task)  # noqa: E731
    assert distillation_for(on, batch("continuation")) == Distillation(2.0, 1.5)
    assert distillation_for(on, batch("finetune")) == Distillation(2.0, 1.5)
    assert distillation_for(on, batch("reconstruction")) is None
    assert distillation_for(off, batch("continuation")) is None
