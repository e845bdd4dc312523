"""The content measurement: each condition builds the sample it claims to, and the gap is right."""

from __future__ import annotations

import pytest
import torch

from _serving_helpers import SENTENCES  # noqa: E402  (words the tiny tokenizer knows)
from arc_encoder.data.batch import Batch
from arc_encoder.evaluation import content as document_use
from arc_encoder.model.splice import Sample


def qa_sample(arc, document: str, question: str, answer: str) -> Sample:
    tok = arc.decoder_tokenizers[0]
    head = tok("Document: ", add_special_tokens=False)["input_ids"]
    tail = tok(f"\nQuestion: {question}\nAnswer:", add_special_tokens=False)["input_ids"]
    answer_ids = tok(" " + answer, add_special_tokens=False)["input_ids"]
    segment = arc.encoder_tokenizer(document, add_special_tokens=False)["input_ids"]
    text = head + tail + answer_ids
    return Sample(text, [segment], [len(head)], [False] * (len(head) + len(tail)) + [True] * len(answer_ids))


def test_conditions_build_the_samples_they_claim(tiny_arc):
    arc = tiny_arc().eval()
    samples = [qa_sample(arc, SENTENCES[i], "what is it?", SENTENCES[i].split()[0]) for i in range(3)]
    swapped = document_use.mismatched(samples)
    for i, (s, w) in enumerate(zip(samples, swapped)):
        assert w.segments == [samples[(i + 1) % 3].segments[-1]] and w.text_ids == s.text_ids
    # a sample whose neighbour has the same document takes the next different one
    twins = [samples[0], samples[0], samples[1]]
    assert document_use.mismatched(twins)[0].segments == samples[1].segments
    with pytest.raises(ValueError, match="same document"):
        document_use.mismatched([samples[0], samples[0]])

    # "text": the document's tokens sit where its vectors were, unsupervised; same targets after
    text = document_use.documents_as_text(samples[0], arc, 0)
    head = samples[0].offsets[0]
    seg = samples[0].segments[0]  # one tokenizer here: decode + re-encode gives the same ids
    assert text.text_ids == samples[0].text_ids[:head] + seg + samples[0].text_ids[head:]
    assert sum(text.targets) == sum(samples[0].targets) and not any(text.targets[: head + len(seg)])

    # the sums: "right" is the model's own loss; "none" the plain-text loss without documents
    def loss_fn(group, special):
        return arc.loss(group, 0, special, with_accuracy=True)

    table = document_use.content_summary(
        document_use.content_sums(loss_fn, arc, [Batch(samples, "finetune")], batch_size=2)
    )["finetune"]
    with torch.no_grad():
        loss, n = arc.loss(samples, 0, "cont")
        plain, m = arc.loss([document_use.without_documents(s) for s in samples], 0, "cont")
    assert table["right"] == pytest.approx(loss.item() / n, rel=1e-5)
    assert table["none"] == pytest.approx(plain.item() / m, rel=1e-5)
    assert table["gap"] == pytest.approx(table["mismatched"] - table["right"])
    assert set(document_use.CONDITIONS) <= set(table)


def test_summary_of_a_hand_built_case():
    sums = {
        "rec/right": torch.tensor([6.0, 3, 2], dtype=torch.float64),
        "rec/mismatched": torch.tensor([12.0, 3, 0], dtype=torch.float64),
        "rec/none": torch.tensor([9.0, 3, 1], dtype=torch.float64),
        "rec/text": torch.tensor([1.5, 3, 3], dtype=torch.float64),
    }
    row = document_use.content_summary(sums)["rec"]
    assert row == pytest.approx(
        {
            "right": 2.0,
            "mismatched": 4.0,
            "none": 3.0,
            "text": 0.5,
            "gap": 2.0,
            "accuracy": 2 / 3,
            "accuracy_none": 1 / 3,
        }
    )
    flat = document_use.flat_summary({"rec": row}, "d0/")
    assert flat["d0/rec"] == 2.0 and flat["d0/rec/gap"] == 2.0


def test_a_loss_that_reads_the_document_gives_the_known_gap():
    """A fake loss: 1 nat per token with the sample's own document, 3 with another's, 5 with none."""
    samples = [Sample([i, 2, 3, 4], [[10 + i, 20]], [0], [True] * 4) for i in range(3)]
    samples.append(Sample([1, 2, 3], [[11, 20]], [0], [True] * 3))  # same document as sample 1

    def loss_fn(group, special):
        per_token = [5.0 if not s.segments else 1.0 if s.segments[-1][0] == 10 + s.text_ids[0] else 3.0 for s in group]
        return (
            torch.tensor(sum(p * len(s.text_ids) for p, s in zip(per_token, group))),
            sum(len(s.text_ids) for s in group),
            sum(p == 1.0 for p in per_token),
        )

    sums = document_use.content_sums(
        loss_fn, None, [Batch(samples, "reconstruction")], batch_size=2, conditions=("right", "mismatched", "none")
    )
    table = document_use.content_summary(sums)["reconstruction"]
    assert sums["reconstruction/right"][1] == 12  # the duplicate document is measured once
    assert table["right"] == 1.0 and table["mismatched"] == 3.0 and table["none"] == 5.0
    assert table["gap"] == 2.0 and table["accuracy"] == 0.25  # one "correct" sample of 4 tokens


def test_documents_that_do_not_reach_the_decoder_give_a_gap_of_exactly_zero(tiny_arc):
    """With the projector zeroed every document becomes the same vectors: nothing to read."""
    arc = tiny_arc().eval()
    for adapter in arc.adapters:
        torch.nn.init.zeros_(adapter.down.weight)
    tok = arc.encoder_tokenizer
    segments = [tok(t, add_special_tokens=False)["input_ids"] for t in SENTENCES[:3]]
    n = min(len(s) for s in segments)  # as many vectors for every document
    samples = [Sample(seg[:n], [seg[:n]], [0], [True] * n) for seg in segments]
    report = document_use.content_report(arc, [Batch(samples, "reconstruction")])
    assert report["tasks"]["reconstruction"]["gap"] == 0.0


def test_held_out_samples_are_one_per_document():
    a = Sample([1, 2], [[5, 6]], [0], [True, True])
    b = Sample([3, 4], [[5, 6]], [0], [True, True])  # another span of the same document
    c = Sample([3, 4], [[7, 8]], [0], [True, True])
    assert document_use.distinct_documents([a, b, c]) == [a, c]
