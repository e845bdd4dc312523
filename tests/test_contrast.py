"""The hinge on the content gap (model/contrast.py), against losses computed one batch at a time."""

import re

import pytest
import torch

from arc_encoder.model.contrast import Contrast, contrastive_loss
from arc_encoder.model.splice import Sample, mismatched
from arc_encoder.training.config import config_from_dict
from arc_encoder.training.distributed import Runtime
from arc_encoder.training.model_init import build_model
from arc_encoder.training.trainer import Trainer, build_data, contrast_for, seed_everything
from test_train_adapt import adapt_config


def samples(arc) -> list[Sample]:
    """Two samples reading two different documents, supervised on their whole text."""
    tok = arc.encoder_tokenizer
    docs = ["the river runs past the old mill", "bakers sell warm bread at dawn"]
    texts = ["where is the mill", "when is the bread sold"]
    out = []
    for doc, text in zip(docs, texts):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        out.append(Sample(ids, [tok(doc, add_special_tokens=False)["input_ids"]], [0], [True] * len(ids)))
    return out


@pytest.mark.parametrize("margin", [0.05, 50.0])  # a hinge met and one not met
def test_the_hinge_is_computed_from_the_right_and_swapped_losses_by_hand(tiny_arc, margin):
    arc = tiny_arc(seed=3).eval()
    batch = samples(arc)
    with torch.no_grad():
        right, n = arc(batch)  # two separate forwards: the reference
        swapped, n_swapped = arc(mismatched(batch))
        got, n_got = arc(batch, contrast=Contrast(weight=0.7, margin=margin))
    gap = swapped / n_swapped - right / n
    expected = right + 0.7 * n * max(0.0, margin - float(gap))
    assert n_got == n
    torch.testing.assert_close(got, torch.as_tensor(expected, dtype=got.dtype), atol=1e-4, rtol=1e-5)
    if margin > 1:  # the hinge pays: the loss is more than the cross-entropy
        assert got > right + 1.0


def test_a_swapped_document_is_the_next_different_one():
    a, b = Sample([1], [[5, 6]], [0], [True]), Sample([2], [[7]], [0], [True])
    c = Sample([3], [[5, 6]], [0], [True])  # a's document again: skipped as a's swap
    out = mismatched([a, c, b])
    assert [s.segments for s in out] == [[[7]], [[7]], [[5, 6]]]
    assert [s.text_ids for s in out] == [[1], [3], [2]]
    with pytest.raises(ValueError, match="same document"):
        mismatched([a, c])


def test_the_hinge_trains_the_projector_and_leaves_the_decoder_frozen(tiny_arc):
    arc = tiny_arc(seed=1).train()
    loss, _ = arc(samples(arc), contrast=Contrast(1.0, 100.0))
    loss.backward()
    assert arc.adapters[0].up.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in arc.decoders.parameters())


def test_contrastive_loss_by_hand():
    losses = torch.tensor([1.0, 3.0, 2.0, 6.0, 4.0])  # right: samples 0, 1; swapped: 2, 3
    got, n = contrastive_loss(losses, [0, 1, 1, 2, 3], right_samples=2, contrast=Contrast(0.5, 2.0))
    # CE right 6 over 3 tokens (2 each); swapped 10 over 2 (5 each); gap 3 >= margin 2: no hinge
    assert n == 3 and float(got) == 6.0
    got, _ = contrastive_loss(losses, [0, 1, 1, 2, 3], right_samples=2, contrast=Contrast(0.5, 4.0))
    assert float(got) == 6.0 + 0.5 * 3 * (4.0 - 3.0)
    with pytest.raises(ValueError, match="right and the swapped"):
        contrastive_loss(losses, [0, 0, 0, 0, 0], right_samples=2, contrast=Contrast(0.5, 4.0))


@pytest.mark.parametrize(
    "section, message",
    [
        ({"contrast": {"weight": -1.0}}, "contrast.weight must be a finite number >= 0"),
        ({"contrast": {"weight": 1.0, "margin": 0}}, "contrast.margin must be a finite number > 0"),
        ({"contrast": {"wieght": 1.0}}, "unknown key(s) ['wieght'] in section 'contrast'"),
        ({"contrast": {"weight": 1.0}, "distill": {"weight": 1.0}}, "a run trains with one of them"),
        ({"contrast": {"weight": 1.0}, "batch_size": 1}, "contrast.weight needs batch_size >= 2"),
    ],
)
def test_bad_contrast_settings_are_named(section, message):
    with pytest.raises((TypeError, ValueError), match=re.escape(message)):
        config_from_dict({"data": {"kind": "pretrain", "sources": ["x.txt"]}, **section})


def test_the_trainer_contrasts_every_batch_when_on():
    base = {"data": {"kind": "pretrain", "sources": ["x.txt"]}}
    assert contrast_for(config_from_dict({**base, "contrast": {"weight": 2.0, "margin": 0.5}})) == Contrast(2.0, 0.5)
    assert contrast_for(config_from_dict(base)) is None
    with pytest.raises(ValueError, match="finite weight > 0"):
        Contrast(0.0, 1.0)


def test_a_training_run_with_the_hinge_adds_to_the_loss_it_reports(tiny_arc, tiny_models, tmp_path):
    tiny_arc(seed=5, bottleneck=None).save_pretrained(tmp_path / "saved")
    losses = {}
    for weight in (0.0, 1.0):
        config = adapt_config(tmp_path, tiny_models, tmp_path / "saved")
        config.contrast.weight, config.contrast.margin, config.steps = weight, 100.0, 1
        seed_everything(config.seed)
        arc = build_model(config, log=lambda *_: None)
        runtime = Runtime(0, 1, torch.device("cpu"))
        trainer = Trainer(config, arc, build_data(config, arc, runtime), None, runtime)
        losses[weight] = trainer.train_step()["loss"]
    # the same first batch: with a margin no tiny model reaches, the hinge adds about 100 nats a token
    assert losses[1.0] > losses[0.0] + 50
