"""
recbole_hyena.recommend
#######################

Top-k item recommendations from a model bundle (``recbole_hyena.checkpoint``), for

- users of the training data, by token: the bundle stores each user's full time-ordered history
  (training, validation and test items), so no data set is needed at serving time;
- any sequence of item tokens, oldest first (a new user, or a history that has moved on),
  optionally with the events' times.

Models that read event times (HSTU's time bias, HyTRec's time terms) get them as in training:
from the bundle for its users (bundles written since times were stored), from ``times`` for
sequences. Without times such a model sees positions only, which can rank differently from its
own evaluation; a warning says so.

The model sees the last ``MAX_ITEM_LIST_LENGTH`` items of a history, padded as in training, and
ranks the whole catalogue with its own ``full_sort_predict``. Items of the history (all of it, not
only the last ``MAX_ITEM_LIST_LENGTH``) are excluded by default, as RecBole's full-ranking
evaluation excludes a user's past items; ``exclude_history=False`` (``--keep_history``) keeps them.
Unknown item tokens are skipped and reported; a history with no known item, or an unknown user,
gets an empty list and a note instead of an error.

Python::

    from recbole_hyena.recommend import Recommender

    recommender = Recommender.from_file("saved/HyenaRec-Mar-01-2026_10-00-00.bundle.pt")
    recommender.recommend_users(["1", "42"], k=10)
    recommender.recommend_sequences([["2858", "260", "1196"]], k=10)

Command line (CSV to stdout unless ``--output`` names a ``.csv`` or ``.jsonl`` file)::

    python -m recbole_hyena.recommend BUNDLE --users 1 42 -k 10
    python -m recbole_hyena.recommend BUNDLE --all_users --output top10.jsonl
    python -m recbole_hyena.recommend BUNDLE --sequences new_users.jsonl --output top10.csv

A sequences file is JSONL, one ``{"id": ..., "items": [token, ...]}`` object (or a bare JSON list,
whose id is its line number) per line, or CSV with an ``id`` and an ``items`` column, the items
separated by spaces. An optional ``times`` entry (a list, or a CSV column of space-separated
numbers, in the units of the training data's time field) gives each item's time; either every
sequence of a file has one or none does.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from logging import INFO, basicConfig, getLogger

import torch
from recbole.data.interaction import Interaction

from recbole_hyena.checkpoint import BundleError, ModelBundle, load_bundle

logger = getLogger(__name__)

# How many unknown tokens or users a warning lists before it only counts them.
_SHOW_AT_MOST = 10


@dataclass
class Recommendation:
    """Top-k items of one history, best first. ``key`` is the user token or the sequence's id."""

    key: str
    items: list[str]
    scores: list[float]
    unknown_items: list[str] = field(default_factory=list)
    note: str | None = None

    def to_dict(self, key_name: str = "id") -> dict:
        record = {key_name: self.key, "items": self.items, "scores": self.scores}
        if self.unknown_items:
            record["unknown_items"] = self.unknown_items
        if self.note:
            record["note"] = self.note
        return record


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def reads_time_list(model: torch.nn.Module) -> bool:
    """Whether ``model`` scores a history differently given its event times (HSTU's time bias,
    HyTRec's time terms); such models fall back to positions when no times come with it."""
    return getattr(model, "TIME_SEQ", None) is not None and bool(getattr(model, "time_bias", True))


class Recommender:
    """A bundle's model ready to rank: ``recommend_users`` and ``recommend_sequences``.

    ``device`` defaults to the GPU when there is one; ``batch_size`` histories go through the
    model at a time. ``trim_padding`` pads each batch only to its longest history instead of
    ``MAX_ITEM_LIST_LENGTH``; ``None`` turns it on when a check at load time finds the model's
    scores unchanged by it (within float error), ``False`` always pads to the full length, as
    RecBole's evaluation does.
    """

    def __init__(
        self,
        bundle: ModelBundle,
        device: torch.device | str | None = None,
        batch_size: int = 256,
        trim_padding: bool | None = None,
    ):
        self.bundle = bundle
        self.device = torch.device(device) if device is not None else default_device()
        self.batch_size = batch_size
        self.model = bundle.build_model(self.device)
        self.item_seq_field = bundle.fields["ITEM_SEQ"]
        self.item_seq_len_field = bundle.fields["ITEM_SEQ_LEN"]
        self.max_seq_length = bundle.max_seq_length
        self.trim_padding = self._padding_invariant() if trim_padding is None else trim_padding
        # The interaction field a time-aware model reads; None for models that ignore times.
        self.time_seq_field = self.model.TIME_SEQ if reads_time_list(self.model) else None
        if self.time_seq_field and bundle.history is not None and not bundle.has_times:
            self._warn_positions_only("this bundle stores no event times")

    @classmethod
    def from_file(
        cls,
        path: str,
        device: torch.device | str | None = None,
        batch_size: int = 256,
        trim_padding: bool | None = None,
    ) -> Recommender:
        return cls(load_bundle(path), device, batch_size, trim_padding)

    @property
    def users(self) -> list[str]:
        """The tokens of the users whose histories the bundle stores."""
        return list(self.bundle.user_ids)

    def recommend_users(
        self, users: Iterable[str], k: int = 10, exclude_history: bool = True
    ) -> list[Recommendation]:
        """Top-k for users of the training data, after their whole stored history."""
        if self.bundle.history is None:
            raise BundleError(
                "this bundle stores no user histories; pass the users' item sequences to "
                "recommend_sequences instead"
            )
        users = [str(user) for user in users]
        user_ids = self.bundle.user_ids
        unknown = [user for user in users if user not in user_ids]
        if unknown:
            logger.warning(
                f"{len(unknown)} unknown user token(s) skipped: {unknown[:_SHOW_AT_MOST]}"
            )
        known = torch.tensor(
            [user_ids[user] for user in users if user in user_ids], dtype=torch.long
        )
        offsets = self.bundle.history["offsets"]
        index, flat_offsets = _row_positions(offsets[known], offsets[known + 1])
        flat = self.bundle.history["items"][index].long()
        flat_times = None
        if self.time_seq_field and self.bundle.has_times:
            flat_times = self.bundle.history["times"][index]
        ranked = iter(self._rank(flat, flat_offsets, k, exclude_history, flat_times))
        return [
            Recommendation(user, *next(ranked))
            if user in user_ids
            else Recommendation(user, [], [], note="unknown user")
            for user in users
        ]

    def recommend_sequences(
        self,
        sequences: Iterable[Sequence[str]] | Mapping[str, Sequence[str]],
        k: int = 10,
        exclude_history: bool = True,
        times: Iterable[Sequence[float]] | Mapping[str, Sequence[float]] | None = None,
    ) -> list[Recommendation]:
        """Top-k after each sequence of item tokens (oldest first). A mapping's keys, else the
        sequences' positions (0, 1, ...), become the ``key`` of each recommendation.

        ``times`` (optional) gives each item's time, in the training data's units: a list
        parallel to ``sequences``, or a mapping with the same keys. Only models that read event
        times use them."""
        if isinstance(sequences, Mapping):
            keyed = [(str(key), sequence) for key, sequence in sequences.items()]
        else:
            keyed = [(str(position), sequence) for position, sequence in enumerate(sequences)]
        times_per_row = _times_per_row(keyed, times)
        if times_per_row is None and self.time_seq_field:
            self._warn_positions_only("no times came with the sequences")
        item_ids = self.bundle.item_ids
        rows, row_times, unknown_per_row = [], [], []
        for row_number, (_, sequence) in enumerate(keyed):
            if isinstance(sequence, str):
                raise TypeError(
                    f"a sequence must be a list of item tokens, got the string {sequence!r}"
                )
            tokens = [str(token) for token in sequence]
            known = [token in item_ids for token in tokens]
            rows.append([item_ids[token] for token, ok in zip(tokens, known) if ok])
            unknown_per_row.append([token for token, ok in zip(tokens, known) if not ok])
            if times_per_row is not None:
                row_times.append([t for t, ok in zip(times_per_row[row_number], known) if ok])
        _report_unknown_items(keyed, unknown_per_row)

        scored = [row for row in rows if row]
        lengths = torch.tensor([len(row) for row in scored], dtype=torch.long)
        flat = torch.tensor([item for row in scored for item in row], dtype=torch.long)
        offsets = torch.zeros(len(scored) + 1, dtype=torch.long)
        torch.cumsum(lengths, dim=0, out=offsets[1:])
        flat_times = None
        if times_per_row is not None and self.time_seq_field:
            flat_times = torch.tensor(
                [t for row, ts in zip(rows, row_times) if row for t in ts], dtype=torch.float64
            )
        ranked = iter(self._rank(flat, offsets, k, exclude_history, flat_times))
        results = []
        for (key, _), row, unknown in zip(keyed, rows, unknown_per_row):
            if row:
                results.append(Recommendation(key, *next(ranked), unknown_items=unknown))
            else:
                results.append(
                    Recommendation(key, [], [], unknown_items=unknown, note="no known item")
                )
        return results

    def _warn_positions_only(self, reason: str) -> None:
        logger.warning(
            f"{self.bundle.model} reads event times ([{self.time_seq_field}]) but {reason}: its "
            "recommendations here see positions only and can differ from its own evaluation"
        )

    @torch.no_grad()
    def _scores(
        self, item_seq: torch.Tensor, seq_len: torch.Tensor, time_seq: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``full_sort_predict`` of right-padded sequences (and their times, when given), in
        float32: ``[B, n_items]``."""
        fields = {self.item_seq_field: item_seq, self.item_seq_len_field: seq_len}
        if time_seq is not None:
            fields[self.time_seq_field] = time_seq
        return self.model.full_sort_predict(Interaction(fields).to(self.device)).float()

    def _padding_invariant(self) -> bool:
        """Whether the model scores a history padded to less than ``MAX_ITEM_LIST_LENGTH`` as it
        scores it padded to the full length, checked on random histories. True of causal models
        whose kernels or positions do not depend on the padded length (HyenaRec builds its
        kernels on the fixed ``MAX_ITEM_LIST_LENGTH`` grid, SASRec counts positions from the
        start); then ``_rank`` pads each batch only to its longest history."""
        full_length = self.max_seq_length
        if full_length < 2 or self.bundle.n_items < 2:
            return False
        generator = torch.Generator().manual_seed(0)
        seq_len = torch.tensor([1, max(1, full_length // 4), max(1, full_length // 2)])
        width = int(seq_len.max())
        items = torch.randint(1, self.bundle.n_items, (3, full_length), generator=generator)
        items = items.masked_fill(torch.arange(full_length) >= seq_len.unsqueeze(1), 0)
        padded = self._scores(items, seq_len)
        trimmed = self._scores(items[:, :width].contiguous(), seq_len)
        tolerance = 1e-4 * max(1.0, float(padded.abs().max()))
        return bool(torch.allclose(padded, trimmed, rtol=1e-4, atol=tolerance))

    def _rank(
        self,
        flat: torch.Tensor,
        offsets: torch.Tensor,
        k: int,
        exclude_history: bool,
        flat_times: torch.Tensor | None = None,
    ) -> list[tuple[list[str], list[float]]]:
        """Top-k (tokens, scores) of each history ``flat[offsets[i]:offsets[i + 1]]``, whose
        events happened at ``flat_times`` (same layout) when given."""
        n_rows = len(offsets) - 1
        k = max(0, min(k, self.bundle.n_items - 1))
        if n_rows == 0 or k == 0 or len(flat) == 0:
            return [([], [])] * n_rows
        flat = flat.long()
        if flat_times is not None:
            flat_times = flat_times.double()
        history_length = offsets[1:] - offsets[:-1]
        # An empty history gets no items (its row is blanked below), but the model needs one.
        seq_len = history_length.clamp(min=1, max=self.max_seq_length)
        if self.trim_padding:
            # Batches of similar lengths, each padded to its longest: ML-1M's histories (at
            # L=200) average 109 items, so this nearly halves the work.
            order = torch.argsort(seq_len, stable=True)
        else:
            order = torch.arange(n_rows)
        item_tokens = self.bundle.item_tokens
        results: list[tuple[list[str], list[float]]] = [([], [])] * n_rows
        for start in range(0, n_rows, self.batch_size):
            rows = order[start : start + self.batch_size]
            batch_len = seq_len[rows]  # [B]
            width = int(batch_len.max()) if self.trim_padding else self.max_seq_length
            positions = torch.arange(width)
            # Right-padded last items, as RecBole's sequential data feeds them.
            end = offsets[rows + 1]
            index = (end - batch_len).unsqueeze(1) + positions  # [B, width]
            valid = positions < batch_len.unsqueeze(1)
            index = index.clamp(min=0, max=len(flat) - 1)
            item_seq = torch.where(valid, flat[index], 0)
            time_seq = None
            if flat_times is not None:  # padded with 0, as RecBole pads its time lists
                time_seq = torch.where(valid, flat_times[index], 0.0)
            scores = self._scores(item_seq, batch_len, time_seq)  # [B, n_items]
            scores[:, 0] = -torch.inf  # the padding id is no item
            scores[(history_length[rows] == 0).to(self.device)] = -torch.inf
            if exclude_history:
                seen_index, seen_offsets = _row_positions(offsets[rows], end)
                seen = flat[seen_index]
                seen_rows = torch.repeat_interleave(
                    torch.arange(len(rows)), seen_offsets[1:] - seen_offsets[:-1]
                )
                scores[seen_rows.to(self.device), seen.to(self.device)] = -torch.inf
            top_scores, top_ids = torch.topk(scores, k, dim=1)
            for row, row_scores, row_ids in zip(
                rows.tolist(), top_scores.cpu().tolist(), top_ids.cpu().tolist()
            ):
                # Fewer than k items may be left once the history is excluded.
                kept = [(i, s) for i, s in zip(row_ids, row_scores) if s != -float("inf")]
                results[row] = ([item_tokens[i] for i, _ in kept], [s for _, s in kept])
        return results


def _row_positions(begin: torch.Tensor, end: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions ``begin[i]:end[i]`` of every row laid out one after another (index a flat
    tensor with them to gather the rows), and the rows' offsets in that layout."""
    lengths = (end - begin).long()
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
    torch.cumsum(lengths, dim=0, out=offsets[1:])
    within = torch.arange(int(offsets[-1])) - torch.repeat_interleave(offsets[:-1], lengths)
    return torch.repeat_interleave(begin.long(), lengths) + within, offsets


def _times_per_row(
    keyed: list[tuple[str, Sequence[str]]],
    times: Iterable[Sequence[float]] | Mapping[str, Sequence[float]] | None,
) -> list[list[float]] | None:
    """``times`` aligned with ``keyed`` (one float list per sequence, as long as it), or None."""
    if times is None:
        return None
    if isinstance(times, Mapping):
        by_key = {str(key): value for key, value in times.items()}
        missing = [key for key, _ in keyed if key not in by_key]
        if missing:
            raise ValueError(f"times are missing for sequence(s) {missing[:_SHOW_AT_MOST]}")
        rows = [by_key[key] for key, _ in keyed]
    else:
        rows = list(times)
        if len(rows) != len(keyed):
            raise ValueError(f"{len(rows)} time lists for {len(keyed)} sequences")
    aligned = []
    for (key, sequence), row in zip(keyed, rows):
        values = _as_times(row, f"sequence {key}")
        if len(values) != len(sequence):
            raise ValueError(f"sequence {key}: {len(values)} times for {len(sequence)} items")
        aligned.append(values)
    return aligned


def _as_times(values, where: str) -> list[float]:
    """``values`` as finite floats; a ``ValueError`` that starts with ``where`` otherwise."""
    try:
        times = [float(value) for value in values]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: times must be numbers, got {values!r}") from None
    if not all(math.isfinite(time) for time in times):
        raise ValueError(f"{where}: times must be finite numbers")
    return times


def _report_unknown_items(keyed: list, unknown_per_row: list[list[str]]) -> None:
    rows = [(key, unknown) for (key, _), unknown in zip(keyed, unknown_per_row) if unknown]
    if not rows:
        return
    n_tokens = sum(len(unknown) for _, unknown in rows)
    examples = ", ".join(f"{key}: {unknown[:3]}" for key, unknown in rows[:_SHOW_AT_MOST])
    logger.warning(
        f"{n_tokens} unknown item token(s) in {len(rows)} sequence(s) skipped ({examples})"
    )


def read_sequences(path: str) -> tuple[dict[str, list[str]], dict[str, list[float]] | None]:
    """Sequences from a JSONL file (``{"id", "items"}`` objects, optionally with ``times``, or
    bare lists) or a CSV file (``id`` and ``items`` columns, optionally ``times``, values
    separated by spaces), keyed by id; and their times, or None when the file has none."""
    sequences: dict[str, list[str]] = {}
    times: dict[str, list[float]] = {}
    if path.endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            if reader.fieldnames is None or not {"id", "items"} <= set(reader.fieldnames):
                raise ValueError(f"{path}: a CSV of sequences needs 'id' and 'items' columns")
            has_times = "times" in reader.fieldnames
            for line_number, row in enumerate(reader, start=2):
                sequences[row["id"]] = (row["items"] or "").split()
                if has_times:
                    where = f"{path}, line {line_number}"
                    times[row["id"]] = _as_times((row["times"] or "").split(), where)
        return sequences, (times if has_times else None)
    has_times: bool | None = None  # set by the first record
    with open(path, encoding="utf-8") as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {line_number}: not JSON ({error})") from None
            if isinstance(record, list):
                key, items = str(line_number), record
            elif isinstance(record, dict) and isinstance(record.get("items"), list):
                key, items = str(record.get("id", line_number)), record["items"]
            else:
                raise ValueError(
                    f'{path}, line {line_number}: expected {{"id": ..., "items": [...]}} or a list'
                )
            sequences[key] = [str(item) for item in items]
            record_times = record.get("times") if isinstance(record, dict) else None
            if record_times is not None:
                if not isinstance(record_times, list):
                    raise ValueError(f"{path}, line {line_number}: 'times' must be a list")
                times[key] = _as_times(record_times, f"{path}, line {line_number}")
            if has_times is None:
                has_times = record_times is not None
            elif has_times != (record_times is not None):
                raise ValueError(
                    f"{path}, line {line_number}: either every sequence has 'times' or none does"
                )
    return sequences, (times if has_times else None)


def write_recommendations(
    recommendations: list[Recommendation], file, output_format: str, key_name: str
) -> None:
    """CSV (``<key_name>,rank,item,score``, one row per item) or JSONL (one object per history)."""
    if output_format == "jsonl":
        for recommendation in recommendations:
            file.write(json.dumps(recommendation.to_dict(key_name)) + "\n")
        return
    writer = csv.writer(file, lineterminator="\n")
    writer.writerow([key_name, "rank", "item", "score"])
    for recommendation in recommendations:
        for rank, (item, score) in enumerate(
            zip(recommendation.items, recommendation.scores), start=1
        ):
            writer.writerow([recommendation.key, rank, item, f"{score:.6g}"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m recbole_hyena.recommend",
        description="Top-k recommendations from a recbole_hyena model bundle.",
    )
    parser.add_argument("bundle", help="a *.bundle.pt file written by a training run")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--users", nargs="+", help="user tokens of the training data")
    who.add_argument("--users_file", help="a file with one user token per line")
    who.add_argument("--all_users", action="store_true", help="every user in the bundle")
    who.add_argument("--sequences", help="item-token sequences: .jsonl or .csv (see --help)")
    parser.add_argument("-k", "--topk", type=int, default=10, help="items per history")
    parser.add_argument(
        "--keep_history", action="store_true", help="do not exclude the history's items"
    )
    parser.add_argument("--output", default=None, help=".csv or .jsonl file (default: stdout)")
    parser.add_argument("--output_format", choices=("csv", "jsonl"), default=None)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: GPU if any)")
    parser.add_argument(
        "--batch_size",
        type=int,
        default=256,
        help="histories per forward pass (lower it for a long MAX_ITEM_LIST_LENGTH on little memory)",
    )
    parser.add_argument(
        "--full_padding",
        action="store_true",
        help="pad every history to MAX_ITEM_LIST_LENGTH (default: to each batch's longest when "
        "the model is checked to score the same either way)",
    )
    args = parser.parse_args(argv)

    basicConfig(level=INFO, format="%(message)s", stream=sys.stderr)
    try:
        recommender = Recommender.from_file(
            args.bundle, args.device, args.batch_size, False if args.full_padding else None
        )
    except (BundleError, FileNotFoundError) as error:
        parser.exit(2, f"error: {error}\n")
    exclude_history = not args.keep_history
    start = time.perf_counter()
    try:
        if args.sequences:
            key_name = "id"
            sequences, times = read_sequences(args.sequences)
            recommendations = recommender.recommend_sequences(
                sequences, args.topk, exclude_history, times
            )
        else:
            key_name = "user"
            if args.all_users:
                users = recommender.users
            elif args.users_file:
                with open(args.users_file, encoding="utf-8") as file:
                    users = [line.strip() for line in file if line.strip()]
            else:
                users = args.users
            recommendations = recommender.recommend_users(users, args.topk, exclude_history)
    except (BundleError, ValueError, FileNotFoundError) as error:
        parser.exit(2, f"error: {error}\n")
    logger.info(
        f"ranked {len(recommendations)} histories on {recommender.device} in "
        f"{time.perf_counter() - start:.2f} s"
    )

    output_format = args.output_format
    if output_format is None:
        output_format = "jsonl" if args.output and args.output.endswith(".jsonl") else "csv"
    if args.output is None:
        write_recommendations(recommendations, sys.stdout, output_format, key_name)
        return
    temp_file = f"{args.output}.tmp-{os.getpid()}"
    try:
        with open(temp_file, "w", encoding="utf-8", newline="") as file:
            write_recommendations(recommendations, file, output_format, key_name)
        os.replace(temp_file, args.output)
    finally:
        if os.path.exists(temp_file):
            os.remove(temp_file)
    logger.info(f"written: {args.output}")


if __name__ == "__main__":
    main()
