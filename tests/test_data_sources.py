"""Document sources: file formats, sharding, looping, mixing, bad input, resume."""

from __future__ import annotations

import json
import logging
from collections import Counter

import pytest

from arc_encoder.data.sources import (
    BadRecord,
    FileStream,
    Mixture,
    SourceSpec,
    open_mixture,
    open_source,
    parse_source,
    parse_sources,
    seeded_rng,
    text_field,
)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def texts(stream, n=None):
    out = []
    for record in stream:
        out.append(record.value)
        if n is not None and len(out) == n:
            break
    return out


def test_parse_source_forms():
    assert parse_source("data/a.jsonl") == SourceSpec("data/a.jsonl")
    assert parse_source("data/a.jsonl:0.5") == SourceSpec("data/a.jsonl", 0.5)
    assert parse_source("a.jsonl:8:5") == SourceSpec("a.jsonl", 8.0, 5)
    assert parse_source("hf:org/name:2") == SourceSpec("hf:org/name", 2.0)
    assert parse_source(("x.txt", 3)) == SourceSpec("x.txt", 3)
    assert parse_source({"path": "x", "weight": 2, "split": "validation"}).split == "validation"
    assert [s.path for s in parse_sources("a.txt:1, b.jsonl:3")] == ["a.txt", "b.jsonl"]
    with pytest.raises(ValueError, match="weight"):
        parse_source("a.txt:0")
    with pytest.raises(ValueError, match="unknown source field"):
        parse_source({"path": "x", "wieght": 1})
    with pytest.raises(ValueError, match="at least one"):
        parse_sources([])


def test_text_file_paragraphs_are_documents(tmp_path):
    f = write(tmp_path / "a.txt", "first line\nstill first\n\n\n  \nsecond\n\nthird\n")
    stream = FileStream(f, text_field(), loop=False)
    records = list(stream)
    assert [r.value for r in records] == ["first line\nstill first", "second", "third"]
    assert [r.where for r in records] == [f"{f}, line 1", f"{f}, line 6", f"{f}, line 8"]


def test_jsonl_and_folder(tmp_path):
    write(tmp_path / "b.jsonl", '{"text": "b1"}\n\n{"text": "b2", "x": 1}\n')
    sub = tmp_path / "sub"
    sub.mkdir()
    write(sub / "c.txt", "c1\n\nc2")
    write(tmp_path / "ignored.csv", "not,read\n")
    write(tmp_path / "meta.json", '{"not": "read"}\n')
    got = texts(FileStream(tmp_path, text_field(), loop=False))
    assert got == ["b1", "b2", "c1", "c2"]  # sorted paths: b.jsonl < sub/c.txt


def test_sharding_partitions_documents(tmp_path):
    f = write(tmp_path / "d.txt", "\n\n".join(f"doc {i}" for i in range(23)))
    everything = texts(FileStream(f, text_field(), loop=False))
    shards = [texts(FileStream(f, text_field(), rank=r, world_size=4, loop=False)) for r in range(4)]
    assert sorted(sum(shards, [])) == sorted(everything)
    assert all(not set(a) & set(b) for i, a in enumerate(shards) for b in shards[i + 1 :])
    assert shards[1] == [f"doc {i}" for i in range(1, 23, 4)]  # rank r takes i % W == r


def test_training_loops_and_counts_epochs(tmp_path):
    f = write(tmp_path / "d.txt", "a\n\nb\n\nc")
    stream = FileStream(f, text_field(), loop=True)
    assert texts(stream, 7) == ["a", "b", "c", "a", "b", "c", "a"]
    assert stream.state["epoch"] == 2 and stream.epoch == 2


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        FileStream(tmp_path / "nope.txt", text_field())
    with pytest.raises(ValueError, match="empty.jsonl: empty file"):
        FileStream(write(tmp_path / "empty.jsonl", ""), text_field())
    with pytest.raises(ValueError, match="no usable record"):
        list(FileStream(write(tmp_path / "blank.txt", "\n\n  \n"), text_field(), loop=False))
    (tmp_path / "dir").mkdir()
    with pytest.raises(ValueError, match="holds no"):
        FileStream(tmp_path / "dir", text_field())


def test_bad_lines_name_file_and_line(tmp_path):
    f = write(tmp_path / "bad.jsonl", '{"text": "ok"}\n{"body": "no text"}\n{"text": "ok2"}\n')
    with pytest.raises(BadRecord, match=r"bad.jsonl, line 2: missing field 'text'"):
        list(FileStream(f, text_field(), loop=False))
    g = write(tmp_path / "bad2.jsonl", '{"text": "ok"}\n\n{"text": "unterminated\n')
    with pytest.raises(BadRecord, match=r"bad2.jsonl, line 3: invalid JSON"):
        list(FileStream(g, text_field(), loop=False))
    h = write(tmp_path / "bad3.jsonl", '[1, 2]\n{"text": 5}\n{"text": "  "}\n')
    with pytest.raises(BadRecord, match="line 1: expected a JSON object"):
        list(FileStream(h, text_field(), loop=False))
    (tmp_path / "bin.txt").write_bytes(b"fine\n\n\xff\xfe broken\n")
    with pytest.raises(BadRecord, match=r"bin.txt, line 3: not UTF-8"):
        list(FileStream(tmp_path / "bin.txt", text_field(), loop=False))


def test_skip_bad_lines_counts_and_warns(tmp_path, caplog):
    f = write(tmp_path / "bad.jsonl", '{"text": "a"}\n{"t": 1}\nnot json\n{"text": 3}\n{"text": "b"}\n')
    stream = FileStream(f, text_field(), loop=False, on_bad_line="skip")
    with caplog.at_level(logging.WARNING, logger="arc_encoder.data.sources"):
        assert texts(stream) == ["a", "b"]
    assert stream.state["bad"] == 3
    assert "skipped 3 bad record(s)" in caplog.text and "line 2" in caplog.text


def test_file_stream_resume_mid_file(tmp_path):
    f = write(tmp_path / "d.txt", "\n\n".join(f"doc {i}\nline two" for i in range(10)))
    a = FileStream(f, text_field(), rank=1, world_size=2)
    texts(a, 3)
    state = json.loads(json.dumps(a.state_dict()))
    rest = texts(a, 6)
    b = FileStream(f, text_field(), rank=1, world_size=2)
    b.load_state_dict(state)
    assert texts(b, 6) == rest


def test_mixture_follows_weights_and_resumes(tmp_path):
    fa = write(tmp_path / "a.txt", "\n\n".join(f"a{i}" for i in range(50)))
    fb = write(tmp_path / "b.txt", "\n\n".join(f"b{i}" for i in range(50)))
    specs = parse_sources([f"{fa}:3", f"{fb}:1"])
    mix = open_mixture(specs, text_field(), 0, 1, True, "error", 0, seed=3)
    draws = [next(mix)[0] for _ in range(4000)]
    share = Counter(draws)[0] / len(draws)
    assert abs(share - 0.75) < 0.03  # binomial std ~0.007
    assert mix.epochs == [Counter(draws)[i] // 50 for i in range(2)]  # full passes over each file
    state = json.loads(json.dumps(mix.state_dict()))
    after = [(i, r.value) for i, r in (next(mix) for _ in range(30))]
    again = open_mixture(specs, text_field(), 0, 1, True, "error", 0, seed=3)
    again.load_state_dict(state)
    assert [(i, r.value) for i, r in (next(again) for _ in range(30))] == after


def test_finite_mixture_drops_exhausted_sources(tmp_path):
    fa = write(tmp_path / "a.txt", "a0\n\na1")
    fb = write(tmp_path / "b.txt", "\n\n".join(f"b{i}" for i in range(20)))
    streams = [FileStream(fa, text_field(), loop=False), FileStream(fb, text_field(), loop=False)]
    got = [r.value for _, r in Mixture(streams, [100.0, 1.0], seeded_rng(0, 0, "t"))]
    assert sorted(got) == sorted(["a0", "a1"] + [f"b{i}" for i in range(20)])


def test_shuffle_buffer_permutes_and_resumes(tmp_path):
    f = write(tmp_path / "d.txt", "\n\n".join(f"d{i}" for i in range(40)))
    spec = SourceSpec(str(f))
    one_pass = texts(open_source(spec, text_field(), loop=False, shuffle_buffer=8, seed=1))
    assert sorted(one_pass) == sorted(f"d{i}" for i in range(40)) and one_pass != sorted(one_pass)
    a = open_source(spec, text_field(), shuffle_buffer=8, seed=1)
    texts(a, 13)
    state = json.loads(json.dumps(a.state_dict()))
    rest = texts(a, 50)
    b = open_source(spec, text_field(), shuffle_buffer=8, seed=1)
    b.load_state_dict(state)
    assert texts(b, 50) == rest


def test_saved_dataset_source(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_dict({"text": [f"row {i}" for i in range(9)], "n": list(range(9))})
    data.save_to_disk(str(tmp_path / "saved"))
    spec = SourceSpec(str(tmp_path / "saved"))
    assert texts(open_source(spec, text_field(), rank=2, world_size=3, loop=False)) == ["row 2", "row 5", "row 8"]
    stream = open_source(spec, text_field(), loop=True)
    assert len(texts(stream, 12)) == 12 and stream.state["epoch"] == 1
    datasets.DatasetDict({"validation": data}).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(ValueError, match="no split 'train'"):
        open_source(SourceSpec(str(tmp_path / "dict")), text_field())
    bad = datasets.Dataset.from_dict({"body": ["x"]})
    bad.save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(BadRecord, match=r"row 0: missing field 'text'"):
        texts(open_source(SourceSpec(str(tmp_path / "bad")), text_field(), loop=False))


def test_dataset_source_without_datasets_package(tmp_path, monkeypatch):
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "state.json").write_text("{}")
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)  # import now fails
    with pytest.raises(ImportError, match=r"needs the `datasets` package"):
        open_source(SourceSpec(str(tmp_path / "saved")), text_field())


def test_resume_refuses_changed_files(tmp_path):
    write(tmp_path / "a.txt", "a0\n\na1")
    write(tmp_path / "c.txt", "c0\n\nc1")
    stream = FileStream(tmp_path, text_field())
    texts(stream, 3)  # now inside c.txt
    state = stream.state_dict()
    write(tmp_path / "b.txt", "b0")  # a new file sorts before c.txt
    with pytest.raises(ValueError, match="files changed"):
        FileStream(tmp_path, text_field()).load_state_dict(state)
