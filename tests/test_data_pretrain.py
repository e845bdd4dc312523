"""Pretraining batches: token accounting (method.md §12.1, §12.2), masks, task share, resume."""

from __future__ import annotations

import json
import os

import pytest
import torch

from arc_encoder.data.batch import Batch
from arc_encoder.data.pretrain import (
    PretrainData,
    PretrainDataConfig,
    continuation_plan,
    continuation_samples,
    reconstruction_plan,
    reconstruction_samples,
)
from arc_encoder.data.sources import BadRecord
from arc_encoder.data.tokens import EncoderView, added_prefix, decoder_text
from conftest import SHARED_DATA, tiny_tokenizer
from data_tokenizers import char_tokenizer, other_bpe

SMOLLM2 = os.path.expanduser("~/.cache/arc-encoder/smollm2-135m")
WIKI = SHARED_DATA / "prose" / "wiki.txt"
SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank. "


def ascii_text(n: int) -> str:
    return (SENTENCE * (n // len(SENTENCE) + 1))[:n]


@pytest.fixture(scope="module")
def chars():
    return char_tokenizer(bos=True)


@pytest.fixture(scope="module")
def tiny():
    return tiny_tokenizer()


def doc_of(text, tok, add_eos=True):
    return decoder_text(text, tok, added_prefix(tok), add_eos)


def write_docs(path, docs):
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return str(path)


# ----------------------------------------------------------------------------------- cutting plans


def test_plans_by_hand():
    assert reconstruction_plan(22, 8) == [(0, 8), (8, 16), (16, 22)]
    # budget 4 + 4 + 4: a full piece, then a 10-token tail whose prefix takes the 2 spare tokens
    assert continuation_plan(22, 4, 4, 4) == [(0, 4, 8, 12), (12, 14, 18, 22)]
    assert continuation_plan(22, 4, 4, 0) == [(0, 0, 4, 8), (8, 8, 12, 16), (16, 16, 19, 22)]
    assert continuation_plan(7, 4, 4, 4) == [(0, 0, 3, 7)]  # short: halves, the odd token predicted
    assert continuation_plan(9, 4, 4, 0) == [(0, 0, 4, 8)]  # a 1-token tail is left over
    assert continuation_plan(300, 128, 256, 0) == [(0, 0, 128, 300)]  # uneven budgets
    for n in range(1, 60):  # pieces are consecutive and never exceed the budgets
        pieces = continuation_plan(n, 5, 7, 3)
        assert all(a == prev[3] for a, prev in zip([p[0] for p in pieces[1:]], pieces))
        assert all(c - p <= 3 and 1 <= d - c <= 5 and 1 <= e - d <= 7 for p, c, d, e in pieces)
        assert n - (pieces[-1][3] if pieces else 0) <= 1


# ----------------------------------------------------------------------------------- 16.1 / 16.2


def test_reconstruction_accounting_spec_16_1(chars):
    # 600 text tokens -> T = BOS + 600 + EOS = 602 -> pieces of 256, 256, 90 (method.md §12.1).
    text = ascii_text(600)
    doc = doc_of(text, chars)
    assert len(doc.ids) == 602 and doc.ids[0] == 1 and doc.ids[-1] == 2
    samples = reconstruction_samples(doc, EncoderView(chars, special_tokens=True), seq_len=256)
    assert [len(s.text_ids) for s in samples] == [256, 256, 90]
    assert [s.offsets for s in samples] == [[0], [0], [0]]
    assert [sum(s.targets) for s in samples] == [255, 256, 90]  # BOS is given, EOS is predicted
    assert samples[0].targets[0] is False
    # the encoder reads the same characters, with its BOS at the start and EOS at the end
    assert [len(s.segments[0]) for s in samples] == [1 + 255, 256, 89 + 1]
    assert samples[0].segments[0][0] == 1 and samples[2].segments[0][-1] == 2
    body = [seg[1:] if i == 0 else seg[:-1] if i == 2 else seg for i, seg in enumerate(s.segments[0] for s in samples)]
    assert "".join(chars.decode(seg) for seg in body) == text
    # decoder text of all pieces is T exactly
    assert sum((s.text_ids for s in samples), []) == doc.ids


def test_continuation_accounting_spec_16_2(chars):
    text = ascii_text(2000)
    doc = doc_of(text, chars)  # T of 2002 tokens
    enc = EncoderView(chars, special_tokens=True)
    samples = continuation_samples(doc, enc, compress=256, target=256, prefix=256)
    assert [s.offsets for s in samples] == [[256], [256], [0]]
    assert [len(s.text_ids) for s in samples] == [512, 512, 233]
    assert [sum(s.targets) for s in samples] == [256, 256, 233]
    assert [len(s.segments[0]) for s in samples] == [256, 256, 233]
    first = samples[0]
    assert first.text_ids == doc.ids[0:256] + doc.ids[512:768]
    assert first.targets == [False] * 256 + [True] * 256  # loss only on the continuation
    assert chars.decode(first.segments[0]) == text[255:511]  # T[256:512] = characters 255..510
    assert samples[2].text_ids == doc.ids[1769:2002] and samples[2].text_ids[-1] == 2
    # without the prefix: compressed x[0:256] (with BOS), continuation x[256:512]
    plain = continuation_samples(doc, enc, compress=256, target=256, prefix=0)
    assert plain[0].offsets == [0] and plain[0].text_ids == doc.ids[256:512]
    assert plain[0].segments[0][0] == 1 and chars.decode(plain[0].segments[0][1:]) == text[:255]


def test_degenerate_spans_are_dropped(chars):
    enc = EncoderView(chars, special_tokens=False)
    # one character: T = BOS x EOS; its encoder side is 1 token, under the 2-token minimum
    assert reconstruction_samples(doc_of("x", chars), enc, seq_len=8) == []
    assert len(reconstruction_samples(doc_of("xy", chars), enc, seq_len=8)) == 1
    # a compressed span of one repeated token teaches nothing (method.md §5.3)
    no_bos = char_tokenizer(bos=False)
    assert continuation_samples(doc_of("zzzzzzzzzz", no_bos, add_eos=False), enc, 4, 4, 0) == []
    assert len(continuation_samples(doc_of("zzzyzzzzzz", no_bos, add_eos=False), enc, 4, 4, 0)) == 1


# ----------------------------------------------------------------------------------- re-tokenizing


def test_encoder_reads_the_decoders_characters(tiny):
    other = other_bpe()
    text = " ".join(ascii_text(900).split()[::-1]) + " Paris 1887."
    doc = doc_of(text, other)
    enc = EncoderView(tiny, special_tokens=False)
    rec = reconstruction_samples(doc, enc, seq_len=16)
    joined = "".join(tiny.decode(s.segments[0]) for s in rec)
    # the last piece here is "." + EOS: 1 encoder token, dropped; everything before it is kept
    assert joined == text[:-1] and len(doc.ids) % 16 == 2
    assert tiny(text, add_special_tokens=False)["input_ids"] != other(text, add_special_tokens=False)["input_ids"]
    cont = continuation_samples(doc, enc, compress=12, target=10, prefix=5)
    rebuilt = ""
    for s in cont:
        p = s.offsets[0]
        ids = [i for i in s.text_ids if i != other.eos_token_id]
        rebuilt += other.decode(ids[:p]) + tiny.decode(s.segments[0]) + other.decode(ids[p:])
    assert text.startswith(rebuilt) and len(text) - len(rebuilt) <= 12  # at most one token lost at the end


@pytest.mark.skipif(not os.path.isdir(SMOLLM2), reason="SmolLM2 tokenizer not cached")
@pytest.mark.skipif(not WIKI.exists(), reason="shared data absent")
def test_real_smollm2_decoder_tokenizer(tiny):
    from transformers import AutoTokenizer

    smol = AutoTokenizer.from_pretrained(SMOLLM2)
    text = WIKI.read_text(encoding="utf-8").split("\n\n")[3]
    doc = doc_of(text, smol)
    assert doc.n_bos == len(added_prefix(smol)) and doc.ids[-1] == smol.eos_token_id
    samples = reconstruction_samples(doc, EncoderView(tiny, special_tokens=False), seq_len=32)
    assert all(len(s.text_ids) <= 32 for s in samples)
    assert "".join(tiny.decode(s.segments[0]) for s in samples) == text
    assert smol.decode(sum((s.text_ids for s in samples), [])) == text + smol.eos_token


# ----------------------------------------------------------------------------------- pipeline


def small_config(sources, **kw):
    values = dict(seq_len=32, compress_tokens=24, target_tokens=16, prefix_tokens=8, batch_size=4, seed=0)
    values.update(kw)
    return PretrainDataConfig(sources, **values)


def test_continuation_share_and_homogeneous_batches(tmp_path, tiny):
    f = write_docs(tmp_path / "d.txt", [f"Document number {i} is about towers and bridges." for i in range(3000)])
    data = PretrainData(small_config([f], batch_size=8, loop=False), tiny, tiny)
    batches = list(data)
    docs = data.stats["documents"]
    share = docs["continuation"] / (docs["continuation"] + docs["reconstruction"])
    assert docs["continuation"] + docs["reconstruction"] == 3000
    assert abs(share - 0.8) < 0.025  # binomial std 0.0073
    for batch in batches:
        assert isinstance(batch, Batch)
        for s in batch.samples:
            if batch.task == "reconstruction":
                assert s.offsets == [0] and all(s.targets)
            else:
                assert batch.task == "continuation" and s.targets[s.offsets[0] :] == [True] * (
                    len(s.text_ids) - s.offsets[0]
                )
                assert not any(s.targets[: s.offsets[0]])
    assert {b.task for b in batches} == {"reconstruction", "continuation"}
    assert sum(len(b.samples) for b in batches) == sum(data.stats["samples"].values())
    assert all(len(b.samples) == 8 for b in batches[:-2])


def test_task_share_extremes(tmp_path, tiny):
    f = write_docs(tmp_path / "d.txt", [f"Short document {i} about rivers." for i in range(40)])
    assert {b.task for b in PretrainData(small_config([f], continuation=0.0, loop=False), tiny, tiny)} == {
        "reconstruction"
    }
    assert {b.task for b in PretrainData(small_config([f], continuation=1.0, loop=False), tiny, tiny)} == {
        "continuation"
    }


def test_long_documents_are_cut_without_waste(tmp_path, chars):
    f = write_docs(tmp_path / "d.txt", [ascii_text(300)])
    data = PretrainData(small_config([f], continuation=0.0, loop=False, batch_size=100), chars, chars)
    (batch,) = list(data)
    assert [len(s.text_ids) for s in batch.samples] == [32] * 9 + [14]  # 302 = 9 * 32 + 14
    assert sum(sum(s.targets) for s in batch.samples) == 301


def test_ranks_partition_documents(tmp_path, tiny):
    docs = [f"Document {i} talks about the capital of France." for i in range(30)]
    f = write_docs(tmp_path / "d.txt", docs)
    seen = []
    for rank in range(3):
        data = PretrainData(small_config([f], continuation=0.0, loop=False), tiny, tiny, rank=rank, world_size=3)
        seen.append([tiny.decode(s.segments[0], skip_special_tokens=True) for b in data for s in b.samples])
    assert sorted(sum(seen, [])) == sorted(docs)
    assert seen[2] == [docs[i] for i in range(2, 30, 3)]


def test_resume_gives_the_same_batches(tmp_path, tiny):
    fa = write_docs(tmp_path / "a.txt", [ascii_text(40 + 7 * i) for i in range(25)])
    fb = tmp_path / "b.jsonl"
    fb.write_text(
        "\n".join(json.dumps({"text": f"Numbers like {i} appear in texts. " * (i % 5 + 1)}) for i in range(30))
    )
    config = small_config([f"{fa}:2", f"{fb}:1"], shuffle_buffer=5, seed=7)
    uninterrupted = PretrainData(config, tiny, tiny, rank=1, world_size=2)
    expected = [next(uninterrupted) for _ in range(7)]
    first = PretrainData(config, tiny, tiny, rank=1, world_size=2)
    [next(first) for _ in range(3)]
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON round trip
    resumed = PretrainData(config, tiny, tiny, rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert [next(resumed) for _ in range(4)] == expected[3:]
    with pytest.raises(ValueError, match="rank 1 of 2"):
        PretrainData(config, tiny, tiny, rank=0, world_size=2).load_state_dict(state)
    with pytest.raises(ValueError, match="config changed.*seq_len"):
        PretrainData(
            small_config([f"{fa}:2", f"{fb}:1"], shuffle_buffer=5, seed=7, seq_len=64), tiny, tiny, rank=1, world_size=2
        ).load_state_dict(state)


def test_multi_decoder_batches_and_resume(tmp_path, tiny, chars):
    f = write_docs(tmp_path / "d.txt", [ascii_text(30 + 11 * i) for i in range(40)])
    config = small_config([f])
    order = [0, 1, 1, 0, 1, 0, 0, 1]
    data = PretrainData(config, tiny, [tiny, chars])
    batches = [data.next_batch(k) for k in order]
    for k, batch in zip(order, batches):
        tok = [tiny, chars][k]
        for s in batch.samples:
            assert max(s.text_ids) < len(tok)
            if batch.task == "reconstruction":  # decoder text and encoder text are the same characters
                assert tok.decode(s.text_ids, skip_special_tokens=True) == tiny.decode(
                    s.segments[0], skip_special_tokens=True
                )
    again = PretrainData(config, tiny, [tiny, chars])
    [again.next_batch(k) for k in order[:3]]
    state = again.state_dict()
    fresh = PretrainData(config, tiny, [tiny, chars])
    fresh.load_state_dict(state)
    assert [fresh.next_batch(k) for k in order[3:]] == batches[3:]
    with pytest.raises(ValueError, match="decoder 2 does not exist"):
        data.next_batch(2)


def test_bad_input_in_pipeline(tmp_path, tiny):
    f = tmp_path / "c.jsonl"
    f.write_text('{"text": "fine document here"}\n{"content": "wrong key"}\n')
    with pytest.raises(BadRecord, match=r"c.jsonl, line 2: missing field 'text'"):
        list(PretrainData(small_config([str(f)], loop=False, batch_size=1), tiny, tiny))
    out = list(PretrainData(small_config([str(f)], loop=False, batch_size=1, on_bad_line="skip"), tiny, tiny))
    assert len(out) == 1
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        PretrainData(small_config([str(tmp_path / "missing.txt")]), tiny, tiny)
    with pytest.raises(ValueError, match="continuation must be"):
        small_config(["x"], continuation=1.5)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['seqlen'\] in the top level \(PretrainDataConfig\)"):
        PretrainDataConfig.from_dict({"sources": ["x"], "seqlen": 3})


# ----------------------------------------------------------------------------------- end to end


@pytest.mark.skipif(not WIKI.exists(), reason="shared data absent")
def test_batches_train_a_tiny_model(tiny_arc, tiny_models):
    from transformers import AutoTokenizer

    model = tiny_arc()
    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    config = PretrainDataConfig(
        [str(WIKI)],
        seq_len=48,
        compress_tokens=48,
        target_tokens=32,
        prefix_tokens=16,
        batch_size=3,
        continuation=0.5,
        seed=1,
    )
    data = PretrainData(config, model.encoder_tokenizer, tok)
    tasks = set()
    for _ in range(4):
        batch = next(data)
        tasks.add(batch.task)
        loss, n = model(batch.samples, 0, batch.special)
        assert torch.isfinite(loss) and n == sum(sum(s.targets) for s in batch.samples)
        assert 3.0 < loss.item() / n < 9.0  # an untrained model: about ln(384) = 5.95 nats per token
    assert tasks == {"reconstruction", "continuation"}


# ----------------------------------------------------------------------------------- curriculum


def test_curriculum_mix_by_hand():
    from arc_encoder.data.pretrain import curriculum_mix

    # lengths 8, 16, 32 (seq_len): progress walks 0 -> 2 over the levels
    assert curriculum_mix([8, 16], 32, 0, 100) == {8: 1.0}
    assert curriculum_mix([8, 16], 32, 25, 100) == pytest.approx({8: 0.5, 16: 0.5})
    assert curriculum_mix([8, 16], 32, 50, 100) == {16: 1.0}
    assert curriculum_mix([8, 16], 32, 90, 100) == pytest.approx({16: 0.2, 32: 0.8})
    assert curriculum_mix([8, 16], 32, 100, 100) == {32: 1.0}
    assert curriculum_mix([8, 32], 32, 500, 100) == {32: 1.0}  # seq_len given as the last level


def test_curriculum_keeps_the_token_budget_and_moves_to_long_spans(tmp_path, chars):
    f = write_docs(tmp_path / "d.txt", [ascii_text(200 + i) for i in range(400)])
    config = small_config([f], continuation=0.0, batch_size=4, seq_len=32, curriculum=[8, 16], curriculum_batches=40)
    data = PretrainData(config, chars, chars)
    batches = [next(data) for _ in range(80)]
    for b in batches:
        lengths = {len(s.text_ids) for s in b.samples if len(s.text_ids) > 1}
        longest = max(lengths)
        # full spans of one length per batch; the batch holds 4 * 32 tokens of them
        assert len(b.samples) == 4 * 32 // longest, (len(b.samples), lengths)
    early = [max(len(s.text_ids) for s in b.samples) for b in batches[:5]]
    late = [max(len(s.text_ids) for s in b.samples) for b in batches[50:]]
    assert early[0] == 8 and early.count(8) >= 3 and set(late) == {32}
    mid = {max(len(s.text_ids) for s in b.samples) for b in batches[15:30]}
    assert {8, 16} & mid and len(mid) >= 2  # a mix while the curriculum moves


def test_curriculum_resume_restores_the_schedule(tmp_path, chars):
    f = write_docs(tmp_path / "d.txt", [ascii_text(120 + 3 * i) for i in range(300)])
    config = small_config(
        [f],
        continuation=0.5,
        batch_size=4,
        seq_len=32,
        curriculum=[8, 16],
        curriculum_batches=20,
        reconstruction_only_batches=6,
    )
    uninterrupted = PretrainData(config, chars, chars)
    expected = [next(uninterrupted) for _ in range(30)]
    assert {b.task for b in expected[:6]} == {"reconstruction"}  # phase 1
    assert "continuation" in {b.task for b in expected[6:]}
    first = PretrainData(config, chars, chars)
    [next(first) for _ in range(12)]
    resumed = PretrainData(config, chars, chars)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert [next(resumed) for _ in range(18)] == expected[12:]


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"curriculum": [16, 8]}, "increasing"),
        ({"curriculum": [8, 64], "curriculum_batches": 5}, "longer than seq_len"),
        ({"curriculum": [8]}, "curriculum_batches >= 1"),
        ({"curriculum_batches": 10}, "curriculum .*empty"),
        ({"reconstruction_only_batches": -1}, "reconstruction_only_batches"),
        ({"curriculum_step": 3}, "curriculum_step"),
    ],
)
def test_impossible_or_misspelt_schedules_are_refused_by_name(bad, message):
    with pytest.raises(ValueError, match=message):
        PretrainDataConfig.from_dict({"sources": ["x.txt"], "seq_len": 32, **bad})


def test_distinct_held_out_documents(tmp_path, chars):
    f = tmp_path / "d.jsonl"
    f.write_text(
        "\n".join(
            json.dumps({"context": c})
            for c in ["A cat sat.", "A cat sat.", "A dog ran far.", "A cat sat.", "A bird flew off."]
        )
    )
    data = PretrainData(
        small_config(
            [str(f)],
            continuation=0.0,
            loop=False,
            distinct=True,
            text_field="context",
            samples_per_document=1,
            batch_size=10,
        ),
        chars,
        chars,
    )
    (batch,) = list(data)
    assert len(batch.samples) == 3
