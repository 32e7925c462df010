"""Table 3 of the HyenaRec paper in one command: train models under the paper's protocol, test
them, and put the published row beside each.

For every model in ``--models`` (in order) on ``--dataset``:

- protocol: leave-one-out in time order, full ranking, NDCG/Recall @10/@20, early stopping on
  validation Recall@10 with patience 10 (``properties/overall.yaml``); ``history_mask: True``;
  ``train_mode: autoregressive`` (CE at every position) for the models that support it
  (``AllPositionMixin``), ``prefix`` for the others (RecBole's NARM, BERT4Rec, ...); validation
  every ``--eval_every_steps`` optimiser steps, rounded to whole epochs (the paper validates
  every 500 steps on ML-1M, after LRURec);
- measured: test NDCG@10/@20 and Recall@10/@20, the same for the users in the top 10% by
  history length when the evaluation reports them (result keys ``long_<metric>``), epochs
  trained, the best epoch, training time (the training epochs alone) and time per epoch,
  validation time, parameters;
- written after each model, under ``--out``: ``paper_table_<dataset>.csv`` (one row per model,
  with the published figures, machine, versions, seed and settings), ``paper_table_<dataset>.md``
  and ``paper_table_<dataset>.png`` (NDCG@10 and Recall@10, measured against published);
  ``paper_table_<dataset>_validations.{csv,png}``: every validation of every model (epoch, each
  metric, the long-history users' too), so that models stopped at different epochs (a time
  limit, early stopping) can still be compared at equal training.

Resumable: a model whose row is already in the CSV is skipped; a model whose training was cut
off continues from the state saved after its last validation (``--state_dir``: the last
checkpoint, the best one and the timings so far). A resumed run is not bit-identical to an
uninterrupted one (the random streams restart), but it follows the same protocol.

Any other ``--key=value`` is a RecBole config override for every model (RecBole's Config also
reads it from the command line, where it has the highest priority).

Examples::

    # the paper's ML-1M (L = 200); hours per model on a CPU
    python benchmarks/paper_table.py --dataset ml-1m --data_path ../shared/datasets \\
        --models HyenaRec SASRec GRU4Rec NARM BERT4Rec LRURec HSTU EulerFormer Mamba4Rec

    # a smoke run
    python benchmarks/paper_table.py --dataset ml-100k --models HyenaRec LRURec --epochs 1 \\
        --out /tmp/table --state_dir /tmp/table/state --hidden_size=16
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import math
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from logging import getLogger
from pathlib import Path

import torch
from recbole.utils import init_seed

from recbole_hyena.config import Config
from recbole_hyena.data import create_dataset, data_preparation
from recbole_hyena.model.abstract_recommender import AllPositionMixin
from recbole_hyena.quick_start import restart_logger
from recbole_hyena.utils import get_model, get_trainer

REPO_ROOT = Path(__file__).resolve().parent.parent

METRICS = ["ndcg@10", "ndcg@20", "recall@10", "recall@20"]
DEFAULT_MODELS = [
    "HyenaRec",
    "SASRec",
    "GRU4Rec",
    "NARM",
    "BERT4Rec",
    "LRURec",
    "HSTU",
    "EulerFormer",
    "Mamba4Rec",
]

# The paper's published figures (HyenaRec, 2026): Table 3 (NDCG@10, NDCG@20, Recall@10,
# Recall@20), Table 4 (ablations, @10 only) and Appendix C (Recall@10 only); None: not reported.
_TABLE3 = {
    "GRU4Rec": {
        "ml-1m": (0.15943, 0.18735, 0.28317, 0.39378),
        "steam": (0.06512, 0.08050, 0.12204, 0.18319),
        "video": (0.05081, 0.06200, 0.09512, 0.13959),
        "xlong": (0.20950, 0.23729, 0.35638, 0.46633),
    },
    "NARM": {
        "ml-1m": (0.15310, 0.17774, 0.27290, 0.37066),
        "steam": (0.06480, 0.08000, 0.12166, 0.18199),
        "video": (0.05329, 0.06512, 0.09777, 0.14488),
        "xlong": (0.25375, 0.29583, 0.42482, 0.51295),
    },
    "SASRec": {
        "ml-1m": (0.18293, 0.21232, 0.31441, 0.43084),
        "steam": (0.06759, 0.08298, 0.12597, 0.18716),
        "video": (0.05829, 0.07111, 0.10910, 0.15989),
        "xlong": (0.30949, 0.33531, 0.49348, 0.59527),
    },
    "BERT4Rec": {
        "ml-1m": (0.16377, 0.19118, 0.30894, 0.41738),
        "steam": (0.06433, 0.08117, 0.12188, 0.18245),
        "video": (0.05600, 0.06958, 0.11252, 0.16640),
        "xlong": (0.23429, 0.27293, 0.41536, 0.56860),
    },
    "EulerFormer": {
        "ml-1m": (0.16016, 0.18937, 0.29257, 0.40368),
        "steam": (0.06825, 0.07916, 0.12037, 0.18416),
        "video": (0.05473, 0.06834, 0.10635, 0.15231),
        "xlong": (0.27164, 0.30561, 0.43825, 0.54062),
    },
    "HSTU": {
        "ml-1m": (0.18607, 0.21118, 0.31349, 0.41298),
        "steam": (0.07094, 0.08736, 0.13239, 0.19764),
        "video": (0.06320, 0.07624, 0.11286, 0.16470),
        "xlong": (0.28728, 0.31272, 0.45722, 0.55766),
    },
    "LRURec": {
        "ml-1m": (0.19065, 0.21767, 0.32402, 0.43118),
        "steam": (0.06934, 0.08508, 0.12831, 0.19082),
        "video": (0.06198, 0.07547, 0.11337, 0.16705),
        "xlong": (0.34867, 0.37174, 0.52688, 0.61800),
    },
    "HyenaRec": {
        "ml-1m": (0.20007, 0.22878, 0.33471, 0.44858),
        "steam": (0.07238, 0.08925, 0.13513, 0.20222),
        "video": (0.06436, 0.07713, 0.11620, 0.16720),
        "xlong": (0.41021, 0.42314, 0.54178, 0.60281),
    },
}
_TABLE4_AT10 = {  # (NDCG@10, Recall@10)
    "HyenaRecWoPK": {
        "ml-1m": (0.19174, 0.3251),
        "steam": (0.07112, 0.13280),
        "video": (0.06177, 0.11082),
        "xlong": (0.40552, 0.48575),
    },
    "HyenaRecWoGLU": {
        "ml-1m": (0.19026, 0.32229),
        "steam": (0.06855, 0.12936),
        "video": (0.06338, 0.11329),
        "xlong": (0.40865, 0.52341),
    },
    "HyenaRecFourier": {
        "ml-1m": (0.19270, 0.32713),
        "steam": (0.06955, 0.13041),
        "video": (0.06306, 0.11375),
        "xlong": (0.40121, 0.51899),
    },
    "HyenaRecChebyshev": {
        "ml-1m": (0.19545, 0.32651),
        "steam": (0.06902, 0.13036),
        "video": (0.06275, 0.11271),
        "xlong": (0.40199, 0.51333),
    },
}
# Training time relative to HyenaRec (= 1) as the paper reports it (ML-1M only).
_PAPER_TIME_RATIO = {"ml-1m": {"HyenaRec": 1.0, "SASRec": 1.77, "BERT4Rec": 4.25, "HSTU": 1.62}}
_APPENDIX_C_RECALL10 = {
    "HyenaVanilla": {"ml-1m": 0.3162, "xlong": 0.4579, "steam": 0.1258, "video": 0.0995},
    "AtrousHyena": {"ml-1m": 0.3280, "xlong": 0.4701, "steam": 0.1326, "video": 0.1016},
}


def published(model: str, dataset: str) -> dict[str, float | None]:
    """The paper's figures for ``model`` on ``dataset``, ``{metric: value or None}``."""
    row: dict[str, float | None] = dict.fromkeys(METRICS)
    if dataset in _TABLE3.get(model, {}):
        row.update(zip(METRICS, _TABLE3[model][dataset]))
    elif dataset in _TABLE4_AT10.get(model, {}):
        row["ndcg@10"], row["recall@10"] = _TABLE4_AT10[model][dataset]
    elif dataset in _APPENDIX_C_RECALL10.get(model, {}):
        row["recall@10"] = _APPENDIX_C_RECALL10[model][dataset]
    return row


# --- the CSV --------------------------------------------------------------------------------------

LEADING_COLUMNS = (
    ["model", "dataset"]
    + METRICS
    + [f"paper_{metric}" for metric in METRICS]
    + [f"long_{metric}" for metric in METRICS]
    + [
        "valid_recall@10",
        "epochs",
        "best_epoch",
        "train_time_s",
        "time_per_epoch_s",
        "valid_time_s",
        "resumed",
        "params",
        "train_mode",
        "history_mask",
        "max_seq_length",
        "train_batch_size",
        "eval_step",
        "steps_per_epoch",
        "max_epochs",
        "stopped_by",
        "concurrent_jobs",
        "threads",
        "seed",
        "device",
        "torch",
        "recbole",
        "python",
        "machine",
        "overrides",
        "finished_at",
    ]
)


@contextmanager
def _exclusive(path: Path):
    """Hold an exclusive lock on ``<path>.lock`` (POSIX; elsewhere a no-op): runs sharing
    ``--out`` then never interleave their read-merge-write of the table."""
    try:
        import fcntl
    except ImportError:  # Windows: run one table per --out
        yield
        return
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# every validation of every model (paper_table_<dataset>_validations.csv); other metrics follow
VALIDATION_COLUMNS = ["model", "dataset", "seed", "epoch", "recall@10", "long_recall@10"]


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def write_rows(path: Path, rows: list[dict], leading: list[str] = LEADING_COLUMNS) -> None:
    """All rows, with the union of their columns (new result keys add columns)."""
    columns = list(leading)
    for row in rows:
        columns += [key for key in row if key not in columns]
    tmp = path.with_suffix(f".csv.{os.getpid()}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _cell(row.get(key)) for key in columns})
    os.replace(tmp, path)  # a run cut off while writing leaves the previous table intact


def replace_model_rows(
    path: Path, model: str, dataset: str, new_rows: list[dict], leading: list[str] = LEADING_COLUMNS
) -> list[dict[str, str]]:
    """Replace ``model``'s rows on ``dataset`` in the CSV at ``path`` by ``new_rows`` and return
    all its rows as read back (one representation for every row). The file is re-read first:
    another run sharing ``--out`` may have written rows since (call under ``_exclusive``)."""
    kept = [
        other
        for other in read_rows(path)
        if not (other["model"] == model and other["dataset"] == dataset)
    ]
    write_rows(path, [*kept, *new_rows], leading)
    return read_rows(path)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _number(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


# --- the markdown table and the figure ------------------------------------------------------------


def _fmt(value, digits: int = 4) -> str:
    number = _number(value)
    return "" if number is None else f"{number:.{digits}f}"


def _gap(measured, paper) -> str:
    measured, paper = _number(measured), _number(paper)
    if measured is None or paper is None or paper == 0:
        return ""
    return f"{100 * (measured - paper) / paper:+.1f}%"


def _ratio(value, reference) -> str:
    value, reference = _number(value), _number(reference)
    if value is None or not reference:
        return ""
    return f"{value / reference:.2f}x"


def render_markdown(rows: list[dict], dataset: str) -> str:
    hyenarec = next((row for row in rows if row["model"] == "HyenaRec"), {})
    paper_ratios = _PAPER_TIME_RATIO.get(dataset, {})
    lines = [
        f"# HyenaRec paper, Table 3 protocol on {dataset}",
        "",
        "Measured by `benchmarks/paper_table.py` (test set, full ranking over all items, history "
        "masked, leave-one-out, early stopping on validation Recall@10). *paper*: the published "
        "row (blank: not reported); *Δ*: measured against published. *long users*: the top 10% "
        "of users by history length (blank: not reported by this evaluation). *× HyenaRec*: "
        "training time and time per epoch divided by HyenaRec's (end-to-end cost in the paper's "
        "sense; compare rows measured on the same machine under the same load, see the "
        "settings below); *paper ×*: the paper's training time relative to HyenaRec.",
        "",
        "| model | NDCG@10 | NDCG@20 | Recall@10 | Recall@20 | paper NDCG@10 | paper NDCG@20 "
        "| paper Recall@10 | paper Recall@20 | Δ NDCG@10 | Δ Recall@10 | long users NDCG@10 "
        "| long users Recall@10 | epochs (best) | train time | s / epoch | train time × HyenaRec "
        "| s / epoch × HyenaRec | paper × |",
        "|---" * 19 + "|",
    ]
    for row in rows:
        train_time = _number(row.get("train_time_s"))
        lines.append(
            "| "
            + " | ".join(
                [
                    str(row["model"]),
                    *(_fmt(row.get(metric)) for metric in METRICS),
                    *(_fmt(row.get(f"paper_{metric}")) for metric in METRICS),
                    _gap(row.get("ndcg@10"), row.get("paper_ndcg@10")),
                    _gap(row.get("recall@10"), row.get("paper_recall@10")),
                    _fmt(row.get("long_ndcg@10")),
                    _fmt(row.get("long_recall@10")),
                    f"{row.get('epochs', '')} ({row.get('best_epoch', '')})",
                    "" if train_time is None else f"{train_time / 60:.1f} min",
                    _fmt(row.get("time_per_epoch_s"), 1),
                    _ratio(row.get("train_time_s"), hyenarec.get("train_time_s")),
                    _ratio(row.get("time_per_epoch_s"), hyenarec.get("time_per_epoch_s")),
                    _ratio(paper_ratios.get(row["model"]), 1.0),
                ]
            )
            + " |"
        )
    settings = sorted(
        {
            (
                f"{row.get('device', '')}; torch {row.get('torch', '')}, RecBole "
                f"{row.get('recbole', '')}, Python {row.get('python', '')}; {row.get('machine', '')}"
            )
            for row in rows
        }
    )
    lines += ["", "Machines and versions (per row in the CSV, with seed and settings):", ""]
    lines += [f"- {setting}" for setting in settings]
    per_model = [
        f"- {row['model']}: train_mode {row.get('train_mode', '')}, L = "
        f"{row.get('max_seq_length', '')}, batch {row.get('train_batch_size', '')}, validation "
        f"every {row.get('eval_step', '')} epoch(s) of {row.get('steps_per_epoch', '')} steps, "
        f"at most {row.get('max_epochs', '')} epochs"
        f"{', stopped by ' + row['stopped_by'] if row.get('stopped_by') else ''}"
        f"{_side_by_side(row.get('concurrent_jobs'))}"
        f"{', ' + str(row['threads']) + ' thread(s)' if row.get('threads') else ''}, seed "
        f"{row.get('seed', '')}, resumed "
        f"{row.get('resumed', 0)} time(s), overrides {row.get('overrides', '') or '{}'}"
        for row in rows
    ]
    lines += ["", "Settings:", "", *per_model, ""]
    return "\n".join(lines)


def _side_by_side(jobs) -> str:
    count = _number(jobs)
    return (
        f", trained side by side with {int(count) - 1} other run(s)" if count and count > 1 else ""
    )


def _pyplot():
    """matplotlib's pyplot on a file-only backend, or None without matplotlib (the tables are
    the result; the figures are a convenience)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def render_figure(rows: list[dict], dataset: str, path: Path) -> None:
    plt = _pyplot()
    if plt is None:
        return
    models = [row["model"] for row in rows]
    figure, axes = plt.subplots(1, 2, figsize=(max(6, 1.2 * len(models) + 2), 4), squeeze=False)
    positions = range(len(models))
    for axis, metric in zip(axes[0], ("ndcg@10", "recall@10")):
        measured = [_number(row.get(metric)) or 0.0 for row in rows]
        paper = [_number(row.get(f"paper_{metric}")) for row in rows]
        axis.bar([p - 0.2 for p in positions], measured, width=0.4, label="measured")
        axis.bar(
            [p + 0.2 for p in positions],
            [value or 0.0 for value in paper],
            width=0.4,
            label="paper",
            alpha=0.6,
        )
        axis.set_xticks(list(positions), models, rotation=45, ha="right")
        axis.set_title(f"{metric.replace('ndcg', 'NDCG').replace('recall', 'Recall')} on {dataset}")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def render_curves(rows: list[dict], dataset: str, path: Path) -> None:
    """Validation Recall@10 against epochs, one line per model (dashed: long-history users)."""
    plt = _pyplot()
    if plt is None:
        return
    figure, axis = plt.subplots(figsize=(6, 4))
    for model in dict.fromkeys(row["model"] for row in rows):
        points = [row for row in rows if row["model"] == model]
        epochs = [int(row["epoch"]) for row in points]
        (line,) = axis.plot(epochs, [_number(row["recall@10"]) for row in points], marker="o")
        long_users = [_number(row.get("long_recall@10")) for row in points]
        if all(value is not None for value in long_users):
            axis.plot(epochs, long_users, linestyle="--", color=line.get_color())
        line.set_label(model)
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation Recall@10 (dashed: top 10% by history length)")
    axis.set_title(f"Validation on {dataset}")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# --- one model ------------------------------------------------------------------------------------


class _TimeLimitReached(Exception):
    """Raised after the validation that ends a run at its ``--time_limit_s``."""


def timed_trainer(trainer_class: type) -> type:
    """``trainer_class`` that adds up the seconds spent in training and in validation epochs."""

    class TimedTrainer(trainer_class):
        train_seconds = 0.0
        valid_seconds = 0.0
        last_epoch = -1
        deadline: float | None = None  # time.perf_counter() by which training must be over
        time_is_up = False

        def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
            start = time.perf_counter()
            result = super()._train_epoch(train_data, epoch_idx, *args, **kwargs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            now = time.perf_counter()
            self.train_seconds += now - start
            self.last_epoch = epoch_idx
            if self.deadline is not None and now + (now - start) > self.deadline:
                # another epoch would overrun: validate this one (fit() validates when
                # (epoch + 1) % eval_step == 0) and stop there
                self.time_is_up, self.eval_step = True, 1
            return result

        def _valid_epoch(self, *args, **kwargs):
            start = time.perf_counter()
            result = super()._valid_epoch(*args, **kwargs)
            self.valid_seconds += time.perf_counter() - start
            return result

    TimedTrainer.__name__ = trainer_class.__name__
    return TimedTrainer


def protocol_config(model: str) -> dict:
    """The paper's protocol on top of the property files (overall.yaml sets the split, metrics,
    early stopping on Recall@10 with patience 10, AdamW at 1e-3)."""
    all_position = issubclass(get_model(model), AllPositionMixin)
    return {
        "train_mode": "autoregressive" if all_position else "prefix",
        "history_mask": True,
        "show_progress": False,
        "save_dataset": False,
        "save_dataloaders": False,
    }


def _plain(result) -> dict[str, float]:
    return {str(key): float(value) for key, value in dict(result or {}).items()}


def train_and_test(
    model: str,
    dataset: str,
    overrides: dict,
    state_dir: Path,
    eval_every_steps: int,
    time_limit_s: float = 0.0,
    concurrent_jobs: int = 1,
) -> tuple[dict, list[dict]]:
    """Train ``model`` (continuing from ``state_dir`` if a previous run was cut off), test its
    best checkpoint, and return its CSV row and its validations (epoch and every metric of each,
    kept in ``progress.json`` across resumes).

    ``time_limit_s`` (> 0): when another training epoch, as long as the last one, would end
    more than that many seconds after this call began, validate after this epoch and stop
    (the row says ``stopped_by: time limit``)."""
    call_started = time.perf_counter()
    state_dir.mkdir(parents=True, exist_ok=True)
    best_file, last_file = state_dir / "best.pth", state_dir / "last.pth"
    progress_file = state_dir / "progress.json"
    progress = json.loads(progress_file.read_text()) if progress_file.is_file() else {}
    settings = run_settings(overrides, eval_every_steps)
    if progress and progress.get("settings", settings) != settings:
        changed = sorted(
            key
            for key in set(settings) | set(progress["settings"])
            if settings.get(key) != progress["settings"].get(key)
        )
        raise ValueError(
            f"{state_dir} holds a {model} run with other settings ({', '.join(changed)}: "
            f"{[progress['settings'].get(key) for key in changed]} there, "
            f"{[settings.get(key) for key in changed]} now); delete that folder to start "
            "again, or pass another --state_dir"
        )
    progress["settings"] = settings
    # the time limit counts from the model's first start, across resumed runs
    elapsed_before = progress.get("elapsed_s", 0.0)

    config_dict = {**protocol_config(model), **overrides, "checkpoint_dir": str(state_dir)}
    config = Config(model=model, dataset=dataset, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    restart_logger(config)  # each model logs to its own file
    logger = getLogger()
    data = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, data)
    steps_per_epoch = len(train_data)
    if eval_every_steps > 0:
        # validate every ~eval_every_steps optimiser steps, in whole epochs
        config["eval_step"] = max(1, round(eval_every_steps / steps_per_epoch))

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    network = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = timed_trainer(get_trainer(config["MODEL_TYPE"], config["model"]))(config, network)
    trainer.saved_model_file = str(best_file)
    best_epoch = progress.get("best_epoch", -1)
    resumed = progress.get("resumed", 0)
    if last_file.is_file() and not progress.get("finished", False):
        trainer.resume_checkpoint(str(last_file))
        trainer.saved_model_file = str(best_file)  # resume_checkpoint points it at last.pth
        trainer.best_valid_result = progress.get("best_valid_result")
        trainer.train_seconds = progress.get("train_seconds", 0.0)
        trainer.valid_seconds = progress.get("valid_seconds", 0.0)
        trainer.last_epoch = trainer.start_epoch - 1
        resumed += 1
        logger.info(f"paper_table: {model} resumes at epoch {trainer.start_epoch}")

    def save_progress(finished: bool) -> None:
        progress.update(
            {
                "epochs_done": trainer.last_epoch + 1,
                "best_epoch": best_epoch,
                "best_valid_result": _plain(trainer.best_valid_result),
                "train_seconds": trainer.train_seconds,
                "valid_seconds": trainer.valid_seconds,
                "resumed": resumed,
                "finished": finished,
                "elapsed_s": elapsed_before + time.perf_counter() - call_started,
            }
        )
        tmp = progress_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(progress, indent=1))
        os.replace(tmp, progress_file)

    configured_eval_step = trainer.eval_step
    if time_limit_s > 0:
        trainer.deadline = call_started + time_limit_s - elapsed_before

    def after_validation(epoch_idx: int, valid_score: float) -> None:
        nonlocal best_epoch
        if trainer.cur_step == 0:  # this validation improved: best.pth was just written
            best_epoch = epoch_idx
        # the state to continue from if the run is cut off (optimizer, early-stopping counter)
        trainer._save_checkpoint(epoch_idx, verbose=False, saved_model_file=str(last_file))
        validation = {"epoch": epoch_idx + 1, **_plain(trainer.last_valid_result)}
        progress.setdefault("validations", []).append(validation)
        save_progress(finished=False)
        if trainer.time_is_up:
            raise _TimeLimitReached

    if not progress.get("finished", False) and trainer.start_epoch < trainer.epochs:
        try:
            trainer.fit(
                train_data,
                valid_data,
                saved=True,
                show_progress=config["show_progress"],
                callback_fn=after_validation,
            )
            stopped_by = "epoch cap" if trainer.last_epoch + 1 >= trainer.epochs else "early stop"
        except _TimeLimitReached:
            stopped_by = "time limit"
            logger.info(f"paper_table: {model} stops at its time limit ({time_limit_s:.0f} s)")
        progress["stopped_by"] = stopped_by
        save_progress(finished=True)
    test_result = _plain(
        trainer.evaluate(test_data, load_best_model=True, model_file=str(best_file))
    )
    logger.info(f"paper_table: {model} test result {test_result}")

    epochs = progress.get("epochs_done", trainer.last_epoch + 1)
    row = {
        "model": model,
        "dataset": dataset,
        **{metric: test_result.get(metric) for metric in METRICS},
        **{f"paper_{metric}": value for metric, value in published(model, dataset).items()},
        # every other key the evaluation reports (the long-history users' ``long_<metric>``...)
        **{key: value for key, value in test_result.items() if key not in METRICS},
        "valid_recall@10": _plain(progress.get("best_valid_result")).get("recall@10"),
        "epochs": epochs,
        "best_epoch": best_epoch + 1 if best_epoch >= 0 else None,
        "train_time_s": round(progress.get("train_seconds", 0.0), 3),
        "time_per_epoch_s": (
            round(progress.get("train_seconds", 0.0) / epochs, 2) if epochs else None
        ),
        "valid_time_s": round(progress.get("valid_seconds", 0.0), 1),
        "resumed": resumed,
        "params": sum(parameter.numel() for parameter in network.parameters()),
        "train_mode": config["train_mode"],
        "history_mask": config["history_mask"],
        "max_seq_length": config["MAX_ITEM_LIST_LENGTH"],
        "train_batch_size": config["train_batch_size"],
        "eval_step": configured_eval_step,
        "steps_per_epoch": steps_per_epoch,
        "max_epochs": config["epochs"],
        "stopped_by": progress.get("stopped_by"),
        "concurrent_jobs": concurrent_jobs,
        "threads": torch.get_num_threads(),  # intra-op threads of this run's training
        "seed": config["seed"],
        **environment(config),
        "overrides": json.dumps(overrides, sort_keys=True, default=str) if overrides else "",
        "finished_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    validations = [
        {"model": model, "dataset": dataset, "seed": config["seed"], **validation}
        for validation in progress.get("validations", [])
    ]
    return row, validations


# Overrides that do not change what a model learns: a run may resume under other values.
_RESUMABLE_ACROSS = frozenset({"data_path", "show_progress", "state", "gpu_id", "checkpoint_dir"})


def run_settings(overrides: dict, eval_every_steps: int) -> dict:
    """What a resumed run must share with the run that saved its state (JSON-normalised)."""
    kept = {key: value for key, value in overrides.items() if key not in _RESUMABLE_ACROSS}
    kept["eval_every_steps"] = eval_every_steps
    return json.loads(json.dumps(kept, sort_keys=True, default=str))


def environment(config) -> dict[str, str]:
    import recbole

    device = str(config["device"])
    if device.startswith("cuda") and torch.cuda.is_available():
        device = f"{device} ({torch.cuda.get_device_name()})"
    return {
        "device": device,
        "torch": torch.__version__,
        "recbole": recbole.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs".replace(
            "  ", " "
        ),
    }


# --- the command ----------------------------------------------------------------------------------


def parse_overrides(extra: list[str]) -> dict:
    """``--key=value`` pairs; values read as Python literals where they parse (as RecBole does)."""
    overrides = {}
    for item in extra:
        if not item.startswith("--") or "=" not in item:
            raise SystemExit(f"unrecognised argument {item!r}: overrides take the form --key=value")
        key, value = item[2:].split("=", 1)
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = {"true": True, "false": False}.get(value.lower(), value)
    return overrides


def default_data_path(dataset: str) -> str | None:
    """RecBole ships ml-100k in its package: use that copy when no data_path is given."""
    if dataset != "ml-100k":
        return None
    import recbole

    return str(Path(recbole.__file__).resolve().parent / "dataset_example")


def run_side_by_side(models: list[str], args: argparse.Namespace, extra: list[str], out: Path):
    """Each of ``models`` in its own ``paper_table.py`` process, ``args.jobs`` at a time; the
    processes merge their rows into the one table (under its lock). Each one's output goes to
    ``<out>/paper_table_<dataset>_<model>.log``."""
    jobs = min(args.jobs, len(models))
    common = [
        "--dataset", args.dataset,
        "--out", args.out,
        "--state_dir", args.state_dir,
        "--eval_every_steps", str(args.eval_every_steps),
        "--time_limit_s", str(args.time_limit_s),
        "--concurrent_jobs", str(jobs),
    ]  # fmt: skip
    if args.data_path:
        common += ["--data_path", args.data_path]
    if args.epochs is not None:
        common += ["--epochs", str(args.epochs)]
    environment = dict(os.environ)
    environment.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))

    def run(model: str) -> int:
        log = out / f"paper_table_{args.dataset}_{model}.log"
        command = [sys.executable, __file__, "--models", model, *common, *extra]
        print(f"{model}: started, output in {log}", flush=True)
        with log.open("w") as handle:
            code = subprocess.call(
                command, stdout=handle, stderr=subprocess.STDOUT, env=environment
            )
        print(f"{model}: {'done' if code == 0 else f'FAILED (exit {code}), see {log}'}", flush=True)
        return code

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        codes = list(pool.map(run, models))
    if any(codes):
        failed = [model for model, code in zip(models, codes) if code]
        print(f"failed: {' '.join(failed)}", flush=True)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Any other --key=value is a RecBole config override for every model.",
        allow_abbrev=False,  # --state=INFO is RecBole's log level, not --state_dir
    )
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="models, in order")
    parser.add_argument("--dataset", default="ml-1m", help="data set name (default ml-1m)")
    parser.add_argument("--data_path", default=None, help="folder that holds <dataset>/")
    parser.add_argument(
        "--out", default=str(REPO_ROOT / "benchmarks" / "results"), help="output folder"
    )
    parser.add_argument(
        "--state_dir",
        default="paper_table_state",
        help="checkpoints and progress of unfinished models (default ./paper_table_state)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="maximum epochs per model")
    parser.add_argument(
        "--time_limit_s",
        type=float,
        default=0.0,
        help="per model: seconds from its start after which no training epoch begins; the "
        "epoch that ends the run is validated (0: no limit); the row says so",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="models trained at the same time, each in its own process with cpu_count / jobs "
        "threads (their times are then measured side by side, which the rows record); with "
        "one model left to train it runs in this process on every core: to share the machine "
        "with other jobs, set OMP_NUM_THREADS",
    )
    parser.add_argument("--concurrent_jobs", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument(
        "--eval_every_steps",
        type=int,
        default=500,
        help="validate every N optimiser steps, rounded to whole epochs (the paper's ML-1M: "
        "500); 0 keeps the config's eval_step",
    )
    args, extra = parser.parse_known_args(argv)
    overrides = parse_overrides(extra)
    for key, value in (("data_path", args.data_path or default_data_path(args.dataset)),):
        if value is not None:
            overrides.setdefault(key, value)
    if args.epochs is not None:
        overrides["epochs"] = args.epochs

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"paper_table_{args.dataset}.csv"
    curves_path = out / f"paper_table_{args.dataset}_validations.csv"
    rows = read_rows(csv_path)
    pending = [
        model
        for model in args.models
        if not any(row["model"] == model and row["dataset"] == args.dataset for row in rows)
    ]
    for model in args.models:
        if model not in pending:
            print(f"{model}: row already in {csv_path}, skipped")
    if args.jobs > 1 and len(pending) > 1:
        run_side_by_side(pending, args, extra, out)
        pending = []  # trained by the child processes, whose rows are in the table now
    for model in pending:
        started = time.perf_counter()
        row, validations = train_and_test(
            model,
            args.dataset,
            overrides,
            Path(args.state_dir) / args.dataset / model,
            args.eval_every_steps,
            args.time_limit_s,
            args.concurrent_jobs,
        )
        with _exclusive(csv_path):
            rows = replace_model_rows(csv_path, model, args.dataset, [row])
            curves = replace_model_rows(
                curves_path, model, args.dataset, validations, leading=VALIDATION_COLUMNS
            )
            render_curves(curves, args.dataset, curves_path.with_suffix(".png"))
            (out / f"paper_table_{args.dataset}.md").write_text(
                render_markdown(rows, args.dataset), encoding="utf-8"
            )
            render_figure(rows, args.dataset, out / f"paper_table_{args.dataset}.png")
        print(
            f"{model}: NDCG@10 {_fmt(row['ndcg@10'])}, Recall@10 {_fmt(row['recall@10'])} "
            f"(paper {_fmt(row['paper_ndcg@10'])} / {_fmt(row['paper_recall@10'])}), "
            f"{row['epochs']} epochs, {math.ceil(time.perf_counter() - started)} s"
        )
    rows = read_rows(csv_path)  # with the rows of any other run sharing --out
    if rows:
        print(render_markdown(rows, args.dataset))
    return rows


if __name__ == "__main__":
    main()
