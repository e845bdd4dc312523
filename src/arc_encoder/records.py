"""Reading JSON / JSONL / line files with errors that say where: file, line (or record), field.

Loaders pass a `where` string ("dev.jsonl, line 12") to every check, so a bad value in line
40 213 of a file is reported as such instead of as a KeyError deep inside a loop.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def command_line_text(text: str, what: str) -> str:
    """A text given on the command line; bytes that are not UTF-8 arrive as lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid UTF-8 text (check the terminal's encoding)") from None
    return text


def read_text(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        # utf-8-sig: files saved by some editors start with a byte-order mark that json rejects.
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def read_lines(path: str | Path) -> list[str]:
    # Split on "\n" only: str.splitlines() also splits on U+2028 and friends, which JSON strings
    # and FLORES sentences may contain verbatim, and would cut a record in two.
    lines = read_text(path).split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return [line.removesuffix("\r") for line in lines]


def jsonl_records(path: str | Path) -> Iterator[tuple[str, int, dict]]:
    """Yield (where, line number, record) for each non-blank line of a JSONL file."""
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        yield where, number, json_object(line, where)


def read_jsonl(path: str | Path) -> list[dict]:
    """Every record of a JSONL file (blank lines skipped); a bad line is an error naming it."""
    return [record for _, _, record in jsonl_records(path)]


def json_object(text: str, where: str, error: type[ValueError] = ValueError) -> dict:
    """Parse one JSON object; anything else raises `error` naming `where`."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{where}: invalid JSON ({err.msg})") from None
    if not isinstance(record, dict):
        raise error(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


def json_or_jsonl_records(path: str | Path) -> Iterator[tuple[str, int, dict]]:
    """Records of a JSON array file (official HotpotQA) or of a JSONL file (hub exports)."""
    text = read_text(path)
    if not text.lstrip().startswith("["):
        yield from jsonl_records(path)
        return
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}, line {err.lineno}: invalid JSON ({err.msg})") from None
    for index, record in enumerate(records):
        where = f"{path}, record {index}"
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
        yield where, index, record


def bad_field(where: str, name: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"{where}: field '{name}' must be {expected}, got {type(value).__name__}")


def as_object(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def string_field(record: dict, name: str, where: str, default: str | None = None) -> str:
    """A string field; required unless a default is given."""
    if name not in record:
        if default is None:
            raise ValueError(f"{where}: missing field '{name}'")
        return default
    value = record[name]
    if not isinstance(value, str):
        raise bad_field(where, name, "a string", value)
    return value


def id_field(record: dict, where: str, default: str, name: str = "id") -> str:
    value = record.get(name, default)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # ids are sometimes numbers
    if not isinstance(value, str):
        raise bad_field(where, name, "a string or an integer", value)
    return value


def list_field(record: dict, name: str, where: str) -> list:
    if name not in record:
        raise ValueError(f"{where}: missing field '{name}'")
    if not isinstance(record[name], list):
        raise bad_field(where, name, "a list", record[name])
    return record[name]
