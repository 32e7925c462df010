"""
recbole_hyena.data.convert
##########################

Turn an interaction dump into a RecBole atomic ``.inter`` file (``user_id:token``,
``item_id:token``, ``timestamp:float``), written to ``<out_dir>/<name>/<name>.inter``.

Inputs:

- ``lines``: SASRec/LRURec-style text, one ``user item`` pair per line (any whitespace between),
  each user's lines in time order; the timestamp written is the line's position in its user's
  history (0, 1, 2, ...), so time order is exact and ties cannot occur.
- ``csv`` / ``tsv``: delimited text with user, item and (optionally) timestamp columns, named in a
  header row or, with ``--no_header``, given as 0-based column numbers; the timestamp is kept as it
  is (it must be a number), and without a timestamp column the position is written as above.

Ids stay tokens (RecBole remaps them when it loads the file). Optional k-core filtering drops
users with fewer than ``user_core`` and items with fewer than ``item_core`` interactions, repeated
until both hold, as RecBole's ``user_inter_num_interval``/``item_inter_num_interval`` do.

The file is streamed: memory holds one counter per distinct user and per distinct item, never the
interactions, so a 100M-line dump converts in memory proportional to its number of users + items
(roughly 100-200 bytes per distinct token in CPython). The price is passes over the input: one to
validate and count, one per k-core round that still removes something, one to write. The output
is written to a temporary file beside the target and renamed at the end, so an error (a malformed
line is reported with its file name and line number) leaves no partial ``.inter`` behind.

Example::

    python -m recbole_hyena.data.convert ml-1m.txt --format lines --name ml-1m --out_dir dataset
    python -m recbole_hyena.data.convert log.csv --format csv --user_col visitor --item_col sku \\
        --time_col ts --k_core 5 --name shop --out_dir dataset
"""

from __future__ import annotations

import argparse
import csv
import gzip
import math
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from logging import INFO, basicConfig, getLogger

INTER_HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"
FORMATS = ("lines", "csv", "tsv")
# RecBole reads atomic files with pandas (tab separated, '"' quoting): tokens holding these would
# be split or unquoted on the way back in.
_FORBIDDEN_IN_TOKEN = ("\t", "\n", "\r", '"')

logger = getLogger(__name__)


class ConvertError(ValueError):
    """A malformed input: the message names the file and the line."""


@dataclass(frozen=True)
class Counts:
    users: int
    items: int
    interactions: int

    def __str__(self) -> str:
        return f"{self.users:,} users / {self.items:,} items / {self.interactions:,} interactions"


@dataclass(frozen=True)
class InputSpec:
    """How to read one dump. ``user_col``/``item_col``/``time_col`` are column names (with a
    header) or 0-based column numbers (``header=False``); they are ignored by ``lines``."""

    path: str
    format: str = "lines"
    sep: str | None = None
    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str | None = "timestamp"
    header: bool = True
    encoding: str = "utf-8"


def _open_text(path: str, encoding: str):
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding=encoding, newline="")
    return open(path, encoding=encoding, newline="")


def _bad_token(token: str) -> str | None:
    """Why ``token`` cannot be a RecBole token, or None."""
    if not token:
        return "is empty"
    for char in _FORBIDDEN_IN_TOKEN:
        if char in token:
            return f"contains {char!r}, which RecBole's atomic files cannot hold"
    return None


def _check_tokens(user: str, item: str, where: Callable[[], str]) -> None:
    for what, token in (("user", user), ("item", item)):
        reason = _bad_token(token)
        if reason is not None:
            raise ConvertError(f"{where()}: {what} {token!r} {reason}")


def _check_time(value: str, where: Callable[[], str]) -> str:
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        raise ConvertError(f"{where()}: timestamp {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ConvertError(f"{where()}: timestamp {value!r} is not finite")
    return value


def _read_lines(spec: InputSpec, file) -> Iterator[tuple[str, str, str | None]]:
    for line_number, line in enumerate(file, start=1):
        fields = line.split()
        if len(fields) != 2:
            if not fields:
                continue  # blank lines (a trailing newline, say) carry nothing
            raise ConvertError(
                f"{spec.path}, line {line_number}: expected 'user item', got {line.rstrip()!r}"
            )
        # Whitespace cannot be in a field here; only a quote can spoil a token.
        if '"' in line:
            _check_tokens(fields[0], fields[1], lambda n=line_number: f"{spec.path}, line {n}")
        yield fields[0], fields[1], None


def _column_index(header: list[str] | None, column: str, spec: InputSpec) -> int:
    if header is None:
        try:
            return int(column)
        except ValueError:
            raise ConvertError(
                f"{spec.path}: with --no_header columns are 0-based numbers, got {column!r}"
            ) from None
    if column not in header:
        raise ConvertError(f"{spec.path}, line 1: no column {column!r} in the header {header}")
    return header.index(column)


def _read_delimited(spec: InputSpec, file) -> Iterator[tuple[str, str, str | None]]:
    sep = spec.sep or ("\t" if spec.format == "tsv" else ",")
    reader = csv.reader(file, delimiter=sep)
    header = None
    if spec.header:
        header = next(reader, None)
        if header is None:
            raise ConvertError(f"{spec.path}: empty file, expected a header row")
        header = [name.strip() for name in header]
    user_index = _column_index(header, spec.user_col, spec)
    item_index = _column_index(header, spec.item_col, spec)
    time_index = None if spec.time_col is None else _column_index(header, spec.time_col, spec)
    needed = max(i for i in (user_index, item_index, time_index) if i is not None) + 1

    def where() -> str:
        # reader.line_num is the physical line, which stays right when quoted fields span lines.
        return f"{spec.path}, line {reader.line_num}"

    for row in reader:
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) < needed:
            raise ConvertError(f"{where()}: expected at least {needed} columns, got {len(row)}")
        user, item = row[user_index].strip(), row[item_index].strip()
        _check_tokens(user, item, where)
        time = None if time_index is None else _check_time(row[time_index], where)
        yield user, item, time


def read_interactions(spec: InputSpec) -> Iterator[tuple[str, str, str | None]]:
    """Stream ``(user, item, timestamp or None)`` from the dump; raises ``ConvertError`` with the
    file name and line number at the first malformed line."""
    if spec.format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {spec.format!r}")
    if not os.path.isfile(spec.path):
        raise FileNotFoundError(f"input file not found: {spec.path}")
    with _open_text(spec.path, spec.encoding) as file:
        reader = _read_lines if spec.format == "lines" else _read_delimited
        # Count lines as they go by so that a decoding error can still name its place.
        records = reader(spec, file)
        while True:
            try:
                record = next(records)
            except StopIteration:
                return
            except UnicodeDecodeError as error:
                raise ConvertError(
                    f"{spec.path}: not valid {spec.encoding} text ({error}); pass --encoding"
                ) from None
            yield record


def _count(
    spec: InputSpec, users: set[str] | None = None, items: set[str] | None = None
) -> tuple[Counter, Counter]:
    """Interactions per user and per item, over the lines whose user and item are kept."""
    user_counts: Counter = Counter()
    item_counts: Counter = Counter()
    for user, item, _ in read_interactions(spec):
        if (users is None or user in users) and (items is None or item in items):
            user_counts[user] += 1
            item_counts[item] += 1
    return user_counts, item_counts


def _counts(user_counts: Counter, item_counts: Counter) -> Counts:
    return Counts(len(user_counts), len(item_counts), sum(user_counts.values()))


def k_core(
    spec: InputSpec, user_core: int = 0, item_core: int = 0
) -> tuple[set[str] | None, set[str] | None, Counts, Counts]:
    """The users and items that survive iterated k-core filtering (``None``: keep all) and the
    counts before and after. Each round is one pass over the file with two counters."""
    user_counts, item_counts = _count(spec)
    before = _counts(user_counts, item_counts)
    if user_core <= 1 and item_core <= 1:
        return None, None, before, before
    rounds = 0
    while True:
        users = {user for user, n in user_counts.items() if n >= user_core}
        items = {item for item, n in item_counts.items() if n >= item_core}
        if len(users) == len(user_counts) and len(items) == len(item_counts):
            break  # every survivor still meets both thresholds: stable
        rounds += 1
        user_counts, item_counts = _count(spec, users, items)
    after = _counts(user_counts, item_counts)
    logger.info(
        f"k-core (users >= {user_core}, items >= {item_core}): stable after {rounds} "
        "filtering pass(es) over the file"
    )
    return set(user_counts), set(item_counts), before, after


def _target_file(out_dir: str, name: str) -> str:
    if not name or os.sep in name or name in (".", ".."):
        raise ValueError(f"dataset name must be a plain folder name, got {name!r}")
    return os.path.join(out_dir, name, f"{name}.inter")


def convert(
    spec: InputSpec,
    out_dir: str,
    name: str,
    user_core: int = 0,
    item_core: int = 0,
) -> tuple[str, Counts, Counts]:
    """Convert ``spec``'s dump to ``<out_dir>/<name>/<name>.inter``.

    Returns the file written and the counts before and after k-core filtering. Nothing is left on
    disk if the input is malformed.
    """
    target = _target_file(out_dir, name)
    # The first pass reads every line, so a malformed one fails before anything is written.
    users, items, before, after = k_core(spec, user_core, item_core)
    if after.interactions == 0:
        raise ConvertError(f"{spec.path}: no interactions left to write (counts before: {before})")

    folder = os.path.dirname(target)
    made_folder = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    handle, temp_file = tempfile.mkstemp(prefix=f".{name}.inter.", suffix=".tmp", dir=folder)
    try:
        positions: Counter = Counter()
        with open(handle, "w", encoding="utf-8", newline="\n") as out:
            out.write(INTER_HEADER)
            for user, item, time in read_interactions(spec):
                if (users is not None and user not in users) or (
                    items is not None and item not in items
                ):
                    continue
                if time is None:
                    time = str(positions[user])
                    positions[user] += 1
                out.write(f"{user}\t{item}\t{time}\n")
        os.replace(temp_file, target)
    except BaseException:
        if os.path.exists(temp_file):
            os.remove(temp_file)
        if made_folder and not os.listdir(folder):
            os.rmdir(folder)
        raise
    return target, before, after


def _separator(value: str | None) -> str | None:
    # A shell hands over "\t" as two characters; accept it and "tab" for a tab.
    if value in ("\\t", "tab"):
        return "\t"
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m recbole_hyena.data.convert",
        description="Convert an interaction dump into a RecBole atomic .inter file.",
    )
    parser.add_argument("input", help="the dump (.gz is read transparently)")
    parser.add_argument("--format", choices=FORMATS, default="lines", help="input format")
    parser.add_argument("--out_dir", default="dataset", help="folder that receives <name>/")
    parser.add_argument("--name", default=None, help="dataset name (default: the input's stem)")
    parser.add_argument("--sep", default=None, help="csv/tsv separator (default , or tab)")
    parser.add_argument("--user_col", default="user_id", help="user column (name or number)")
    parser.add_argument("--item_col", default="item_id", help="item column (name or number)")
    parser.add_argument(
        "--time_col",
        default="timestamp",
        help="timestamp column (name or number); 'none': write each user's positions",
    )
    parser.add_argument(
        "--no_header", action="store_true", help="csv/tsv without header: columns are numbers"
    )
    parser.add_argument("--encoding", default="utf-8", help="input text encoding")
    parser.add_argument("--k_core", type=int, default=0, help="k-core on users and items")
    parser.add_argument("--user_core", type=int, default=None, help="min interactions per user")
    parser.add_argument("--item_core", type=int, default=None, help="min interactions per item")
    args = parser.parse_args(argv)

    basicConfig(level=INFO, format="%(message)s")
    name = args.name
    if name is None:
        name = os.path.basename(args.input)
        for suffix in (".gz", ".txt", ".csv", ".tsv", ".dat"):
            name = name.removesuffix(suffix)
    spec = InputSpec(
        path=args.input,
        format=args.format,
        sep=_separator(args.sep),
        user_col=args.user_col,
        item_col=args.item_col,
        time_col=None if args.time_col.lower() == "none" else args.time_col,
        header=not args.no_header,
        encoding=args.encoding,
    )
    user_core = args.k_core if args.user_core is None else args.user_core
    item_core = args.k_core if args.item_core is None else args.item_core
    try:
        target, before, after = convert(spec, args.out_dir, name, user_core, item_core)
    except (ConvertError, FileNotFoundError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    logger.info(f"read:    {before}")
    if user_core > 1 or item_core > 1:
        logger.info(f"k-core:  {after}")
    logger.info(f"written: {target}")
    logger.info(f"train with: --dataset={name} --data_path={os.path.abspath(args.out_dir)}")


if __name__ == "__main__":
    main()
