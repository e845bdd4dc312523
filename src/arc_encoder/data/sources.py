"""Where training text comes from: files and data sets streamed lazily, sharded, mixed, resumable.

A source is a plain text file (paragraphs separated by blank lines are documents), a JSONL file
(one JSON object per line), a folder of those (recursively, in sorted order), or a Hugging Face
`datasets` data set (a folder written by `save_to_disk`, or `hf:NAME` for the hub). Every record
passes through a `parse(record, where)` function chosen by the pipeline (pretraining wants a
`text` field, fine-tuning a question/answer schema); a record it rejects with `BadRecord` either
stops the run with the file and line named, or is skipped and counted (`on_bad_line="skip"`).

Sharding: record i of a source (counted over its files in order, blank lines not counted) goes to
rank i % world_size, so ranks read disjoint documents without any coordination.

Every stream has `state_dict()` / `load_state_dict()`: file, byte offset, epoch and RNG states,
all plain JSON-friendly values, so a resumed run reads exactly what an uninterrupted run would.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ..records import json_object
from .resume import rng_state, set_rng_state

log = logging.getLogger(__name__)

# Files read from a folder; a file named directly is JSONL if it ends in .jsonl or .json, else text.
FOLDER_SUFFIXES = (".jsonl", ".txt")
JSONL_SUFFIXES = (".jsonl", ".json")
BAD_LINE_POLICIES = ("error", "skip")
HUB_PREFIX = "hf:"
# Files that `Dataset.save_to_disk` / `DatasetDict.save_to_disk` leave in the folder.
SAVED_DATASET_MARKERS = ("state.json", "dataset_dict.json")


def check_reading_options(on_bad_line: str, shuffle_buffer: int) -> None:
    if on_bad_line not in BAD_LINE_POLICIES:
        raise ValueError(f"on_bad_line must be one of {BAD_LINE_POLICIES}, got {on_bad_line!r}")
    if shuffle_buffer < 0:
        raise ValueError("shuffle_buffer must be >= 0")


class BadRecord(ValueError):
    """A record that a parse function rejects; the message starts with where it is."""


class Record(NamedTuple):
    value: Any  # what the parse function returned
    where: str  # "path, line N" or "name[split], row N"


# ----------------------------------------------------------------------------------- specs


@dataclass
class SourceSpec:
    path: str  # file, folder, saved `datasets` folder, or "hf:NAME" for the hub
    weight: float = 1.0  # relative share of records drawn from this source
    n_shots: int | None = None  # fine-tuning: shots for this source (None: the config's)
    split: str = "train"  # `datasets` only
    name: str | None = None  # `datasets` only: the configuration name of a hub data set

    def __post_init__(self):
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(f"a source needs a non-empty path, got {self.path!r}")
        if not isinstance(self.weight, (int, float)) or not self.weight > 0:
            raise ValueError(f"source {self.path}: weight must be a positive number, got {self.weight!r}")
        if self.n_shots is not None and (not isinstance(self.n_shots, int) or self.n_shots < 0):
            raise ValueError(f"source {self.path}: n_shots must be an integer >= 0, got {self.n_shots!r}")


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_source(value: Any) -> SourceSpec:
    """`"path"`, `"path:weight"`, `"path:weight:n_shots"`, `(path, weight)`, a dict or a SourceSpec."""
    if isinstance(value, SourceSpec):
        return value
    if isinstance(value, dict):
        known = {"path", "weight", "n_shots", "split", "name"}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown source field(s) {unknown}; known: {sorted(known)}")
        return SourceSpec(**value)
    if isinstance(value, (tuple, list)):
        if not 1 <= len(value) <= 3:
            raise ValueError(f"a source pair is (path, weight[, n_shots]), got {value!r}")
        return SourceSpec(*value)
    if not isinstance(value, str):
        raise TypeError(f"a source is a string, pair, dict or SourceSpec, got {type(value).__name__}")
    # Trailing ":number" parts are weight and shots; anything else belongs to the path
    # ("hf:org/name" keeps its colon).
    parts = value.split(":")
    numbers: list[float] = []
    while len(parts) > 1 and len(numbers) < 2 and _number(parts[-1]) is not None:
        numbers.insert(0, _number(parts.pop()))
    path = ":".join(parts)
    if len(numbers) == 2:
        if numbers[1] != int(numbers[1]):
            raise ValueError(f"source {value!r}: n_shots must be an integer")
        return SourceSpec(path, numbers[0], int(numbers[1]))
    return SourceSpec(path, numbers[0]) if numbers else SourceSpec(path)


def parse_sources(value: Any) -> list[SourceSpec]:
    """A list of sources, or one string with comma-separated sources."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (SourceSpec, dict)):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError("at least one data source is needed")
    return [parse_source(v) for v in value]


# ----------------------------------------------------------------------------------- one source


def seeded_rng(seed: int, rank: int, purpose: str) -> random.Random:
    # A string seed is hashed with SHA-512 by `random`: the same numbers on every machine and run.
    return random.Random(f"arc-encoder:{purpose}:{seed}:{rank}")


def list_files(path: Path) -> list[Path]:
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in FOLDER_SUFFIXES)
        if not files:
            raise ValueError(f"{path}: folder holds no {' or '.join(FOLDER_SUFFIXES)} files")
    else:
        raise FileNotFoundError(f"data source {path} does not exist")
    for f in files:
        if f.stat().st_size == 0:
            raise ValueError(f"{f}: empty file")
    return files


class FileStream:
    """Records of one file or folder, for one rank: loops over epochs, or stops after one pass."""

    def __init__(
        self,
        path: str | Path,
        parse: Callable[[dict, str], Any],
        rank: int = 0,
        world_size: int = 1,
        loop: bool = True,
        on_bad_line: str = "error",
    ):
        self.files = list_files(Path(path))
        self.name = str(path)
        self.parse, self.rank, self.world_size, self.loop = parse, rank, world_size, loop
        self.on_bad_line = on_bad_line
        self._handle = None
        self.state = dict(epoch=0, file=0, offset=0, line=0, index=0, kept=0, bad=0)

    def __iter__(self) -> Iterator[Record]:
        return self

    def __next__(self) -> Record:
        s = self.state
        while True:
            if s["file"] >= len(self.files):
                self._end_of_pass()  # raises StopIteration when not looping
                continue
            try:
                raw = self._read_raw()
            except BadRecord as err:  # bytes that are not UTF-8
                self._bad(err)
                continue
            if raw is None:  # end of this file
                self._close()
                s.update(file=s["file"] + 1, offset=0, line=0)
                continue
            text, line, is_json = raw
            index = s["index"]
            s["index"] += 1
            if index % self.world_size != self.rank:
                continue  # another rank's record: not even parsed
            where = f"{self.files[s['file']]}, line {line}"
            try:
                value = self.parse(self._decode(text, is_json, where), where)
            except BadRecord as err:
                self._bad(err)
                continue
            s["kept"] += 1
            return Record(value, where)

    def _bad(self, err: BadRecord) -> None:
        if self.on_bad_line == "error":
            raise err
        if self.state["bad"] == 0:
            log.warning("skipping bad records in %s; the first: %s", self.name, err)
        self.state["bad"] += 1

    def _end_of_pass(self) -> None:
        s = self.state
        if s["bad"]:
            log.warning("%s: skipped %d bad record(s) in epoch %d", self.name, s["bad"], s["epoch"])
        if s["kept"] == 0:
            raise ValueError(
                f"{self.name}: no usable record for rank {self.rank} of {self.world_size} "
                f"({s['index']} record(s) in the source, {s['bad']} bad)"
            )
        if not self.loop:
            raise StopIteration
        s.update(epoch=s["epoch"] + 1, file=0, offset=0, line=0, index=0, kept=0, bad=0)

    def _decode(self, text: str, is_json: bool, where: str) -> dict:
        if not is_json:
            return {"text": text}
        return json_object(text, where, error=BadRecord)

    def _open(self):
        if self._handle is None:
            self._handle = open(self.files[self.state["file"]], "rb")  # bytes: tell() is exact
            self._handle.seek(self.state["offset"])
        return self._handle

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _readline(self, handle) -> str | None:
        raw = handle.readline()
        if not raw:
            return None
        self.state["line"] += 1
        self.state["offset"] = handle.tell()
        try:
            return raw.decode("utf-8-sig" if self.state["line"] == 1 else "utf-8").rstrip("\r\n")
        except UnicodeDecodeError as err:
            where = f"{self.files[self.state['file']]}, line {self.state['line']}"
            raise BadRecord(f"{where}: not UTF-8 text ({err.reason})") from None

    def _read_raw(self) -> tuple[str, int, bool] | None:
        """The next record's text, its first line number, and whether it is JSON; None at EOF."""
        handle = self._open()
        is_json = self.files[self.state["file"]].suffix in JSONL_SUFFIXES
        lines: list[str] = []
        first = 0
        while True:
            line = self._readline(handle)
            if line is None or not line.strip():
                if lines:
                    return "\n".join(lines), first, is_json
                if line is None:
                    return None
                continue  # blank lines between records
            if is_json:
                return line, self.state["line"], True
            if not lines:
                first = self.state["line"]
            lines.append(line)

    @property
    def epoch(self) -> int:
        return self.state["epoch"]

    def _current_file(self) -> str | None:
        return str(self.files[self.state["file"]]) if self.state["file"] < len(self.files) else None

    def state_dict(self) -> dict:
        return dict(self.state, path=self._current_file())

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        path = state.pop("path", None)
        if state["file"] > len(self.files) or (
            state["file"] < len(self.files) and str(self.files[state["file"]]) != path
        ):
            raise ValueError(
                f"{self.name}: the saved position is in {path}, which is not file "
                f"{state['file']} of this source any more; its files changed"
            )
        self._close()
        self.state = state


class DatasetStream:
    """Rows of a Hugging Face `datasets` data set (saved folder or hub name), for one rank."""

    def __init__(
        self,
        spec: SourceSpec,
        parse: Callable[[dict, str], Any],
        rank: int = 0,
        world_size: int = 1,
        loop: bool = True,
        on_bad_line: str = "error",
    ):
        try:
            import datasets
        except ImportError:
            raise ImportError(
                f"reading {spec.path} needs the `datasets` package: pip install 'arc-encoder[data]'"
            ) from None
        if spec.path.startswith(HUB_PREFIX):
            hub_name = spec.path[len(HUB_PREFIX) :]
            data = datasets.load_dataset(hub_name, spec.name, split=spec.split)
        else:
            data = datasets.load_from_disk(spec.path)
            if isinstance(data, datasets.DatasetDict):
                if spec.split not in data:
                    raise ValueError(f"{spec.path}: no split {spec.split!r}; splits: {sorted(data)}")
                data = data[spec.split]
        self.data, self.name = data, f"{spec.path}[{spec.split}]"
        self.parse, self.rank, self.world_size, self.loop = parse, rank, world_size, loop
        self.on_bad_line = on_bad_line
        if len(data) == 0:
            raise ValueError(f"{self.name}: empty data set")
        self.state = dict(epoch=0, row=rank, kept=0, bad=0)

    def __iter__(self) -> Iterator[Record]:
        return self

    def __next__(self) -> Record:
        s = self.state
        while True:
            if s["row"] >= len(self.data):
                if s["kept"] == 0:
                    raise ValueError(f"{self.name}: no usable row for rank {self.rank} of {self.world_size}")
                if s["bad"]:
                    log.warning("%s: skipped %d bad row(s) in epoch %d", self.name, s["bad"], s["epoch"])
                if not self.loop:
                    raise StopIteration
                s.update(epoch=s["epoch"] + 1, row=self.rank, kept=0, bad=0)
            row = s["row"]
            s["row"] += self.world_size  # sharding: rank r reads rows r, r + W, r + 2W, ...
            where = f"{self.name}, row {row}"
            try:
                value = self.parse(dict(self.data[row]), where)
            except BadRecord as err:
                if self.on_bad_line == "error":
                    raise
                if s["bad"] == 0:
                    log.warning("skipping bad rows in %s; the first: %s", self.name, err)
                s["bad"] += 1
                continue
            s["kept"] += 1
            return Record(value, where)

    @property
    def epoch(self) -> int:
        return self.state["epoch"]

    def state_dict(self) -> dict:
        return dict(self.state, rows=len(self.data))

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        if state.pop("rows", len(self.data)) != len(self.data):
            raise ValueError(f"{self.name}: the data set changed size since the state was saved")
        self.state = state


def is_dataset(spec: SourceSpec) -> bool:
    path = Path(spec.path)
    return spec.path.startswith(HUB_PREFIX) or (
        path.is_dir() and any((path / m).is_file() for m in SAVED_DATASET_MARKERS)
    )


class ShuffleBuffer:
    """Streaming shuffle: keep `size` records, hand out a random one and refill its place."""

    def __init__(self, inner, size: int, rng: random.Random):
        self.inner, self.size, self.rng = inner, size, rng
        self.buffer: list[Record] = []
        self.exhausted = False

    def __iter__(self):
        return self

    def __next__(self) -> Record:
        while not self.exhausted and len(self.buffer) < self.size:
            try:
                self.buffer.append(next(self.inner))
            except StopIteration:
                self.exhausted = True
        if not self.buffer:
            raise StopIteration
        i = self.rng.randrange(len(self.buffer))
        self.buffer[i], self.buffer[-1] = self.buffer[-1], self.buffer[i]
        return self.buffer.pop()

    @property
    def epoch(self) -> int:
        return self.inner.epoch

    def state_dict(self) -> dict:
        return dict(
            inner=self.inner.state_dict(),
            rng=rng_state(self.rng),
            buffer=[[r.value, r.where] for r in self.buffer],
            exhausted=self.exhausted,
        )

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state["inner"])
        set_rng_state(self.rng, state["rng"])
        self.buffer = [Record(value, where) for value, where in state["buffer"]]
        self.exhausted = state["exhausted"]


def open_source(
    spec: SourceSpec,
    parse: Callable[[dict, str], Any],
    rank: int = 0,
    world_size: int = 1,
    loop: bool = True,
    on_bad_line: str = "error",
    shuffle_buffer: int = 0,
    seed: int = 0,
):
    """One source's record stream; shuffled through a buffer when `shuffle_buffer` > 0."""
    if on_bad_line not in BAD_LINE_POLICIES:
        raise ValueError(f"on_bad_line must be one of {BAD_LINE_POLICIES}, got {on_bad_line!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    kind = DatasetStream if is_dataset(spec) else FileStream
    stream = kind(spec if kind is DatasetStream else spec.path, parse, rank, world_size, loop, on_bad_line)
    if shuffle_buffer > 0:
        stream = ShuffleBuffer(stream, shuffle_buffer, seeded_rng(seed, rank, f"shuffle:{spec.path}"))
    return stream


# ----------------------------------------------------------------------------------- mixing


class Mixture:
    """Draw each record from a source chosen by weight. Yields (source index, Record).

    Finite streams (evaluation) drop out when exhausted and the remaining weights are renormalised;
    the mixture stops when all are exhausted.
    """

    def __init__(self, streams: list, weights: list[float], rng: random.Random):
        if len(streams) != len(weights) or not streams:
            raise ValueError("a mixture needs one weight per stream, and at least one stream")
        self.streams, self.weights, self.rng = streams, list(weights), rng
        self.active = [True] * len(streams)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[int, Record]:
        while any(self.active):
            live = [i for i, a in enumerate(self.active) if a]
            i = live[0] if len(live) == 1 else self.rng.choices(live, [self.weights[j] for j in live])[0]
            try:
                return i, next(self.streams[i])
            except StopIteration:
                self.active[i] = False
        raise StopIteration

    @property
    def epochs(self) -> list[int]:
        """Completed passes over each source."""
        return [s.epoch for s in self.streams]

    def state_dict(self) -> dict:
        return dict(rng=rng_state(self.rng), active=list(self.active), streams=[s.state_dict() for s in self.streams])

    def load_state_dict(self, state: dict) -> None:
        if len(state["streams"]) != len(self.streams):
            raise ValueError(f"saved state has {len(state['streams'])} sources, this mixture {len(self.streams)}")
        set_rng_state(self.rng, state["rng"])
        self.active = list(state["active"])
        for stream, s in zip(self.streams, state["streams"]):
            stream.load_state_dict(s)


def open_mixture(
    specs: list[SourceSpec],
    parse: Callable[[dict, str], Any],
    rank: int,
    world_size: int,
    loop: bool,
    on_bad_line: str,
    shuffle_buffer: int,
    seed: int,
) -> Mixture:
    streams = [open_source(s, parse, rank, world_size, loop, on_bad_line, shuffle_buffer, seed) for s in specs]
    return Mixture(streams, [s.weight for s in specs], seeded_rng(seed, rank, "mixture"))


def text_field(name: str = "text") -> Callable[[dict, str], str]:
    """Parse function for pretraining: the record's non-empty string field `name`."""

    def parse(record: dict, where: str) -> str:
        if name not in record:
            raise BadRecord(f"{where}: missing field '{name}'")
        value = record[name]
        if not isinstance(value, str):
            raise BadRecord(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
        if not value.strip():
            raise BadRecord(f"{where}: field '{name}' is empty")
        return value

    return parse
