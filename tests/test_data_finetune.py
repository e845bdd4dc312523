"""Fine-tuning batches: schemas, few-shot prompts from token pieces (method.md §12.3), chat, resume."""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter

import pytest
import torch

from arc_encoder.data.finetune import (
    FinetuneData,
    FinetuneDataConfig,
    Shot,
    choose_passages,
    parse_example,
)
from arc_encoder.data.sources import BadRecord
from conftest import SHARED_DATA, tiny_tokenizer
from data_tokenizers import CHAT_TEMPLATE, char_tokenizer, other_bpe
from training_data import resumed_batches

SQUAD = SHARED_DATA / "squad" / "train.jsonl"
SMOLLM2 = os.path.expanduser("~/.cache/arc-encoder/smollm2-135m")


@pytest.fixture(scope="module")
def chars():
    return char_tokenizer(bos=True)


@pytest.fixture(scope="module")
def tiny():
    return tiny_tokenizer()


def write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return str(path)


def pipeline(tmp_path, enc, dec, records=None, **kw):
    records = records or [{"passage": "doc", "question": "q", "answer": "a"}]
    values = dict(batch_size=1, n_shots=2)
    values.update(kw)
    return FinetuneData(FinetuneDataConfig([write_jsonl(tmp_path / "f.jsonl", records)], **values), enc, dec)


def supervised(sample):
    return [t for t, m in zip(sample.text_ids, sample.targets) if m]


# ----------------------------------------------------------------------------------- records


def test_both_schemas_parse():
    spec = parse_example({"passages": ["p1", "p2"], "question": "q?", "answer": ["x", "y"]}, "f, line 1")
    assert spec == dict(passages=["p1", "p2"], question="q?", answers=["x", "y"], instruction=None)
    squad = parse_example({"id": "1", "context": "ctx", "question": "q", "answers": ["a"], "answer_starts": [0]}, "w")
    assert squad["passages"] == ["ctx"] and squad["answers"] == ["a"]
    assert parse_example({"passage": "p", "answer": "a"}, "w")["question"] == ""


@pytest.mark.parametrize(
    "record, message",
    [
        ({"question": "q", "answer": "a"}, "need exactly one of 'passage', 'passages', 'context' \\(found none\\)"),
        ({"passage": "p", "passages": ["p"], "answer": "a"}, "need exactly one of .* \\(found passage and passages\\)"),
        ({"passage": "p", "question": "q"}, "need one of 'answer', 'answers' \\(found none\\)"),
        ({"passage": "p", "answer": 3}, "field 'answer' must be a string or a list of strings"),
        ({"passage": "p", "answer": []}, "field 'answer' is empty"),
        ({"passage": ["p", ""], "answer": "a"}, "field 'passage' is empty or holds an empty string"),
        ({"passage": "p", "answer": "a", "question": 1}, "field 'question' must be a string"),
        (
            {"passage": "p", "answer": "a", "instruction": "no bars"},
            "field 'instruction' must be a string 'prefix\\|\\|instruction\\|\\|suffix'",
        ),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, tiny, record, message):
    good = {"passage": "p", "question": "q", "answer": "a"}
    data = pipeline(tmp_path, tiny, tiny, [good, good, record], batch_size=3)
    with pytest.raises(BadRecord, match=f"f.jsonl, line 3: {message}"):
        next(data)


def test_skip_bad_records(tmp_path, tiny, caplog):
    good = {"passage": "p", "question": "q", "answer": "a"}
    with caplog.at_level(logging.WARNING):
        data = pipeline(
            tmp_path, tiny, tiny, [good, {"passage": "p"}, good], batch_size=2, on_bad_line="skip", loop=False
        )
        assert len(next(data).samples) == 2
    assert "line 2" in caplog.text


def test_choose_passages():
    rng = random.Random(0)
    ps = ["a", "b", "c", "d"]
    assert choose_passages(ps, 1, rng) == ["a"]
    assert choose_passages(ps, -2, rng) == ["a", "b"]
    counts = Counter(len(choose_passages(ps, 3, rng)) for _ in range(600))
    assert set(counts) == {1, 2, 3} and min(counts.values()) > 150


def test_answers_drawn_per_read(tmp_path, tiny):
    data = pipeline(tmp_path, tiny, tiny, [{"passage": "p", "question": "q", "answer": ["yes", "no"]}], n_shots=0)
    answers = Counter(tiny.decode(supervised(next(data).samples[0]), skip_special_tokens=True) for _ in range(200))
    assert set(answers) == {" yes", " no"} and min(answers.values()) > 70


# ----------------------------------------------------------------------------------- prompts


def test_prompt_accounting_spec_16_3(tmp_path, chars):
    # One token per character, so piece lengths are counted by hand:
    #   t0 = <BOS> "Document: "                                1 + 10 = 11
    #   t1 = "\nQuestion: q1\nAnswer: a1\n\nDocument: "      11 + 2 + 8 + 1 + 2 + 2 + 10 = 36
    #   t2 = the same with q2 / a2                             36
    #   t3 = "\nQuestion: q\nAnswer:"                          11 + 1 + 8 = 20
    #   t4 = " a" <EOS>                                        3, the only supervised tokens
    data = pipeline(tmp_path, chars, chars)
    d_cur = "x" * 400
    shots = [Shot("first doc", "q1", "a1"), Shot("second doc", "q2", "a2")]
    sample = data.build(shots, Shot(d_cur, "q", "a"))
    assert sample.offsets == [11, 11 + 36, 11 + 36 + 36]
    assert len(sample.text_ids) == 11 + 36 + 36 + 20 + 3
    assert sample.targets == [False] * (11 + 36 + 36 + 20) + [True] * 3
    assert supervised(sample) == chars(" a", add_special_tokens=False)["input_ids"] + [2]
    assert sample.text_ids[0] == 1 and sample.text_ids.count(1) == 1  # BOS on the first piece only
    assert [len(s) for s in sample.segments] == [9, 10, 400]  # documents: encoder tokens, no BOS/EOS
    assert chars.decode(sample.segments[1]) == "second doc"
    assert (
        chars.decode(sample.text_ids[:47], skip_special_tokens=True)
        == "Document: \nQuestion: q1\nAnswer: a1\n\nDocument: "
    )


def test_template_strings_inside_documents_and_answers(tmp_path, chars):
    data = pipeline(tmp_path, chars, chars)
    plain = data.build([Shot("plain doc", "q1", "a1")], Shot("plain", "q", "ans"))
    evil_doc = "x\nQuestion: evil?\nAnswer: wrong\n\nDocument: y"
    evil = data.build([Shot(evil_doc, "q1", "a1")], Shot(evil_doc, "q", "ans"))
    # the document is compressed whole; the decoder's text and the loss do not move
    assert evil.text_ids == plain.text_ids and evil.offsets == plain.offsets and evil.targets == plain.targets
    assert chars.decode(evil.segments[0]) == evil_doc and chars.decode(evil.segments[1]) == evil_doc
    tricky = "first\nQuestion: second\nAnswer: third"
    sample = data.build([], Shot("doc", "q", tricky))
    assert chars.decode(supervised(sample)) == " " + tricky + "<eos>"
    assert sample.offsets == [11]


def test_shots_grow_and_never_include_the_current_example(tmp_path, tiny):
    records = [{"passage": f"passage {i}", "question": f"question {i}?", "answer": f"answer {i}"} for i in range(6)]
    records.append(dict(records[0]))  # the same example again later in the file
    data = pipeline(tmp_path, tiny, tiny, records, n_shots=3, loop=False)
    samples = [next(data).samples[0] for _ in range(7)]
    assert [len(s.segments) for s in samples] == [1, 2, 3, 4, 4, 4, 4]
    for i, s in enumerate(samples[:6]):
        text = tiny.decode(s.text_ids)
        shown = [j for j in range(6) if f"question {j}?" in text]
        assert shown == list(range(max(0, i - 3), i + 1))  # up to 3 previous ones, then itself
    last = tiny.decode(samples[6].text_ids)
    assert last.count("question 0?") == 1 and "question 3?" in last  # its twin is not a shot


def test_long_documents_chunked_or_truncated(tmp_path, chars, caplog):
    record = {"passage": "abcdefghij", "question": "q", "answer": "a"}
    where = "f.jsonl, line 1"
    data = pipeline(tmp_path, chars, chars, [record], chunk_tokens=4, max_chunks=3, n_shots=0)
    sample = next(data).samples[0]
    assert [chars.decode(s) for s in sample.segments] == ["abcd", "efgh", "ij"]
    assert sample.offsets == [11, 11, 11]  # back to back
    with pytest.raises(ValueError, match=f"{where}: document of 10 encoder tokens exceeds 2 chunks of 4"):
        next(pipeline(tmp_path, chars, chars, [record], chunk_tokens=4, max_chunks=2, too_long="error"))
    with pytest.raises(ValueError, match="exceeds max_doc_tokens=6"):
        next(pipeline(tmp_path, chars, chars, [record], max_doc_tokens=6, too_long="error"))
    with caplog.at_level(logging.WARNING):
        data = pipeline(tmp_path, chars, chars, [record], chunk_tokens=4, max_chunks=2, too_long="truncate")
        sample = next(data).samples[0]
    assert [chars.decode(s) for s in sample.segments] == ["abcd", "efgh"]
    assert data.stats["truncated"] == 1 and "cut to 2 chunks" in caplog.text and where in caplog.text
    data = pipeline(tmp_path, chars, chars, [record], max_doc_tokens=6)
    assert [chars.decode(s) for s in next(data).samples[0].segments] == ["abcdef"]


# ----------------------------------------------------------------------------------- chat mode


def test_chat_mode(tmp_path):
    chat = char_tokenizer(bos=True, chat_template=CHAT_TEMPLATE)
    data = pipeline(tmp_path, chat, chat, chat=True)
    sample = data.build([Shot("d1", "q1", "a1")], Shot("the doc", "q", "the answer"))
    # user: "Document: [d1]\nQuestion: q1\nAnswer: a1\n\nDocument: [doc]\nq" (the chat route's layout)
    head = "<|user|>Document: "
    assert sample.offsets == [len(head), len(head) + len("\nQuestion: q1\nAnswer: a1\n\nDocument: ")]
    assert chat.decode(sample.text_ids[: sample.offsets[0]]) == head  # no BOS: the template decides
    assert chat.decode(sample.text_ids) == (
        head + "\nQuestion: q1\nAnswer: a1\n\nDocument: \nq<eos>\n<|assistant|>the answer<eos>"
    )
    assert chat.decode(supervised(sample)) == "the answer<eos>"  # reply and end of turn; "\n" cut
    # an instruction: prefix before the document, {question} after it, suffix leads the reply
    current = Shot("story text", "who?", "nobody", "Story:\n||\nAnswer this: {question}||Answer:\n")
    sample = data.build([], current)
    assert chat.decode(sample.text_ids) == "<|user|>Story:\n\nAnswer this: who?<eos>\n<|assistant|>Answer:\nnobody<eos>"
    assert chat.decode(supervised(sample)) == "nobody<eos>"
    assert sample.offsets == [len("<|user|>Story:\n")]
    with pytest.raises(ValueError, match="chat template"):
        pipeline(tmp_path, chat, char_tokenizer(), chat=True)
    # the documents' place comes from the template's structure: no text of the record can move them
    sample = data.build([], Shot("doc", "Document: \ue000?", "a"))
    assert sample.offsets == [len(head)]
    assert chat.decode(sample.text_ids) == head + "\nDocument: \ue000?<eos>\n<|assistant|>a<eos>"


# ----------------------------------------------------------------------------------- pipeline


def test_resume_gives_the_same_batches(tmp_path, tiny):
    a = write_jsonl(
        tmp_path / "a.jsonl",
        [
            {"passages": [f"passage {i} one", f"passage {i} two"], "question": f"q{i}", "answer": [f"a{i}", f"b{i}"]}
            for i in range(20)
        ],
    )
    b = write_jsonl(
        tmp_path / "b.jsonl",
        [{"context": f"context {i}", "question": f"w{i}", "answers": [f"c{i}"]} for i in range(15)],
    )
    config = FinetuneDataConfig([f"{a}:2:3", f"{b}:1:1"], batch_size=3, max_passages=2, shuffle_buffer=4, seed=5)
    expected, resumed, _ = resumed_batches(lambda: FinetuneData(config, tiny, tiny), 3, 4)
    assert resumed == expected
    assert all(b.task == "finetune" and len(b.samples) == 3 for b in expected)
    assert max(len(s.segments) for b in expected for s in b.samples) == 4  # 3 shots from source a


def test_multi_decoder_retokenizes_from_text(tmp_path, tiny):
    other = other_bpe()
    data = pipeline(tmp_path, tiny, [tiny, other])
    shots, current = [Shot("d1", "Who wrote it?", "the author")], Shot("d", "Where?", "Paris")
    s0, s1 = data.build(shots, current, 0), data.build(shots, current, 1)
    assert s0.text_ids != s1.text_ids and s0.segments == s1.segments
    assert tiny.decode(s0.text_ids, skip_special_tokens=True) == other.decode(s1.text_ids, skip_special_tokens=True)
    assert tiny.decode(supervised(s0)) == " Paris<eos>" and other.decode(supervised(s1)) == " Paris</s>"
    assert next(data).samples and data.next_batch(1).samples
    with pytest.raises(ValueError, match="decoder 2 does not exist"):
        data.next_batch(2)


def test_finite_pass_and_sharding(tmp_path, tiny):
    records = [{"passage": f"p{i}", "question": f"q{i}", "answer": f"a{i}"} for i in range(10)]
    seen = []
    for rank in range(2):
        config = FinetuneDataConfig([write_jsonl(tmp_path / "f.jsonl", records)], batch_size=4, loop=False, n_shots=0)
        batches = list(FinetuneData(config, tiny, tiny, rank=rank, world_size=2))
        assert [len(b.samples) for b in batches] == [4, 1]
        seen += [tiny.decode(s.segments[0]) for b in batches for s in b.samples]
    assert sorted(seen) == sorted(f"p{i}" for i in range(10))


@pytest.mark.skipif(not SQUAD.exists(), reason="shared data absent")
def test_squad_batches_train_a_tiny_model(tiny_arc, tiny_models):
    from transformers import AutoTokenizer

    model = tiny_arc()
    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    config = FinetuneDataConfig([str(SQUAD)], n_shots=2, max_doc_tokens=96, batch_size=2, shuffle_buffer=50)
    data = FinetuneData(config, model.encoder_tokenizer, tok)
    for _ in range(3):
        batch = next(data)
        loss, n = model(batch.samples, 0, batch.special)
        assert batch.special == "cont" and torch.isfinite(loss)
        assert n == sum(sum(s.targets) for s in batch.samples) and 3.0 < loss.item() / n < 9.0


@pytest.mark.skipif(not os.path.isdir(SMOLLM2), reason="SmolLM2 tokenizer not cached")
def test_real_smollm2_prompts(tmp_path, tiny):
    from transformers import AutoTokenizer

    smol = AutoTokenizer.from_pretrained(SMOLLM2)
    shots, current = [Shot("d1", "Who?", "Ann")], Shot("d", "Where?", "in Paris")
    base = pipeline(tmp_path, tiny, smol).build(shots, current)
    assert smol.decode(base.text_ids) == (
        "Document: \nQuestion: Who?\nAnswer: Ann\n\nDocument: \nQuestion: Where?\nAnswer: in Paris" + smol.eos_token
    )
    assert smol.decode(supervised(base)) == " in Paris" + smol.eos_token
    chat = pipeline(tmp_path, tiny, smol, chat=True).build(shots, current)
    text = smol.decode(chat.text_ids)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\nin Paris<|im_end|>")
    assert smol.decode(supervised(chat)) == "in Paris<|im_end|>"
    assert smol.decode(chat.text_ids[: chat.offsets[0]]).endswith("<|im_start|>user\nDocument: ")


def test_distinct_held_out_prompts_ask_about_each_document_once(tmp_path, tiny):
    # three questions on paragraph A, two on B, one on C, in file order (as SQuAD dev is)
    records = [
        {"passage": f"paragraph {p}", "question": f"question {p}{i}?", "answer": f"answer {p}{i}"}
        for p, n in (("A", 3), ("B", 2), ("C", 1))
        for i in range(n)
    ]
    data = pipeline(tmp_path, tiny, tiny, records, n_shots=2, loop=False, distinct=True)
    samples = [s for b in data for s in b.samples]
    asked = [tiny.decode(s.text_ids).rsplit("Question:", 1)[1].split("?")[0].strip() for s in samples]
    assert asked == ["question A0", "question B0", "question C0"]  # one prompt per paragraph
    # the skipped questions still serve as shots
    assert "question A2?" in tiny.decode(samples[1].text_ids)
    state = json.loads(json.dumps(data.state_dict()))
    assert len(state["seen"]) == 3
    again = pipeline(tmp_path, tiny, tiny, records, n_shots=2, loop=False, distinct=False)
    assert len([s for b in again for s in b.samples]) == 6


# ----------------------------------------------------------------------------------- more questions


def test_more_questions_on_the_final_document_counted_by_hand(tmp_path, chars):
    # One token per character. After the current answer " a" come the other questions, each
    # "\nQuestion: qN\nAnswer:" (no loss, 11 + 2 + 8 = 21 tokens) then " aN" (loss, 3), then EOS.
    data = pipeline(tmp_path, chars, chars, questions_per_doc=3)
    sample = data.build([], Shot("doc", "q", "a"), others=[Shot("doc", "q2", "a2"), Shot("doc", "q3", "a3")])
    head = 1 + 10 + 20  # <BOS> "Document: " and "\nQuestion: q\nAnswer:"
    assert sample.targets == [False] * head + [True] * 2 + ([False] * 21 + [True] * 3) * 2 + [True]
    assert chars.decode(sample.text_ids[head:], skip_special_tokens=True) == (
        " a\nQuestion: q2\nAnswer: a2\nQuestion: q3\nAnswer: a3"
    )
    assert sample.text_ids[-1] == 2 and sample.offsets == [11]  # EOS last; one document
    assert data.build([], Shot("doc", "q", "a")).targets == [False] * head + [True] * 3  # none: one answer


def test_other_questions_are_asked_of_the_same_document(tmp_path, tiny):
    # two paragraphs, four questions each, in file order; no shots, so each prompt holds one document
    records = [
        {"passage": f"paragraph {p}", "question": f"question {p}{i}?", "answer": f"answer {p}{i}"}
        for p in "AB"
        for i in range(4)
    ]
    data = pipeline(tmp_path, tiny, tiny, records, n_shots=0, questions_per_doc=3, shuffle_buffer=8)
    for _ in range(16):
        text = tiny.decode(next(data).samples[0].text_ids, skip_special_tokens=True)
        questions = [q.split("?")[0] for q in text.split("Question: ")[1:]]
        answers = [a.split("\n")[0].strip() for a in text.split("Answer: ")[1:]]
        assert len(questions) == 3 and len(set(questions)) == 3  # from the first prompt on, each once
        assert len({q.split()[1][0] for q in questions}) == 1  # all on one paragraph
        assert answers == [q.replace("question", "answer") for q in questions]  # each with its own answer
    with pytest.raises(ValueError, match="questions_per_doc"):
        pipeline(tmp_path, tiny, tiny, records, questions_per_doc=2, chat=True)
    with pytest.raises(ValueError, match="questions_per_doc"):
        pipeline(tmp_path, tiny, tiny, records, questions_per_doc=0)
    held_out = pipeline(tmp_path, tiny, tiny, records, n_shots=0, questions_per_doc=3, loop=False, distinct=True)
    texts = [tiny.decode(s.text_ids) for b in held_out for s in b.samples]
    assert len(texts) == 2 and all(t.count("Question:") == 1 for t in texts)  # the evaluation's layout


def test_uniform_count_of_questions_per_prompt(tmp_path, tiny):
    # four questions on each of two paragraphs; with questions_per_doc_uniform each prompt asks
    # 1, 2 or 3 of them (the count drawn per prompt), so some prompts end after the first answer
    records = [
        {"passage": f"paragraph {p}", "question": f"question {p}{i}?", "answer": f"answer {p}{i}"}
        for p in "AB"
        for i in range(4)
    ]
    data = pipeline(tmp_path, tiny, tiny, records, n_shots=0, questions_per_doc=3, questions_per_doc_uniform=True)
    counts = []
    for _ in range(60):
        text = tiny.decode(next(data).samples[0].text_ids, skip_special_tokens=True)
        questions = [q.split("?")[0] for q in text.split("Question: ")[1:]]
        assert len(set(questions)) == len(questions) and len({q.split()[1][0] for q in questions}) == 1
        counts.append(len(questions))
    assert set(counts) == {1, 2, 3}  # 60 draws: each count appears (a miss has odds below 1e-9)
    with pytest.raises(ValueError, match="questions_per_doc_uniform"):
        pipeline(tmp_path, tiny, tiny, records, questions_per_doc_uniform=True)


def test_resume_with_more_questions(tmp_path, tiny):
    records = [
        {"passage": f"paragraph {p}", "question": f"question {p}{i}?", "answer": f"answer {p}{i}"}
        for p in "ABC"
        for i in range(3)
    ]
    path = write_jsonl(tmp_path / "q.jsonl", records)
    config = FinetuneDataConfig([path], batch_size=2, n_shots=1, shuffle_buffer=4, seed=1, questions_per_doc=3)
    expected, resumed, state = resumed_batches(lambda: FinetuneData(config, tiny, tiny), 4, 4)
    assert resumed == expected
    assert max(sum(s.targets) for b in expected for s in b.samples) > 8  # several answers per prompt


# ----------------------------------------------------------------------------------- supervise


def test_shot_answers_and_questions_supervised_counted_by_hand(tmp_path, chars):
    # One token per character; the tokens do not change, only which of them have loss:
    #   t0 = <BOS> "Document: "                                11, none
    #   t1 = "\nQuestion: " "q1" "\nAnswer:" " a1" "\n\nDocument: "   11, 2 (questions), 8, 3 (shot_answers), 12
    #   t2 = "\nQuestion: " "q" "\nAnswer:"                      11, 1 (questions), 8
    #   t3 = " a" <EOS>                                          3 (answer)
    shot, current = Shot("first doc", "q1", "a1"), Shot("x" * 40, "q", "a")
    plain = pipeline(tmp_path, chars, chars).build([shot], current)
    every = pipeline(tmp_path, chars, chars, supervise=["answer", "shot_answers", "questions"]).build([shot], current)
    assert every.text_ids == plain.text_ids and every.offsets == plain.offsets
    F, T = [False], [True]
    t1 = F * 11 + T * 2 + F * 8 + T * 3 + F * 12
    assert every.targets == F * 11 + t1 + F * 11 + T + F * 8 + T * 3
    assert chars.decode(supervised(every)) == "q1 a1q a<eos>"
    shots_only = pipeline(tmp_path, chars, chars, supervise=["answer", "shot_answers"]).build([shot], current)
    assert chars.decode(supervised(shots_only)) == " a1 a<eos>"
    questions_only = pipeline(tmp_path, chars, chars, supervise=["questions"]).build([shot], current)
    assert chars.decode(supervised(questions_only)) == "q1q"  # no answer at all


def test_supervised_questions_of_more_questions(tmp_path, chars):
    data = pipeline(tmp_path, chars, chars, questions_per_doc=2, supervise=["answer", "questions"])
    sample = data.build([], Shot("doc", "q", "a"), others=[Shot("doc", "q2", "a2")])
    assert chars.decode(supervised(sample)) == "q aq2 a2<eos>"


def test_supervised_spans_with_merging_tokens(tmp_path, tiny):
    # a BPE tokenizer: the marked tokens are whole tokens of the prompt as evaluation tokenizes it
    shot, current = Shot("the first passage", "who wrote the second one?", "the writer"), Shot("a doc", "q?", "x")
    plain = pipeline(tmp_path, tiny, tiny).build([shot], current)
    marked = pipeline(tmp_path, tiny, tiny, supervise=["shot_answers"]).build([shot], current)
    assert marked.text_ids == plain.text_ids
    assert tiny.decode(supervised(marked)) == " the writer"


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(supervise=["answers"]), "supervise: unknown name\\(s\\) \\['answers'\\]"),
        (dict(supervise=[]), "supervise must be a non-empty list"),
        (dict(supervise=["answer", "questions"], chat=True), "supervise other than \\[answer\\] needs plain prompts"),
    ],
)
def test_bad_supervise_refused(values, message):
    with pytest.raises(ValueError, match=message):
        FinetuneDataConfig(["f.jsonl"], **values)
