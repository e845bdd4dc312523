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
        return arc(group, 0, special, with_accuracy=True)

    table = document_use.content_summary(
        document_use.content_sums(loss_fn, arc, [Batch(samples, "finetune")], batch_size=2)
    )["finetune"]
    with torch.no_grad():
        loss, n = arc(samples, 0, "cont")
        plain, m = arc([document_use.without_documents(s) for s in samples], 0, "cont")
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


# ----------------------------------------------------------------------------------- greedy output


def test_split_prompt_keeps_the_text_and_blocks_before_the_first_target():
    s = Sample([1, 2, 3, 4, 5], [[7, 8], [9]], [1, 2], [False, False, True, True, True])
    prompt, target = document_use.split_prompt(s)
    assert prompt.text_ids == [1, 2] and prompt.segments == [[7, 8], [9]] and prompt.offsets == [1, 2]
    assert target == [3, 4, 5]
    with pytest.raises(ValueError, match="end of the text"):
        document_use.split_prompt(Sample([1, 2, 3], [], [], [True, False, True]))
    with pytest.raises(ValueError, match="nothing to write"):
        document_use.split_prompt(Sample([1, 2], [], [], [False, False]))


class _Letters:
    """A tokenizer stand-in: id i is the i-th lowercase letter followed by a space; 0 is EOS."""

    eos_token_id = 0

    def decode(self, ids, skip_special_tokens=True):
        return "".join(f"{chr(96 + i)} " for i in ids if i != 0)


class _Lines(_Letters):
    def decode(self, ids, skip_special_tokens=True):
        return "".join("\n" if i == 99 else f"{chr(96 + i)} " for i in ids if i != 0)


def test_greedy_scores_of_a_hand_case():
    tok = _Letters()
    # target "a b c" + EOS; written "a x c": 2 of 3 tokens at their place, not exact
    row = document_use.greedy_scores(tok, [1, 24, 3], [1, 2, 3, 0], answer=False)
    assert row[:4] == [1.0, 2, 3, 0.0]
    assert row[4] == pytest.approx(2 / 3)  # ROUGE-L F of "a x c" against "a b c": LCS 2 of 3 words
    assert row[5:] == [0.0, 0.0]
    # an answer, scored after the SQuAD normalisation (which drops the article "a")
    exact = document_use.greedy_scores(tok, [1, 2, 3], [2, 3, 0], answer=True)
    assert exact[3] == 0.0 and exact[5:] == [1.0, 1.0]  # "a b c" = "b c" as answers, not as tokens
    partial = document_use.greedy_scores(tok, [2, 4], [2, 3, 0], answer=True)
    assert partial[5] == 0.0 and partial[6] == pytest.approx(0.5)  # F1 of {b, d} against {b, c}
    # only the first line of an answer counts (id 99 stands for a newline here)
    assert document_use.greedy_scores(_Lines(), [2, 3, 99, 4], [2, 3, 0], answer=True)[5] == 1.0


def test_greedy_outputs_equal_a_naive_argmax_loop(tiny_arc):
    """The KV-cached batch decode against re-running the whole spliced sequence every token."""
    arc = tiny_arc().eval()
    tok = arc.encoder_tokenizer
    samples = [
        Sample(tok(" a question", add_special_tokens=False)["input_ids"], [seg], [1])
        for seg in (tok(t, add_special_tokens=False)["input_ids"] for t in SENTENCES[:2])
    ]
    outputs = document_use.greedy_outputs(arc, samples, "cont", 0, [5, 3], stop_at_newline=False)
    dec, embed = arc.decoders[0], arc.decoders[0].get_input_embeddings()
    eos = {arc.decoder_tokenizers[0].eos_token_id}
    for s, out, n in zip(samples, outputs, [5, 3]):
        [block] = arc.decoder_blocks(arc.encode_segments(s.segments, 0), 0, "cont")
        with torch.no_grad():
            text = embed(torch.tensor(s.text_ids))
            sequence = torch.cat([text[:1], block, text[1:]])
            expected = []
            for _ in range(n):
                logits = dec(inputs_embeds=sequence[None]).logits[0, -1]
                token = int(logits.argmax())
                if token in eos:
                    break
                expected.append(token)
                sequence = torch.cat([sequence, embed(torch.tensor([token]))])
        assert out == expected


def test_greedy_sums_score_answers_with_the_right_and_a_wrong_document(tiny_arc, monkeypatch):
    arc = tiny_arc().eval()
    samples = [qa_sample(arc, SENTENCES[i], "what is it?", SENTENCES[i].split()[0]) for i in range(3)]
    # A decoder that always writes the gold answer of the document it reads: EM 1 with the right
    # document, 0 with another's.
    answers = {tuple(s.segments[-1]): s.text_ids[s.targets.index(True) :] for s in samples}

    def fake(arc_, prompts, special, decoder, max_new, stop_at_newline):
        assert stop_at_newline and special == "cont"
        eos = arc.decoder_tokenizers[0].eos_token_id
        return [[t for t in answers[tuple(p.segments[-1])] if t != eos] for p in prompts]

    monkeypatch.setattr(document_use, "greedy_outputs", fake)
    row = document_use.greedy_summary(document_use.greedy_sums(arc, [Batch(samples, "finetune")], batch_size=2))
    assert row["finetune"]["answer_em"] == 1.0 and row["finetune"]["answer_f1"] == 1.0
    assert row["finetune"]["answer_em_mismatched"] == 0.0
    # the trainer names tasks per decoder ("d0/finetune"): still scored as answers
    sums = document_use.greedy_sums(arc, [Batch(samples, "finetune")], batch_size=2)
    prefixed = document_use.greedy_summary({f"d0/{k}": v for k, v in sums.items()})
    assert prefixed["d0/finetune"] == row["finetune"]
