"""HyenaRec's ablations (the paper's Table 4 and Appendix C) on one data set under one protocol.

Every variant is trained, validated with early stopping and tested by
``recbole_hyena.quick_start.run_recbole_hyena`` with the same settings: its property file, the
data set's, ``properties/overall.yaml`` (leave-one-out, full ranking, early stopping on Recall@10)
and the overrides given here. Each run happens in a fresh Python process inside its own temporary
directory, so RecBole's logger, seeds and ``log/``/``saved/`` folders never leak between variants.

Measured per variant: NDCG and Recall @10 and @20 on the test set (from the best validation
checkpoint), the same on the validation set, the epochs trained and the best epoch, the training
time (sum of RecBole's per-epoch "training [time: ...]", evaluation excluded) and the wall time of
the whole run (data loading and evaluation included).

Outputs, under ``--out``: ``<name>.md`` (the table shaped like Table 4 with the settings on top),
``<name>.csv`` (settings as ``#`` lines on top) and ``<name>.png`` (NDCG@10 and Recall@10 bars);
with ``--keep-checkpoints`` the best checkpoints too (for ``python -m recbole_hyena.kernels``).
Finished variants are cached as JSON under ``<out>/<name>_runs/`` and skipped when the script is
run again with the same settings (``--force`` reruns them). ``--jobs N`` trains N variants at once
(on a GPU with CPU cores to spare); their training times are then measured side by side, which the
table's header says.

``--summarize A.csv B.csv ...`` merges the CSVs of runs that differ only in ``--seed`` into one
table of means and standard deviations (``<name>.md``, ``.csv``, ``.png`` with error bars).

The committed ml-100k tables (one H100; three seeds, then their summary)::

    for seed in 2020 2021 2022; do
        python benchmarks/ablation_table.py --dataset ml-100k --jobs 7 --seed $seed \
            --name ablation_ml-100k_seed$seed
    done
    python benchmarks/ablation_table.py --summarize benchmarks/results/ablation_ml-100k_seed*.csv
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# The paper's names for the variants, in Table 4's order then Appendix C's.
PAPER_NAMES = {
    "HyenaRec": "HyenaRec",
    "HyenaRecWoPK": "w/o PK",
    "HyenaRecWoGLU": "w/o GLU",
    "HyenaRecFourier": "Fourier",
    "HyenaRecChebyshev": "Chebyshev",
    "HyenaVanilla": "HyenaVanilla",
    "AtrousHyena": "AtrousHyena",
}
METRICS = ["ndcg@10", "ndcg@20", "recall@10", "recall@20"]
COLUMNS = [
    "model",
    "variant",
    *(f"test_{metric}" for metric in METRICS),
    *(f"valid_{metric}" for metric in METRICS),
    "epochs",
    "best_epoch",
    "train_s",
    "train_s_per_epoch",
    "relative_train_time",
    "wall_s",
    "params",
    "status",
]
RESULT_PREFIX = "RESULT "
EPOCH_LINE = re.compile(r"epoch (\d+) training \[time: ([\d.]+)s")


def run_one(model: str, dataset: str, config_dict: dict, keep_checkpoint: str | None) -> dict:
    """Child process: one variant through ``run_recbole_hyena`` in the current directory."""
    import recbole.model.sequential_recommender  # noqa: F401
    import torch

    # Importing RecBole's sequential models runs sine.py, which switches autograd's anomaly
    # detection on for the whole process: a debugging mode that checks every backward op for
    # NaN and slows training several-fold. Import them first, then switch it off.
    torch.autograd.set_detect_anomaly(False)

    from recbole_hyena.quick_start import run_recbole_hyena
    from recbole_hyena.trainer import load_checkpoint

    start = time.perf_counter()
    result = run_recbole_hyena(model, dataset, config_dict=config_dict, saved=True)
    wall_s = time.perf_counter() - start

    (log_file,) = Path("log").glob(f"{model}/*.log")
    epoch_times = [float(match[2]) for match in EPOCH_LINE.finditer(log_file.read_text())]
    (checkpoint_file,) = Path("saved").glob(f"{model}-*.pth")
    checkpoint = load_checkpoint(str(checkpoint_file))
    params = sum(value.numel() for value in checkpoint["state_dict"].values())
    if keep_checkpoint:
        shutil.copy(checkpoint_file, keep_checkpoint)
    return {
        "model": model,
        "test": {key: float(value) for key, value in result["test_result"].items()},
        "valid": {key: float(value) for key, value in result["best_valid_result"].items()},
        "epochs": len(epoch_times),
        "best_epoch": int(checkpoint["epoch"]),
        "train_s": sum(epoch_times),
        "wall_s": wall_s,
        "params": params,
        "status": "ok",
    }


def launch(model: str, args, config_dict: dict, cache_file: Path) -> dict:
    """Run one variant in a fresh process and temporary directory; cache its result."""
    keep = None
    if args.keep_checkpoints:
        Path(args.keep_checkpoints).mkdir(parents=True, exist_ok=True)
        keep = str(Path(args.keep_checkpoints).resolve() / f"{model}-{args.dataset}.pth")
    with tempfile.TemporaryDirectory(prefix=f"ablation_{model}_") as workdir:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            model,
            "--dataset",
            args.dataset,
            "--child-config",
            json.dumps(config_dict),
        ]
        if keep:
            command += ["--child-keep", keep]
        # This checkout first, then whatever the caller's path holds (e.g. RecBole installed
        # with --target on a machine where the plugin is not installed).
        python_path = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(python_path)}
        start = time.perf_counter()
        try:
            process = subprocess.run(
                command, cwd=workdir, env=env, capture_output=True, text=True, timeout=args.timeout
            )
        except subprocess.TimeoutExpired:
            return {"model": model, "status": f"timeout after {args.timeout} s"}
        lines = [line for line in process.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
        if process.returncode != 0 or not lines:
            tail = (process.stderr or process.stdout).strip().splitlines()[-3:]
            print(f"{model} failed ({process.returncode}): " + " | ".join(tail), file=sys.stderr)
            return {"model": model, "status": f"failed (exit {process.returncode})"}
    result = json.loads(lines[-1][len(RESULT_PREFIX) :])
    print(
        f"{model}: test Recall@10 {result['test']['recall@10']:.4f}, {result['epochs']} epochs, "
        f"train {result['train_s']:.0f} s, run {time.perf_counter() - start:.0f} s",
        flush=True,
    )
    cache_file.write_text(json.dumps(result, indent=1))
    return result


def table_rows(results: list[dict]) -> list[dict]:
    reference = next(
        (r["train_s"] for r in results if r["model"] == "HyenaRec" and r["status"] == "ok"), None
    )
    rows = []
    for result in results:
        row = {"model": result["model"], "variant": PAPER_NAMES.get(result["model"], "")}
        row["status"] = result["status"]
        if result["status"] == "ok":
            for metric in METRICS:
                row[f"test_{metric}"] = result["test"][metric]
                row[f"valid_{metric}"] = result["valid"][metric]
            row.update({key: result[key] for key in ("epochs", "best_epoch", "params")})
            row["train_s"] = round(result["train_s"], 1)
            row["train_s_per_epoch"] = round(result["train_s"] / max(result["epochs"], 1), 2)
            row["wall_s"] = round(result["wall_s"], 1)
            if reference:
                row["relative_train_time"] = round(result["train_s"] / reference, 2)
        rows.append(row)
    return rows


def environment() -> dict:
    import recbole
    import torch

    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs ({platform.processor() or 'cpu'})",
        "load average at start": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "recbole": recbole.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def write_outputs(rows: list[dict], settings: dict, out: Path, name: str) -> None:
    header = [f"{key}: {value}" for key, value in settings.items()]
    with open(out / f"{name}.csv", "w", newline="") as handle:
        for line in header:
            handle.write(f"# {line}\n")
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)

    def cell(row, key, digits=4):
        value = row.get(key)
        if value is None:
            return ""
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    lines = [f"# HyenaRec ablations on {settings['dataset']}", ""]
    lines += [f"- {line}" for line in header] + [""]
    lines.append(
        "| variant | model | NDCG@10 | Recall@10 | NDCG@20 | Recall@20 | epochs (best) "
        "| train time s | vs HyenaRec |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        if row["status"] != "ok":
            lines.append(f"| {row['variant']} | {row['model']} | {row['status']} |||||||")
            continue
        relative = cell(row, "relative_train_time", 2)
        relative = f"{relative}x" if relative else ""
        lines.append(
            f"| {row['variant']} | {row['model']} | {cell(row, 'test_ndcg@10')} "
            f"| {cell(row, 'test_recall@10')} | {cell(row, 'test_ndcg@20')} "
            f"| {cell(row, 'test_recall@20')} | {row['epochs']} ({row['best_epoch']}) "
            f"| {cell(row, 'train_s', 1)} | {relative} |"
        )
    lines += [
        "",
        "Test metrics of the best-validation checkpoint (full ranking). Epochs: trained (best "
        "epoch, counted from 0); train time: the sum of RecBole's per-epoch training time, "
        "evaluation excluded.",
    ]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [row for row in rows if row["status"] == "ok"]
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for axis, metric in zip(axes, ["test_ndcg@10", "test_recall@10"]):
        axis.bar([row["variant"] or row["model"] for row in done], [row[metric] for row in done])
        axis.set_title(metric.replace("test_", "test ").replace("@", "@"), fontsize=10)
        axis.tick_params(axis="x", rotation=35, labelsize=8)
    figure.suptitle(
        f"HyenaRec ablations on {settings['dataset']} ({settings['protocol']})", fontsize=10
    )
    figure.tight_layout()
    figure.savefig(out / f"{name}.png", dpi=120)
    plt.close(figure)


def read_results_csv(path: str) -> tuple[dict, list[dict]]:
    """The ``# key: value`` settings lines and the rows of a CSV this script wrote."""
    settings, lines = {}, []
    with open(path) as handle:
        for line in handle:
            if line.startswith("# "):
                key, _, value = line[2:].rstrip("\n").partition(": ")
                settings[key] = value
            else:
                lines.append(line)
    return settings, list(csv.DictReader(lines))


def summarize(paths: list[str], out: Path, name: str, note: str | None = None) -> None:
    """Mean and sample standard deviation over the runs in ``paths`` (one per seed)."""
    import statistics

    runs = [read_results_csv(path) for path in paths]
    seeds = [json.loads(settings["overrides"]).get("seed") for settings, _ in runs]
    by_model: dict[str, list[dict]] = {}
    for _, rows in runs:
        for row in rows:
            if row["status"] == "ok":
                by_model.setdefault(row["model"], []).append(row)
    quantities = [f"test_{metric}" for metric in METRICS] + ["epochs", "best_epoch", "train_s"]
    summary = []
    for model, rows in by_model.items():
        entry = {"model": model, "variant": PAPER_NAMES.get(model, ""), "runs": len(rows)}
        for key in quantities:
            values = [float(row[key]) for row in rows]
            entry[key] = statistics.fmean(values)
            entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        summary.append(entry)
    reference = next((e["train_s"] for e in summary if e["model"] == "HyenaRec"), None)
    for entry in summary:
        entry["relative_train_time"] = entry["train_s"] / reference if reference else None

    first = runs[0][0]
    settings = {
        "dataset": first["dataset"],
        "runs": f"{len(paths)} seeds {seeds}, one run per variant and seed: "
        + ", ".join(Path(path).name for path in paths),
        **{
            key: first[key]
            for key in ("protocol", "machine", "python", "torch", "recbole", "device")
            if key in first
        },
        "overrides": first["overrides"] + " (seed differs per run)",
        "concurrency": first.get("concurrency", ""),
        "note": first.get("note", ""),
    }
    if note:
        settings["run note"] = note
    columns = ["model", "variant", "runs"] + [
        key for quantity in quantities for key in (quantity, f"{quantity}_std")
    ]
    columns.append("relative_train_time")
    with open(out / f"{name}.csv", "w", newline="") as handle:
        for key, value in settings.items():
            handle.write(f"# {key}: {value}\n")
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for entry in summary:
            writer.writerow(
                {
                    key: round(value, 5) if isinstance(value, float) else value
                    for key, value in entry.items()
                }
            )

    def mean_std(entry, key, digits=4):
        return f"{entry[key]:.{digits}f} ± {entry[key + '_std']:.{digits}f}"

    lines = [f"# HyenaRec ablations on {settings['dataset']}: mean ± std over seeds", ""]
    lines += [f"- {key}: {value}" for key, value in settings.items()] + [""]
    lines.append(
        "| variant | model | NDCG@10 | Recall@10 | NDCG@20 | Recall@20 | epochs | train time s "
        "| vs HyenaRec |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for entry in summary:
        relative = entry["relative_train_time"]
        lines.append(
            f"| {entry['variant']} | {entry['model']} | {mean_std(entry, 'test_ndcg@10')} "
            f"| {mean_std(entry, 'test_recall@10')} | {mean_std(entry, 'test_ndcg@20')} "
            f"| {mean_std(entry, 'test_recall@20')} | {mean_std(entry, 'epochs', 1)} "
            f"| {mean_std(entry, 'train_s', 1)} | {'' if relative is None else f'{relative:.2f}x'} |"
        )
    lines += [
        "",
        "Test metrics of each run's best-validation checkpoint (full ranking); ± is the sample "
        "standard deviation over seeds. Epochs: trained until early stopping; train time: the sum "
        "of RecBole's per-epoch training time, evaluation excluded.",
    ]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    labels = [entry["variant"] or entry["model"] for entry in summary]
    for axis, metric in zip(axes, ["test_ndcg@10", "test_recall@10"]):
        axis.bar(
            labels,
            [entry[metric] for entry in summary],
            yerr=[entry[f"{metric}_std"] for entry in summary],
            capsize=3,
        )
        axis.set_title(f"test {metric[5:]} (mean ± std, {len(paths)} seeds)", fontsize=10)
        axis.tick_params(axis="x", rotation=35, labelsize=8)
    figure.suptitle(f"HyenaRec ablations on {settings['dataset']}", fontsize=10)
    figure.tight_layout()
    figure.savefig(out / f"{name}.png", dpi=120)
    plt.close(figure)
    print((out / f"{name}.md").read_text())


def parse_overrides(pairs: list[str]) -> dict:
    """``key=value`` pairs, values parsed as YAML scalars (``1e-4``, ``True``, ``[10, 20]``)."""
    import yaml

    overrides = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator:
            raise SystemExit(f"--config expects key=value, got [{pair}]")
        overrides[key] = yaml.safe_load(value)
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--models", nargs="+", default=list(PAPER_NAMES))
    parser.add_argument("--epochs", type=int, default=100, help="cap on training epochs")
    parser.add_argument("--stopping-step", type=int, default=10, help="early-stopping patience")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument(
        "--config", nargs="*", default=[], help="more RecBole overrides as key=value"
    )
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results"))
    parser.add_argument("--name", default=None, help="output file stem (default ablation_<data>)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per variant")
    parser.add_argument("--keep-checkpoints", default=None, help="folder for best checkpoints")
    parser.add_argument("--force", action="store_true", help="rerun cached variants")
    parser.add_argument("--jobs", type=int, default=1, help="variants trained at the same time")
    parser.add_argument("--note", default=None, help="a line added to the settings header")
    parser.add_argument(
        "--summarize", nargs="+", default=None, help="merge per-seed CSVs into mean ± std"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-config", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--child-keep", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = run_one(args.child, args.dataset, json.loads(args.child_config), args.child_keep)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return
    if args.summarize:
        name = args.name or f"ablation_{args.dataset}"
        summarize(args.summarize, Path(args.out), name, args.note)
        return

    config_dict = {
        "epochs": args.epochs,
        "stopping_step": args.stopping_step,
        "seed": args.seed,
        "show_progress": False,
        **parse_overrides(args.config),
    }
    out = Path(args.out)
    name = args.name or f"ablation_{args.dataset}"
    settings_key = hashlib.md5(
        json.dumps([args.dataset, config_dict], sort_keys=True).encode()
    ).hexdigest()[:8]
    cache_dir = out / f"{name}_runs"
    cache_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "dataset": args.dataset,
        "protocol": "each model's property file + properties/overall.yaml "
        "(leave-one-out, full ranking, early stopping on valid Recall@10)",
        "overrides": json.dumps(config_dict),
        "command": "python benchmarks/ablation_table.py " + " ".join(sys.argv[1:]),
        **environment(),
        "note": "autograd anomaly detection (switched on by importing RecBole's SINE model) is "
        "switched off in each run",
        "concurrency": f"{args.jobs} variant(s) trained at a time"
        + ("" if args.jobs == 1 else ": training times measured side by side"),
    }
    if args.note:
        settings["run note"] = args.note
    print("\n".join(f"{key}: {value}" for key, value in settings.items()), flush=True)

    results: dict[str, dict] = {}
    write_lock = threading.Lock()

    def run_variant(model: str) -> None:
        cache_file = cache_dir / f"{model}-{settings_key}.json"
        if cache_file.is_file() and not args.force:
            print(f"{model}: cached in {cache_file}", flush=True)
            results[model] = json.loads(cache_file.read_text())
        else:
            results[model] = launch(model, args, config_dict, cache_file)
        # Write after every variant, so that an interrupted run still leaves a table.
        with write_lock:
            done = [results[variant] for variant in args.models if variant in results]
            write_outputs(table_rows(done), settings, out, name)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(run_variant, args.models))
    print((out / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
