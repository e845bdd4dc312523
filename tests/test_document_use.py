"""The document-use diagnostic: each condition builds the sample it claims to."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from arc_encoder.data.batch import Batch
from arc_encoder.model.splice import Sample

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "document_use.py"
spec = importlib.util.spec_from_file_location("document_use", SCRIPT)
document_use = importlib.util.module_from_spec(spec)
spec.loader.exec_module(document_use)

from _serving_helpers import SENTENCES  # noqa: E402  (words the tiny tokenizer knows)


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

    # the loss table: "right" is the model's own loss; "none" the plain-text loss without documents
    table = document_use.losses(arc, [Batch(samples, "finetune")], batch_size=2)["finetune"]
    with torch.no_grad():
        loss, n = arc.loss(samples, 0, "cont")
        plain, m = arc.loss([document_use.without_documents(s) for s in samples], 0, "cont")
    assert table["right"] == pytest.approx(loss.item() / n, rel=1e-5)
    assert table["none"] == pytest.approx(plain.item() / m, rel=1e-5)
    assert set(table) == set(document_use.CONDITIONS)
