"""Evaluation data sets, all read into one schema (method.md §8.1, §13.9).

Every loader returns `list[Example]`: a question, its gold answers, and the passages the model may
read. Prompts (prompts.py) and metrics (metrics.py) only ever see that schema, so adding a data set
means adding a loader here and nothing else.

Bad input raises `ValueError` naming the file, the line (or record) and the field, because a wrong
field in line 40 213 of a JSONL file is otherwise a long hunt.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arc_encoder.records import (
    as_object,
    bad_field,
    id_field,
    json_or_jsonl_records,
    jsonl_records,
    list_field,
    read_lines,
    read_text,
    string_field,
)

CNN_QUESTION = "What is a very short summary of the above text?"
TRANSLATE_QUESTION = "Translate the previous document into {language}."

# FLORES-200 file codes for the paper's four target languages (directory layout of load_task).
FLORES_CODES = {"danish": "dan_Latn", "french": "fra_Latn", "german": "deu_Latn", "spanish": "spa_Latn"}

QA_TASKS = ("squad", "nq", "triviaqa", "hotpotqa", "jsonl")
# Long documents built from a SQuAD-style file (evaluation/haystack.py): read as squad, scored as QA.
HAYSTACK = "haystack"
KNOWN_TASKS = QA_TASKS + (HAYSTACK, "flores-<language>", "cnn")


@dataclass
class Example:
    """One evaluation item. `answers` are all accepted golds (shots show the first);
    `passages` are the documents, in order (one for SQuAD, CNN, FLORES and HotpotQA)."""

    question: str
    answers: list[str]
    passages: list[str]
    id: str
    title: str = ""


def _non_empty(examples: list[Example], path: str | Path) -> list[Example]:
    if not examples:
        raise ValueError(f"{path}: no examples in file")
    return examples


# --- the QA schema --------------------------------------------------------------------------


def _answers(record: dict, where: str) -> list[str]:
    # "answer" is accepted too: the reference preparation scripts and nq_open use that key.
    name = "answers" if "answers" in record or "answer" not in record else "answer"
    if name not in record:
        raise ValueError(f"{where}: missing field 'answers'")
    value = record[name]
    if isinstance(value, dict) and "text" in value:  # Hugging Face SQuAD rows: {"text": [...], ...}
        value = value["text"]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise bad_field(where, name, "a string or a list of strings", value)
    if not value:
        raise ValueError(f"{where}: field '{name}' is empty")
    return value


def _passages(record: dict, where: str, n_passages: int | None) -> list[str]:
    """The passages of a QA record: `context` (one string), `passages` or `ctxs` (a list)."""
    keys = [k for k in ("context", "passages", "ctxs") if k in record]
    if len(keys) != 1:
        found = "none" if not keys else " and ".join(keys)
        raise ValueError(f"{where}: need exactly one of 'context', 'passages', 'ctxs' (found {found})")
    name = keys[0]
    value = record[name]
    if name == "context" and not isinstance(value, str):
        raise bad_field(where, name, "a string", value)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise bad_field(where, name, "a list of strings or of {'text': ...} objects", value)
    passages = []
    for item in value:
        # Retrieval outputs (DPR, Atlas) store {"title", "text", "score"}; only the text is read.
        if isinstance(item, dict) and isinstance(item.get("text"), str):
            item = item["text"]
        if not isinstance(item, str):
            raise bad_field(where, name, "a list of strings or of {'text': ...} objects", item)
        passages.append(item)
    if n_passages is not None:
        passages = passages[:n_passages]  # top-k retrieved, best first (method.md §13.9)
    if not passages:
        raise ValueError(f"{where}: field '{name}' has no passages")
    return passages


def _qa_example(record: dict, where: str, default_id: str, n_passages: int | None = None) -> Example:
    return Example(
        question=string_field(record, "question", where),
        answers=_answers(record, where),
        passages=_passages(record, where, n_passages),
        id=id_field(record, where, default_id),
        title=string_field(record, "title", where, default=""),
    )


# --- loaders ---------------------------------------------------------------------------------


def load_jsonl(path: str | Path) -> list[Example]:
    """Our JSONL schema: `question`, `answers` (str or list), `context` or `passages`,
    optional `id` and `title`. Other fields (e.g. `answer_starts`) are ignored."""
    stem = Path(path).stem
    examples = [_qa_example(rec, where, f"{stem}-{n}") for where, n, rec in jsonl_records(path)]
    return _non_empty(examples, path)


def load_squad_json(path: str | Path) -> list[Example]:
    """Official SQuAD v1.1 / v2.0 JSON. Unanswerable v2 questions are skipped: EM needs a gold."""
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}, line {err.lineno}: invalid JSON ({err.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError(f"{path}: missing field 'data' (expected the official SQuAD layout)")
    examples = []
    for i, article in enumerate(data["data"]):
        where = f"{path}, data[{i}]"
        title = string_field(as_object(article, where), "title", where, default="")
        for j, paragraph in enumerate(list_field(article, "paragraphs", where)):
            where = f"{path}, data[{i}].paragraphs[{j}]"
            context = string_field(as_object(paragraph, where), "context", where)
            for k, qa in enumerate(list_field(paragraph, "qas", where)):
                where = f"{path}, data[{i}].paragraphs[{j}].qas[{k}]"
                answers = list_field(as_object(qa, where), "answers", where)
                if qa.get("is_impossible") or not answers:
                    continue  # SQuAD v2 unanswerable question
                examples.append(
                    Example(
                        question=string_field(qa, "question", where),
                        answers=[
                            string_field(as_object(a, f"{where}.answers"), "text", f"{where}.answers") for a in answers
                        ],
                        passages=[context],
                        id=id_field(qa, where, default=f"{i}-{j}-{k}"),
                        title=title,
                    )
                )
    return _non_empty(examples, path)


def _load_retrieved(path: str | Path, n_passages: int) -> list[Example]:
    if n_passages < 1:
        raise ValueError(f"n_passages must be at least 1, got {n_passages}")
    stem = Path(path).stem
    examples = [_qa_example(rec, where, f"{stem}-{n}", n_passages) for where, n, rec in jsonl_records(path)]
    return _non_empty(examples, path)


def load_nq_open(path: str | Path, n_passages: int = 1) -> list[Example]:
    """NQ-open JSONL with retrieved passages (`passages` or `ctxs`); keeps the top `n_passages`.

    All gold answers are kept (the reference code kept only the first; method.md §11.2)."""
    return _load_retrieved(path, n_passages)


def load_triviaqa(path: str | Path, n_passages: int = 1) -> list[Example]:
    """TriviaQA JSONL with retrieved passages; `answers` holds all aliases."""
    return _load_retrieved(path, n_passages)


def _hotpot_example(record: dict, where: str, default_id: str) -> Example:
    context = record.get("context")
    # Official JSON: [[title, [sentences]], ...]; Hugging Face rows: {"title": [...], "sentences": [...]}.
    if isinstance(context, dict) and isinstance(context.get("sentences"), list):
        paragraphs = context["sentences"]
    elif isinstance(context, list) and all(isinstance(p, list) and len(p) == 2 for p in context):
        paragraphs = [sentences for _title, sentences in context]
    else:
        raise bad_field(where, "context", "a list of [title, sentences] pairs", context)
    for sentences in paragraphs:
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            raise bad_field(where, "context", "paragraphs of string sentences", sentences)
    # Sentences are joined exactly as stored (they carry their own leading spaces), titles dropped,
    # and all ten paragraphs become ONE passage (method.md §13.9: the paper's 1479-token contexts).
    passage = "\n".join(" ".join(sentences) for sentences in paragraphs)
    answer = string_field(record, "answer", where)
    return Example(
        question=string_field(record, "question", where),
        answers=[answer],
        passages=[passage],
        id=id_field(record, where, default_id, name="_id" if "_id" in record else "id"),
    )


def load_hotpotqa(path: str | Path) -> list[Example]:
    """HotpotQA distractor set: the official JSON array, or JSONL rows of the hub version."""
    stem = Path(path).stem
    examples = [_hotpot_example(rec, where, f"{stem}-{n}") for where, n, rec in json_or_jsonl_records(path)]
    return _non_empty(examples, path)


def load_flores(src_path: str | Path, tgt_path: str | Path, language: str) -> list[Example]:
    """FLORES translation: two line-aligned files; the source sentence is the document."""
    sources, targets = read_lines(src_path), read_lines(tgt_path)
    if len(sources) != len(targets):
        raise ValueError(f"{src_path} has {len(sources)} lines but {tgt_path} has {len(targets)}")
    question = TRANSLATE_QUESTION.format(language=language)
    examples = []
    for number, (source, target) in enumerate(zip(sources, targets), start=1):
        for path, text in ((src_path, source), (tgt_path, target)):
            if not text.strip():
                raise ValueError(f"{path}, line {number}: empty sentence")
        examples.append(Example(question=question, answers=[target], passages=[source], id=str(number)))
    return _non_empty(examples, src_path)


def _cnn_example(record: dict, where: str, default_id: str) -> Example:
    return Example(
        question=CNN_QUESTION,
        answers=[string_field(record, "highlights", where)],
        passages=[string_field(record, "article", where)],
        id=id_field(record, where, default_id),
    )


def load_cnn_dailymail(path: str | Path) -> list[Example]:
    """CNN/DailyMail JSONL with `article` and `highlights` (method.md §13.9: the validation split)."""
    stem = Path(path).stem
    examples = [_cnn_example(rec, where, f"{stem}-{n}") for where, n, rec in jsonl_records(path)]
    return _non_empty(examples, path)


# --- dispatch --------------------------------------------------------------------------------

# Hub data sets whose rows our record converters read directly. NQ and TriviaQA are absent on
# purpose: their hub versions carry no retrieved passages, which the protocol needs.
_HUB_CONVERTERS: dict[str, Callable[[dict, str, str], Example]] = {
    "squad": _qa_example,
    "hotpotqa": _hotpot_example,
    "cnn": _cnn_example,
}


def _load_hub(task: str, dataset: str, config: str | None, split: str) -> list[Example]:
    try:
        import datasets
    except ImportError:
        raise ValueError(
            f"{dataset!r} is not a local file; loading it from the Hugging Face hub needs the "
            "`datasets` package (pip install datasets), or pass the path of a downloaded file"
        ) from None
    try:
        rows = datasets.load_dataset(dataset, config, split=split)
    except Exception as err:  # offline, unknown name, missing config: all end the same way
        raise ValueError(f"could not load {dataset!r} from the hub ({err}); pass a local file") from err
    convert = _HUB_CONVERTERS[task]
    examples = []
    for index, row in enumerate(rows):
        if task == "squad" and not row["answers"]["text"]:
            continue  # SQuAD v2 unanswerable question
        examples.append(convert(dict(row), f"{dataset}[{split}] row {index}", f"{split}-{index}"))
    return _non_empty(examples, dataset)


def _flores_paths(language: str, path: Any) -> tuple[Path, Path]:
    """A (source, target) pair, or a FLORES-200 `dev` directory holding eng_Latn.dev and <code>.dev."""
    if isinstance(path, (tuple, list)) and len(path) == 2:
        return Path(path[0]), Path(path[1])
    directory = Path(path)
    if directory.is_dir() and language.lower() in FLORES_CODES:
        code = FLORES_CODES[language.lower()]
        return directory / "eng_Latn.dev", directory / f"{code}.dev"
    raise ValueError(
        f"flores needs a (source, target) pair of files, or a FLORES-200 dev directory for one of "
        f"{', '.join(sorted(FLORES_CODES))}; got {path!r}"
    )


def load_task(
    name: str, path: Any, *, n_passages: int = 1, split: str = "validation", config: str | None = None
) -> list[Example]:
    """Load a data set by task name: squad, nq, triviaqa, hotpotqa, flores-<language>, cnn, jsonl,
    or haystack (a SQuAD file, read as squad: the haystacks are built from it when evaluating).

    `path` is a local file (flores: a file pair or directory). For squad, hotpotqa and cnn a path
    that is not a local file is taken as a Hugging Face hub name (`split`, `config`), which needs
    the optional `datasets` package and network access.
    """
    task = name.lower()
    if task.startswith("flores-"):
        language = task[len("flores-") :].capitalize()
        source, target = _flores_paths(language, path)
        return load_flores(source, target, language)
    if task == HAYSTACK:
        task = "squad"
    if task not in QA_TASKS and task != "cnn":
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(KNOWN_TASKS)}")
    # A missing "x.jsonl" is a typo in a local path, not a hub name: report it as a missing file.
    local = Path(path).exists() or Path(path).suffix in (".json", ".jsonl")
    if task in _HUB_CONVERTERS and not local:
        return _load_hub(task, str(path), config, split)
    if task == "squad":
        # Official nested JSON, or our flat JSONL (e.g. /work/shared/data/squad/*.jsonl).
        return load_jsonl(path) if Path(path).suffix == ".jsonl" else load_squad_json(path)
    if task == "nq":
        return load_nq_open(path, n_passages)
    if task == "triviaqa":
        return load_triviaqa(path, n_passages)
    if task == "hotpotqa":
        return load_hotpotqa(path)
    if task == "cnn":
        return load_cnn_dailymail(path)
    return load_jsonl(path)


def split_shots(examples: Sequence[Example], k: int, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Pick `k` in-context shots at random (fixed by `seed`) and return (shots, eval examples).

    The shots are never scored. The same seed gives the same shots for every model, so all
    systems are compared on the same prompts and the same evaluation set. The eval examples keep
    their file order. (The paper's own order, a Python 3.10-only shuffle, is not reproduced.)
    """
    if not 0 <= k <= len(examples):
        raise ValueError(f"cannot take {k} shots from {len(examples)} examples")
    chosen = random.Random(seed).sample(range(len(examples)), k)
    taken = set(chosen)
    shots = [examples[i] for i in chosen]
    rest = [e for i, e in enumerate(examples) if i not in taken]
    return shots, rest


def metric_for_task(name: str) -> tuple[str, ...]:
    """Metric names reported for a task (method.md §8.1): QA -> em, f1; flores -> bleu; cnn -> rougeL."""
    task = name.lower()
    if task.startswith("flores-"):
        return ("bleu",)
    if task == "cnn":
        return ("rougeL",)
    if task in QA_TASKS or task == HAYSTACK:
        return ("em", "f1")
    raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(KNOWN_TASKS)}")
