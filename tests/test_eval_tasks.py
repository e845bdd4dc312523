"""Loaders on tiny fixture files in every supported format, plus their error messages."""

import json
import sys
import types
from pathlib import Path

import pytest

from arc_encoder.evaluation.tasks import (
    CNN_QUESTION,
    Example,
    load_cnn_dailymail,
    load_flores,
    load_hotpotqa,
    load_jsonl,
    load_nq_open,
    load_squad_json,
    load_task,
    load_triviaqa,
    metric_for_task,
    split_shots,
)

SQUAD_DEV = Path("/work/shared/data/squad/dev.jsonl")


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


# --- load_jsonl ---------------------------------------------------------------------------------


def test_load_jsonl_context_and_passages(tmp_path):
    path = write_jsonl(
        tmp_path / "qa.jsonl",
        [
            {
                "id": "q1",
                "title": "T",
                "question": "Who?",
                "answers": ["Ann", "Anne"],
                "context": "Ann did.",
                "answer_starts": [0, 0],
            },
            {"question": "Where?", "answers": "Paris", "passages": ["p1", "p2"]},
        ],
    )
    first, second = load_jsonl(path)
    assert first == Example(question="Who?", answers=["Ann", "Anne"], passages=["Ann did."], id="q1", title="T")
    assert second == Example(question="Where?", answers=["Paris"], passages=["p1", "p2"], id="qa-2")


def test_load_jsonl_keeps_line_separator_characters(tmp_path):
    # U+2028 written raw inside a JSON string must not split the record (str.splitlines would).
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "a\u2028b", "answers": "x", "context": "c"}])
    assert load_jsonl(path)[0].question == "a\u2028b"


def test_load_jsonl_skips_blank_lines_and_counts_lines(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(
        '{"question": "q", "answers": "a", "context": "c"}\n\n{"question": "q", "answers": 3, "context": "c"}\n'
    )
    with pytest.raises(ValueError, match=r"qa\.jsonl, line 3: field 'answers'"):
        load_jsonl(path)


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"question": "q", "context": "c"}', r"line 2: missing field 'answers'"),
        ('{"answers": "a", "context": "c"}', r"line 2: missing field 'question'"),
        ('{"question": 7, "answers": "a", "context": "c"}', r"line 2: field 'question' must be a string"),
        ('{"question": "q", "answers": ["a", 1], "context": "c"}', r"line 2: field 'answers'"),
        ('{"question": "q", "answers": [], "context": "c"}', r"line 2: field 'answers' is empty"),
        ('{"question": "q", "answers": "a"}', r"line 2: need exactly one of 'context', 'passages'"),
        ('{"question": "q", "answers": "a", "context": ["c"]}', r"line 2: field 'context' must be a string"),
        ('{"question": "q", "answers": "a", "passages": [1]}', r"line 2: field 'passages'"),
        ('{"question": "q", "answers": "a", "context": "c", "id": [1]}', r"line 2: field 'id'"),
        ('{"question": "q", "answers": "a", "context": "c"', r"line 2: invalid JSON"),
        ('["not", "an", "object"]', r"line 2: expected a JSON object"),
    ],
)
def test_load_jsonl_errors_name_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "answers": "a", "context": "c"}\n' + line + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl, " + message):
        load_jsonl(path)


def test_load_jsonl_missing_and_empty_files(tmp_path):
    with pytest.raises(ValueError, match=r"nope\.jsonl: no such file"):
        load_jsonl(tmp_path / "nope.jsonl")
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"question": "caf\xe9", "answers": "a", "context": "c"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.jsonl: not UTF-8"):
        load_jsonl(latin1)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match=r"empty\.jsonl: no examples"):
        load_jsonl(empty)


@pytest.mark.skipif(not SQUAD_DEV.is_file(), reason="shared SQuAD data not present")
def test_load_jsonl_on_shared_squad_dev():
    # Read in place (the data never enters the repo); compare the first lines with the raw JSON.
    examples = load_jsonl(SQUAD_DEV)
    with SQUAD_DEV.open(encoding="utf-8") as f:
        head = [json.loads(next(f)) for _ in range(3)]
    for example, raw in zip(examples, head):
        assert example == Example(raw["question"], raw["answers"], [raw["context"]], raw["id"], raw["title"])
    assert examples[0].id == "56be4db0acb8001400a502ec"
    assert examples[0].question == "Which NFL team represented the AFC at Super Bowl 50?"
    assert examples[0].answers == ["Denver Broncos"] * 3


# --- official SQuAD JSON ------------------------------------------------------------------------


def squad_file(tmp_path, qas):
    data = {"version": "v2.0", "data": [{"title": "Art", "paragraphs": [{"context": "Ctx.", "qas": qas}]}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(data))
    return path


def test_load_squad_json_skips_unanswerable(tmp_path):
    path = squad_file(
        tmp_path,
        [
            {
                "id": "a",
                "question": "Q1?",
                "answers": [{"text": "x", "answer_start": 0}, {"text": "y", "answer_start": 1}],
            },
            {"id": "b", "question": "Q2?", "answers": [], "is_impossible": True},
        ],
    )
    assert load_squad_json(path) == [Example("Q1?", ["x", "y"], ["Ctx."], "a", "Art")]


def test_load_squad_json_error_names_the_record(tmp_path):
    path = squad_file(tmp_path, [{"id": "a", "question": None, "answers": [{"text": "x"}]}])
    with pytest.raises(ValueError, match=r"data\[0\]\.paragraphs\[0\]\.qas\[0\]: field 'question'"):
        load_squad_json(path)
    path = squad_file(tmp_path, [{"id": "a", "question": "q", "answers": ["x"]}])
    with pytest.raises(ValueError, match=r"qas\[0\]\.answers: expected a JSON object"):
        load_squad_json(path)
    path.write_text('{"version": "1.1"}')
    with pytest.raises(ValueError, match=r"missing field 'data'"):
        load_squad_json(path)


def test_load_squad_json_all_unanswerable_is_empty(tmp_path):
    path = squad_file(tmp_path, [{"id": "b", "question": "Q?", "answers": [], "is_impossible": True}])
    with pytest.raises(ValueError, match="no examples"):
        load_squad_json(path)


# --- NQ / TriviaQA with retrieved passages ------------------------------------------------------


def test_load_nq_open_takes_top_k(tmp_path):
    path = write_jsonl(
        tmp_path / "nq.jsonl",
        [
            {"question": "q1", "answers": ["a", "b"], "ctxs": [{"title": "t1", "text": "p1"}, {"text": "p2"}]},
            {"question": "q2", "answer": ["c"], "passages": ["p3", "p4", "p5"]},
        ],
    )
    one = load_nq_open(path)
    assert [e.passages for e in one] == [["p1"], ["p3"]]
    assert one[0].answers == ["a", "b"]  # all golds kept
    assert one[1].answers == ["c"]  # "answer" accepted as the key
    two = load_nq_open(path, n_passages=2)
    assert [e.passages for e in two] == [["p1", "p2"], ["p3", "p4"]]
    with pytest.raises(ValueError, match="n_passages"):
        load_nq_open(path, n_passages=0)


def test_load_triviaqa_errors(tmp_path):
    path = write_jsonl(
        tmp_path / "tqa.jsonl",
        [
            {"question": "q", "answers": ["alias one", "alias two"], "ctxs": ["p"]},
            {"question": "q", "answers": ["x"], "ctxs": [{"title": "no text"}]},
        ],
    )
    with pytest.raises(ValueError, match=r"tqa\.jsonl, line 2: field 'ctxs'"):
        load_triviaqa(path)
    path = write_jsonl(tmp_path / "tqa.jsonl", [{"question": "q", "answers": ["x"], "ctxs": []}])
    with pytest.raises(ValueError, match=r"line 1: field 'ctxs' has no passages"):
        load_triviaqa(path)


# --- HotpotQA -----------------------------------------------------------------------------------

HOTPOT_RECORD = {
    "_id": "h1",
    "question": "Which came first?",
    "answer": "Arthur's Magazine",
    "type": "comparison",
    "context": [
        ["Arthur's Magazine", ["Arthur's Magazine was a periodical.", " It ran in 1844."]],
        ["First for Women", ["First for Women is a magazine."]],
    ],
    "supporting_facts": [["Arthur's Magazine", 0]],
}


def test_load_hotpotqa_official_json(tmp_path):
    path = tmp_path / "hotpot_dev_distractor.json"
    path.write_text(json.dumps([HOTPOT_RECORD]))
    (example,) = load_hotpotqa(path)
    # Titles dropped, sentences joined by one space as stored, paragraphs joined by "\n", ONE passage.
    assert example.passages == ["Arthur's Magazine was a periodical.  It ran in 1844.\nFirst for Women is a magazine."]
    assert example.answers == ["Arthur's Magazine"]
    assert example.id == "h1"


def test_load_hotpotqa_hub_rows_as_jsonl(tmp_path):
    row = {
        "id": "h2",
        "question": "q",
        "answer": "yes",
        "context": {"title": ["A", "B"], "sentences": [["s1.", " s2."], ["s3."]]},
    }
    path = write_jsonl(tmp_path / "hotpot.jsonl", [row])
    assert load_hotpotqa(path) == [Example("q", ["yes"], ["s1.  s2.\ns3."], "h2")]


def test_load_hotpotqa_errors(tmp_path):
    bad = dict(HOTPOT_RECORD, context="just a string")
    path = tmp_path / "hotpot.json"
    path.write_text(json.dumps([HOTPOT_RECORD, bad]))
    with pytest.raises(ValueError, match=r"hotpot\.json, record 1: field 'context'"):
        load_hotpotqa(path)
    path.write_text(json.dumps([dict(HOTPOT_RECORD, answer=None)]))
    with pytest.raises(ValueError, match=r"record 0: field 'answer' must be a string"):
        load_hotpotqa(path)


# --- FLORES -------------------------------------------------------------------------------------


def test_load_flores_pairs_lines(tmp_path):
    src = tmp_path / "eng_Latn.dev"
    tgt = tmp_path / "fra_Latn.dev"
    src.write_text("Hello world.\nGood night.\n", encoding="utf-8")
    tgt.write_text("Bonjour le monde.\nBonne nuit.\n", encoding="utf-8")
    examples = load_flores(src, tgt, "French")
    assert examples == [
        Example("Translate the previous document into French.", ["Bonjour le monde."], ["Hello world."], "1"),
        Example("Translate the previous document into French.", ["Bonne nuit."], ["Good night."], "2"),
    ]
    # load_task: a FLORES-200 dev directory, or an explicit pair
    assert load_task("flores-french", tmp_path) == examples
    assert load_task("flores-French", (src, tgt)) == examples


def test_load_flores_errors(tmp_path):
    src = tmp_path / "src.txt"
    tgt = tmp_path / "tgt.txt"
    src.write_text("a\nb\n")
    tgt.write_text("x\n")
    with pytest.raises(ValueError, match=r"src\.txt has 2 lines but .*tgt\.txt has 1"):
        load_flores(src, tgt, "German")
    tgt.write_text("x\n \n")
    with pytest.raises(ValueError, match=r"tgt\.txt, line 2: empty sentence"):
        load_flores(src, tgt, "German")
    with pytest.raises(ValueError, match="FLORES-200 dev directory"):
        load_task("flores-klingon", tmp_path)


# --- CNN/DailyMail ------------------------------------------------------------------------------


def test_load_cnn_dailymail(tmp_path):
    path = write_jsonl(tmp_path / "cnn.jsonl", [{"id": "c1", "article": "Long text.", "highlights": "Short."}])
    assert load_cnn_dailymail(path) == [Example(CNN_QUESTION, ["Short."], ["Long text."], "c1")]
    assert CNN_QUESTION == "What is a very short summary of the above text?"
    write_jsonl(path, [{"article": "Long text."}])
    with pytest.raises(ValueError, match=r"cnn\.jsonl, line 1: missing field 'highlights'"):
        load_cnn_dailymail(path)


# --- load_task ----------------------------------------------------------------------------------


def test_load_task_dispatch(tmp_path):
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answers": "a", "ctxs": ["p1", "p2"]}])
    assert load_task("nq", qa)[0].passages == ["p1"]
    assert load_task("triviaqa", qa, n_passages=2)[0].passages == ["p1", "p2"]
    assert load_task("jsonl", qa)[0].passages == ["p1", "p2"]
    assert load_task("squad", qa)[0].passages == ["p1", "p2"]  # squad accepts our JSONL too
    squad = squad_file(tmp_path, [{"id": "a", "question": "Q?", "answers": [{"text": "x"}]}])
    assert load_task("squad", squad)[0].id == "a"
    cnn = write_jsonl(tmp_path / "cnn.jsonl", [{"article": "A", "highlights": "H"}])
    assert load_task("cnn", cnn)[0].question == CNN_QUESTION
    hotpot = tmp_path / "h.json"
    hotpot.write_text(json.dumps([HOTPOT_RECORD]))
    assert load_task("HotpotQA", hotpot)[0].id == "h1"


def test_load_task_unknown_name_lists_known(tmp_path):
    with pytest.raises(ValueError, match=r"unknown task 'mmlu'.*squad.*nq.*triviaqa.*hotpotqa.*flores-<language>.*cnn"):
        load_task("mmlu", tmp_path / "x.jsonl")


def test_load_task_hub_needs_datasets(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ValueError, match=r"'rajpurkar/squad' is not a local file.*pip install datasets"):
        load_task("squad", "rajpurkar/squad")
    # NQ has no hub fallback: its hub rows lack the retrieved passages.
    with pytest.raises(ValueError, match="no such file"):
        load_task("nq", tmp_path / "missing.jsonl")
    # A missing local-looking path is reported as such, never sent to the hub.
    with pytest.raises(ValueError, match=r"missing\.json: no such file"):
        load_task("hotpotqa", tmp_path / "missing.json")


def test_load_task_hub_rows_are_converted(monkeypatch):
    rows = [
        {"id": "s1", "title": "T", "context": "C", "question": "Q", "answers": {"text": ["A"], "answer_start": [0]}},
        {"id": "s2", "title": "T", "context": "C", "question": "Q2", "answers": {"text": [], "answer_start": []}},
    ]
    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return rows

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    examples = load_task("squad", "rajpurkar/squad_v2", split="validation")
    assert calls == [("rajpurkar/squad_v2", None, "validation")]
    assert examples == [Example("Q", ["A"], ["C"], "s1", "T")]  # unanswerable row skipped


def test_load_task_hub_offline_is_a_clear_error(monkeypatch):
    def load_dataset(name, config, split):
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(ValueError, match=r"could not load 'abisee/cnn_dailymail' from the hub \(no network\)"):
        load_task("cnn", "abisee/cnn_dailymail")


# --- shots and metrics --------------------------------------------------------------------------


def make_examples(n):
    return [Example(f"q{i}", [f"a{i}"], [f"p{i}"], str(i)) for i in range(n)]


def test_split_shots_disjoint_and_complete():
    examples = make_examples(20)
    shots, rest = split_shots(examples, 5, seed=3)
    assert len(shots) == 5 and len(rest) == 15
    shot_ids = {e.id for e in shots}
    assert shot_ids.isdisjoint(e.id for e in rest)
    assert shot_ids | {e.id for e in rest} == {e.id for e in examples}
    assert [e.id for e in rest] == sorted((e.id for e in rest), key=int)  # eval keeps file order


def test_split_shots_deterministic():
    examples = make_examples(50)
    assert split_shots(examples, 5, seed=7) == split_shots(examples, 5, seed=7)
    # Seeds matter: with 50 choose 5 options, two seeds agreeing would be a bug in practice.
    assert split_shots(examples, 5, seed=7)[0] != split_shots(examples, 5, seed=8)[0]


def test_split_shots_bounds():
    examples = make_examples(3)
    assert split_shots(examples, 0, seed=0) == ([], examples)
    with pytest.raises(ValueError):
        split_shots(examples, 4, seed=0)
    with pytest.raises(ValueError):
        split_shots(examples, -1, seed=0)


@pytest.mark.parametrize(
    "name, metrics",
    [
        ("squad", ("em", "f1")),
        ("nq", ("em", "f1")),
        ("triviaqa", ("em", "f1")),
        ("hotpotqa", ("em", "f1")),
        ("jsonl", ("em", "f1")),
        ("flores-danish", ("bleu",)),
        ("cnn", ("rougeL",)),
    ],
)
def test_metric_for_task(name, metrics):
    assert metric_for_task(name) == metrics


def test_metric_for_unknown_task():
    with pytest.raises(ValueError, match="known tasks"):
        metric_for_task("mmlu")
