"""Reading objectives (lookup, cloze) against hand-built documents; their share, config and resume."""

from __future__ import annotations

import json
import random
import re

import pytest

from arc_encoder.data.batch import Batch
from arc_encoder.data.pretrain import PretrainData, PretrainDataConfig, question_samples
from arc_encoder.data.reading import cloze_query, lookup_query, sentences
from arc_encoder.data.tokens import EncoderView, added_prefix, decoder_text
from arc_encoder.training.config import config_from_dict
from conftest import tiny_tokenizer
from data_tokenizers import char_tokenizer
from training_data import resumed_batches


@pytest.fixture(scope="module")
def chars():
    return char_tokenizer(bos=True)  # one token per character, <bos> 1 before a text


@pytest.fixture(scope="module")
def tiny():
    return tiny_tokenizer()


def doc_of(text, tok):
    return decoder_text(text, tok, added_prefix(tok), add_eos=True)


def cloze_questions(text, tok, words, placeholder, separator, seeds):
    """(question, answer) texts that cloze_query asks of the whole document over `seeds`, each
    checked to be the question, unsupervised, then the answer, supervised."""
    doc = doc_of(text, tok)
    out = []
    for seed in seeds:
        ids, targets = cloze_query(doc, 0, len(doc.ids), tok, words, placeholder, separator, random.Random(seed))
        n_question = targets.count(False)
        assert targets == [False] * n_question + [True] * (len(ids) - n_question)
        out.append((tok.decode(ids[:n_question]), tok.decode(ids[n_question:])))
    return out


# ----------------------------------------------------------------------------------- lookup


def test_lookup_cue_comes_from_the_span_and_the_target_follows_it_there(chars):
    text = "the cat sat on a mat; a dog ran to the barn."
    doc = doc_of(text, chars)  # BOS + 44 characters + EOS: token j >= 1 is character j - 1
    a, b, cue, target = 5, 40, 4, 3
    for seed in range(40):
        ids, targets = lookup_query(doc, a, b, cue, target, random.Random(seed))
        assert targets == [False] * cue + [True] * target  # loss on the target only, none in the cue
        cue_text = chars.decode(ids[:cue])
        answer = chars.decode(ids[cue:])
        span = text[a - 1 : b - 1]  # the characters of T[a:b]
        assert span.count(cue_text) == 1  # the cue says where to look: it occurs once in the span
        at = span.index(cue_text)
        assert answer == span[at + cue : at + cue + target]  # the words that follow it there
        assert at + cue + target <= len(span)  # the target lies inside the compressed span


def test_several_lookups_of_one_span_do_not_overlap(chars):
    text = "the cat sat on a mat; a dog ran to the barn, and birds flew over the mill."
    doc = doc_of(text, chars)
    a, b, cue, target = 1, len(doc.ids) - 1, 4, 3
    span = text[a - 1 : b - 1]
    separator = chars.convert_tokens_to_ids("|")
    counts = set()
    for seed in range(30):
        ids, flags = lookup_query(doc, a, b, cue, target, random.Random(seed), questions=3, separator=[separator])
        parts, part_flags, starts = [[]], [[]], []
        for token, flag in zip(ids, flags):
            if token == separator:
                assert flag is False  # the separator is given, not predicted
                parts.append([])
                part_flags.append([])
            else:
                parts[-1].append(token)
                part_flags[-1].append(flag)
        counts.add(len(parts))
        for part, part_flag in zip(parts, part_flags):
            assert part_flag == [False] * cue + [True] * target
            cue_text, answer = chars.decode(part[:cue]), chars.decode(part[cue:])
            assert span.count(cue_text) == 1
            at = span.index(cue_text)
            assert answer == span[at + cue : at + cue + target]
            starts.append(at)
        # the windows cue + target are disjoint: no question's answer is inside another's cue
        assert all(abs(x - y) >= cue + target for i, x in enumerate(starts) for y in starts[i + 1 :])
    assert counts == {3}
    # one question is the single-question sample, whatever the separator
    assert lookup_query(doc, a, b, cue, target, random.Random(4), questions=1, separator=[separator]) == lookup_query(
        doc, a, b, cue, target, random.Random(4)
    )


def test_lookup_skips_cues_that_repeat_and_spans_without_room(chars):
    # "abab..." then "xyz": only cues touching "xyz" occur once in the span
    text = "abababababababxyz"
    doc = doc_of(text, chars)
    for seed in range(30):
        found = lookup_query(doc, 1, 18, 3, 1, random.Random(seed))
        if found is not None:
            cue = chars.decode(found[0][:3])
            assert text.count(cue) == 1 and ("x" in cue or "y" in cue or "z" in cue)
    assert lookup_query(doc_of("aaaaaaaaaaaaaaaa", chars), 1, 17, 3, 2, random.Random(0)) is None
    assert lookup_query(doc, 1, 6, 3, 3, random.Random(0)) is None  # 5 tokens: no room for 3 + 3
    # a BOS is never part of a cue: the first cue start is token 1
    starts = {lookup_query(doc_of("abcdefgh", chars), 0, 5, 2, 2, random.Random(s))[0][0] for s in range(30)}
    assert starts == {chars.convert_tokens_to_ids("a")}


# ----------------------------------------------------------------------------------- cloze


def test_sentences_are_whole_sentences_of_the_span():
    text = "end of one. The cat sat.\nA dog ran far away! Then it stopped and"

    def words(groups, text=text):
        return [" ".join(text[w.start : w.end] for w in g) for g in groups]

    # the span does not start the document: "end of one." may be the tail of a cut sentence, and
    # "Then it stopped and" runs past the span's end; a line break ends a sentence too
    assert words(sentences(text, starts_text=False)) == ["The cat sat.", "A dog ran far away!"]
    assert words(sentences(text, starts_text=True)) == ["end of one.", "The cat sat.", "A dog ran far away!"]
    lines = "no end here\nnor here"
    assert words(sentences(lines, True), lines) == ["no end here"]
    quoted = 'He said "go." She went.'
    assert words(sentences(quoted, True), quoted) == ['He said "go."', "She went."]


def test_cloze_target_is_the_blanked_words(chars):
    text = "Rivers run to the sea. The old mill stood by the water for years."
    seen = set()
    for question, answer in cloze_questions(text, chars, 2, "____", "\nMissing:", range(60)):
        sentence, separator = question.split("\n")
        assert separator == "Missing:" and sentence.count("____") == 1
        assert answer.startswith(" ") and len(answer[1:].split(" ")) == 2  # two words
        assert sentence.replace("____", answer[1:]) in text  # the blank filled is the sentence again
        assert sentence.replace("____", answer[1:]) in (
            "Rivers run to the sea.",
            "The old mill stood by the water for years.",
        )
        seen.add(answer)
    assert {" Rivers run", " the sea.", " old mill", " for years."} <= seen  # every place gets blanked


def test_cloze_by_hand_on_a_bpe_tokenizer(tiny):
    # a sentence of 4 words with 2 blanked leaves at least 2 visible: one sentence, three blanks
    text = "The quick brown fox."
    assert set(cloze_questions(text, tiny, 2, "[...]", " Answer:", range(30))) == {
        ("[...] brown fox. Answer:", " The quick"),
        ("The [...] fox. Answer:", " quick brown"),
        ("The quick [...] Answer:", " brown fox."),
    }
    doc = doc_of(text, tiny)
    assert cloze_query(doc, 0, len(doc.ids), tiny, 3, "[...]", " A:", random.Random(0)) is None  # 1 word left


# ----------------------------------------------------------------------------------- samples


def test_question_samples_compress_the_span_the_question_is_about(tiny):
    text = " ".join(f"Sentence {i} tells of towers and bridges near the river." for i in range(12))
    doc = doc_of(text, tiny)
    encoder = EncoderView(tiny, special_tokens=False)
    rng = random.Random(3)

    def lookup(d, a, b):
        return lookup_query(d, a, b, 5, 4, rng)

    samples = question_samples(doc, encoder, 40, lookup)
    assert len(doc.ids) == 302 and len(samples) == 8  # 7 spans of 40, a tail of 22: room for 5 + 4
    for k, s in enumerate(samples):
        assert s.offsets == [0]  # the block first, then the question
        span_ids = doc.ids[40 * k : 40 * k + 40]
        assert tiny.decode(s.segments[0]) == tiny.decode(span_ids, skip_special_tokens=True)  # that span
        cue, target = s.text_ids[:5], s.text_ids[5:]
        hits = [j for j in range(len(span_ids)) if span_ids[j : j + 5] == cue]
        assert len(hits) == 1 and span_ids[hits[0] + 5 : hits[0] + 9] == target


def small_config(sources, **kw):
    values = dict(seq_len=32, compress_tokens=32, target_tokens=16, prefix_tokens=8, batch_size=4, seed=0)
    values.update(kw)
    return PretrainDataConfig(sources, **values)


def write_docs(path, n):
    docs = [
        f"Document {i} is about towers. The bridge {i} crosses the river near the old mill. "
        f"Bakers sell bread at dawn in town {i}."
        for i in range(n)
    ]
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return str(path)


def test_objective_shares_and_batches(tmp_path, tiny):
    f = write_docs(tmp_path / "d.txt", 3000)
    config = small_config([f], loop=False, continuation=0.5, objectives={"lookup": 0.3, "cloze": 0.2})
    data = PretrainData(config, tiny, tiny)
    batches = list(data)
    docs = data.stats["documents"]
    expected = {"lookup": 0.3, "cloze": 0.2, "continuation": 0.25, "reconstruction": 0.25}
    for task, share in expected.items():
        assert abs(docs[task] / 3000 - share) < 0.03, (task, docs)  # binomial std <= 0.009
    for batch in batches:
        assert isinstance(batch, Batch) and len({len(s.segments) for s in batch.samples}) == 1
        if batch.task in ("lookup", "cloze"):
            assert batch.special == "cont"
            for s in batch.samples:
                assert s.offsets == [0] and s.targets[0] is False and s.targets[-1] is True
    assert {b.task for b in batches} == set(expected)


def test_the_order_of_the_objectives_mapping_does_not_matter(tmp_path, tiny):
    # a resumed run may write the mapping in another order: it compares equal, so it must draw the same
    f = write_docs(tmp_path / "d.txt", 50)
    one = PretrainData(small_config([f], objectives={"lookup": 0.3, "cloze": 0.4}), tiny, tiny)
    other = PretrainData(small_config([f], objectives={"cloze": 0.4, "lookup": 0.3}), tiny, tiny)
    assert [next(one) for _ in range(6)] == [next(other) for _ in range(6)]


def test_the_pipeline_asks_several_lookups_of_a_span(tmp_path, tiny):
    f = write_docs(tmp_path / "d.txt", 30)
    config = small_config([f], objectives={"lookup": 1.0}, lookup_questions=2, lookup_separator="\n", loop=False)
    newline = tiny("\n", add_special_tokens=False)["input_ids"]
    samples = [s for b in PretrainData(config, tiny, tiny) for s in b.samples]
    for s in samples:
        n = sum(s.targets) // 8
        assert sum(s.targets) == 8 * n and len(s.text_ids) == 14 * n + len(newline) * (n - 1)
        if n == 2:
            assert s.text_ids[14 : 14 + len(newline)] == newline
    assert {sum(s.targets) for s in samples} == {8, 16}  # short tail spans have room for one


def test_reconstruction_only_phase_holds_the_objectives_back(tmp_path, tiny):
    f = write_docs(tmp_path / "d.txt", 200)
    config = small_config([f], objectives={"lookup": 0.5, "cloze": 0.5}, reconstruction_only_batches=3)
    data = PretrainData(config, tiny, tiny)
    tasks = [next(data).task for _ in range(8)]
    assert tasks[:3] == ["reconstruction"] * 3 and set(tasks[5:]) <= {"lookup", "cloze"}


def test_resume_restores_the_reading_samplers_exactly(tmp_path, tiny):
    f = write_docs(tmp_path / "d.txt", 60)
    config = small_config([f], shuffle_buffer=4, seed=5, objectives={"lookup": 0.4, "cloze": 0.4})
    expected, resumed, state = resumed_batches(lambda: PretrainData(config, tiny, tiny), 5, 7)
    assert {b.task for b in resumed} >= {"lookup", "cloze"}
    assert resumed == expected
    # the question positions are part of the state: without them the questions differ
    forgetful = PretrainData(config, tiny, tiny)
    forgetful.load_state_dict({k: v for k, v in state.items() if k != "question_rng"})
    assert [next(forgetful) for _ in range(7)] != expected
    with pytest.raises(ValueError, match=r"config changed.*objectives"):
        other = small_config([f], shuffle_buffer=4, seed=5, objectives={"lookup": 0.8})
        PretrainData(other, tiny, tiny).load_state_dict(state)


def test_states_saved_before_the_objectives_still_resume(tmp_path, tiny):
    f = write_docs(tmp_path / "d.txt", 40)
    config = small_config([f], seed=2)
    first = PretrainData(config, tiny, tiny)
    [next(first) for _ in range(3)]
    state = json.loads(json.dumps(first.state_dict()))
    expected = [next(first) for _ in range(3)]
    # what the previous version saved: no reading keys in the config, stats or RNGs
    newer = ("objectives", "lookup_cue_tokens", "lookup_target_tokens", "lookup_questions", "lookup_separator")
    for key in (*newer, "cloze_words", "cloze_placeholder", "cloze_separator"):
        del state["config"][key]
    del state["question_rng"]
    for counts in state["stats"].values():
        del counts["lookup"], counts["cloze"]
    resumed = PretrainData(config, tiny, tiny)
    resumed.load_state_dict(state)
    assert [next(resumed) for _ in range(3)] == expected
    assert resumed.stats["documents"]["lookup"] == 0


# ----------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "values, message",
    [
        ({"objectives": {"lokup": 0.2}}, "objectives: unknown objective 'lokup'; known objectives: lookup, cloze"),
        ({"objectives": {"continuation": 0.2}}, "unknown objective 'continuation'; known objectives: lookup, cloze"),
        ({"objectives": {"lookup": 1.5}}, "objectives.lookup must be a share in [0, 1], got 1.5"),
        ({"objectives": {"cloze": "half"}}, "objectives.cloze must be a share in [0, 1], got 'half'"),
        ({"objectives": {"lookup": 0.7, "cloze": 0.6}}, "objectives: the shares add up to more than 1"),
        ({"objectives": {"lookup": 0.5}, "compress_tokens": 10}, "lookup: cue + target tokens (14) do not fit"),
        ({"lookup_cue_tokens": 0}, "lookup_cue_tokens must be an integer >= 1, got 0"),
        ({"cloze_words": 0}, "cloze_words must be an integer >= 1, got 0"),
        ({"lookup_questions": 0}, "lookup_questions must be an integer >= 1, got 0"),
        ({"cloze_placeholder": "  "}, "cloze_placeholder must be visible text"),
    ],
)
def test_bad_objective_settings_are_named(values, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        PretrainDataConfig.from_dict({"sources": ["x.txt"], **values})


def test_an_unknown_objective_in_a_training_config_is_refused():
    with pytest.raises(ValueError, match=re.escape("unknown objective 'qa'; known objectives: lookup, cloze")):
        config_from_dict({"data": {"kind": "pretrain", "sources": ["x.txt"], "objectives": {"qa": 0.5}}})
    config = config_from_dict(
        {
            "data": {"kind": "pretrain", "sources": ["x.txt"], "objectives": {"lookup": 0.5}},
            "distill": {"weight": 1.0, "tasks": ["lookup", "cloze"]},
        }
    )
    assert config.data_config().objectives == {"lookup": 0.5}


def test_reading_batches_train_a_tiny_model(tmp_path, tiny_arc):
    import math

    arc = tiny_arc()
    tok = arc.encoder_tokenizer
    f = write_docs(tmp_path / "d.txt", 20)
    data = PretrainData(small_config([f], objectives={"lookup": 0.5, "cloze": 0.5}, batch_size=2), tok, tok)
    for task in ("lookup", "cloze"):
        batch = next(b for b in iter(data.__next__, None) if b.task == task)
        loss, n = arc(batch.samples, special=batch.special)
        assert n == sum(sum(s.targets) for s in batch.samples) and math.isfinite(float(loss.detach()))
