"""benchmarks/answer_position.py: answers put in bins by where they start, means counted by hand."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "answer_position.py"
spec = importlib.util.spec_from_file_location("answer_position", SCRIPT)
answer_position = importlib.util.module_from_spec(spec)
spec.loader.exec_module(answer_position)


def record(id_, start, length=100):
    return {"id": id_, "context": "x" * length, "answer_starts": [start], "answers": ["x"]}


def test_bins_by_answer_start():
    assert [answer_position.answer_bin(record("a", s), 4) for s in (0, 24, 25, 50, 74, 75, 99)] == [0, 0, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="question b: answer start 100 is outside its 100-character document"):
        answer_position.answer_bin(record("b", 100), 4)


def test_means_per_bin_counted_by_hand(tmp_path, capsys):
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps(record(i, s)) + "\n" for i, s in [("q1", 10), ("q2", 20), ("q3", 90)]))
    first = {"q1": (100.0, 100.0), "q2": (0.0, 50.0), "q3": (0.0, 0.0)}
    second = {"q1": (0.0, 20.0), "q2": (0.0, 0.0), "q3": (100.0, 100.0), "q4": (100.0, 100.0)}  # q4: not in both
    paths = []
    for name, scores in (("a", first), ("b", second)):
        preds = [{"id": i, "em": em, "f1": f1} for i, (em, f1) in scores.items()]
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"runs": [{"predictions": {"arc": preds}}]}))
        paths.append(f"{path}:arc")
    assert answer_position.main(["--data", str(data), "--bins", "2", *paths]) == 0
    out = capsys.readouterr().out.splitlines()
    # bin 1: q1, q2 -> a: EM 50 ± 50, F1 75 ± 25; b: EM 0, F1 10 ± 10. bin 2: q3 alone (no stderr of one).
    assert out[2] == "| bin 1 of 2 | 2 | 50.0 ± 50.0 / 75.0 ± 25.0 | 0.0 ± 0.0 / 10.0 ± 10.0 |"
    assert out[3] == "| bin 2 of 2 | 1 | 0.0 ± nan / 0.0 ± nan | 100.0 ± nan / 100.0 ± nan |"


def test_unknown_method_named(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"runs": [{"predictions": {"arc": []}}]}))
    with pytest.raises(ValueError, match="has no predictions of method 'truncate'; it has \\['arc'\\]"):
        answer_position.predictions(path, "truncate")
