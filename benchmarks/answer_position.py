"""EM and F1 by where the answer lies in its document: what truncation keeps and compression spreads.

    python benchmarks/answer_position.py --data ../shared/data/squad/dev.jsonl \
        runs/evals/v5/report.json:arc runs/evals/trunc/report.json:truncate [--bins 4]

Each REPORT:METHOD names an `arc-encoder eval` report and one of its methods. Questions are put
in bins by the answer's first character offset over the document's length (SQuAD's
`answer_starts`; bin 0 of 4 is the first quarter), and each method's mean EM and F1 is printed
per bin with its standard error. Truncation to a quarter of the budget reads the first quarter
verbatim and guesses elsewhere; a compressor that carries the whole document scores alike in
every bin. Only questions every named report answered are counted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from arc_encoder.evaluation.metrics import mean_with_stderr


def answer_bin(record: dict, bins: int) -> int:
    """The bin of the document where the record's first answer starts (0 .. bins - 1)."""
    start, length = record["answer_starts"][0], len(record["context"])
    if not 0 <= start < length:
        raise ValueError(f"question {record['id']}: answer start {start} is outside its {length}-character document")
    return start * bins // length


def predictions(report: Path, method: str) -> dict[str, dict]:
    """Question id -> the report's prediction record for `method`."""
    runs = json.loads(report.read_text())["runs"]
    for run in runs:
        if method in run["predictions"]:
            return {p["id"]: p for p in run["predictions"][method]}
    found = sorted({m for run in runs for m in run["predictions"]})
    raise ValueError(f"{report} has no predictions of method {method!r}; it has {found}")


def by_position(records: dict[str, dict], methods: dict[str, dict[str, dict]], bins: int) -> list[dict]:
    """Per bin: its question count and each method's (EM, its stderr, F1, its stderr)."""
    ids = sorted(set.intersection(*(set(p) for p in methods.values())))
    missing = [i for i in ids if i not in records]
    if missing:
        raise ValueError(f"{len(missing)} predicted question(s) are not in the data file, e.g. {missing[0]}")
    rows = []
    for b in range(bins):
        members = [i for i in ids if answer_bin(records[i], bins) == b]
        row = {"bin": b, "questions": len(members)}
        for name, preds in methods.items():
            scores = [mean_with_stderr([preds[i][m] for i in members]) for m in ("em", "f1")] if members else []
            row[name] = tuple(x for pair in scores for x in pair) or (float("nan"),) * 4
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="the evaluation's JSONL (with answer_starts)")
    ap.add_argument("--bins", type=int, default=4)
    ap.add_argument("reports", nargs="+", help="REPORT.json:METHOD")
    args = ap.parse_args(argv)
    if args.bins < 1:
        ap.error("--bins must be >= 1")
    methods = {}
    for spec in args.reports:
        path, sep, method = spec.rpartition(":")
        if not sep:
            ap.error(f"{spec}: expected REPORT.json:METHOD")
        try:
            methods[spec] = predictions(Path(path), method)
        except (OSError, json.JSONDecodeError, KeyError, ValueError) as e:
            ap.error(f"{path}: not a readable eval report ({e})")
    try:
        with args.data.open() as f:
            records = {r["id"]: r for r in map(json.loads, filter(str.strip, f))}
    except (OSError, json.JSONDecodeError, KeyError) as e:
        ap.error(f"{args.data}: not a readable JSONL of questions with ids ({e})")
    rows = by_position(records, methods, args.bins)
    print("| answer in | questions | " + " | ".join(f"{s} EM / F1" for s in methods) + " |")
    print("|---|---|" + "---|" * len(methods))
    for row in rows:
        cells = [f"{row[s][0]:.1f} ± {row[s][1]:.1f} / {row[s][2]:.1f} ± {row[s][3]:.1f}" for s in methods]
        print(f"| bin {row['bin'] + 1} of {args.bins} | {row['questions']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
