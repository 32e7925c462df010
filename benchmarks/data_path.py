"""Benchmark of the long-history data path against RecBole's stock sequential path.

    python benchmarks/data_path.py build   # data set build time and peak RSS, stock vs plugin
    python benchmarks/data_path.py train   # epoch time and test metrics, prefix vs autoregressive
    python benchmarks/data_path.py scale   # 10M interactions at L=1000: build + one HyenaRec epoch

``build`` writes the synthetic 1M-interaction set (1000 users x 1000 events) and times
``create_dataset`` + ``data_preparation`` at L=200 and L=1000, each in its own process (peak RSS
of that process; a memory cap turns RecBole's O(N L) path into a reported failure instead of
swapping the machine). ``scale`` builds a 10M-interaction set (10,000 users x 1000 events) and trains one HyenaRec epoch at
L=1000. ``train`` trains HyenaRec and SASRec on ml-100k in both training modes (autoregressive at each
``--strides`` value of ``train_window_stride``) with early stopping on validation Recall@10 and reports time per epoch, time to the end of training and
test NDCG@10 / Recall@10. Each writes a CSV and a PNG into --out, with machine and versions.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def environment() -> str:
    import recbole
    import torch

    return (
        f"{platform.node()} ({os.cpu_count()} CPUs, {platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}, torch {torch.__version__}, RecBole {recbole.__version__}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )


def build_child(args) -> None:
    """Child process: build the data set once and print time and peak RSS as JSON."""
    if args.memory_cap_gb:
        cap = int(args.memory_cap_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    from recbole_hyena.config import Config
    from recbole_hyena.data import create_dataset, data_preparation

    config = Config(
        model="HyenaRec",
        dataset=args.dataset,
        config_dict={
            "data_path": args.data_path,
            "MAX_ITEM_LIST_LENGTH": args.length,
            "long_history_dataset": args.path == "plugin",
            "train_mode": "autoregressive" if args.path == "plugin" else "prefix",
            "history_mask": args.path == "plugin",
            "user_inter_num_interval": None,
            "item_inter_num_interval": None,
            "use_gpu": False,
        },
    )
    start = time.perf_counter()
    try:
        dataset = create_dataset(config)
        train, valid, test = data_preparation(config, dataset)
        status, samples = "ok", len(train._dataset)
    except MemoryError:
        status, samples = f"MemoryError at the {args.memory_cap_gb:g} GB cap", 0
    seconds = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        json.dumps(
            {"status": status, "seconds": seconds, "peak_rss_gb": peak_gb, "train_samples": samples}
        )
    )


def run_build(args) -> None:
    from recbole_hyena.data.synthetic import write_synthetic_dataset

    data_path = args.data_path or tempfile.mkdtemp(prefix="synthetic-")
    name = "synth-1000x1000"
    if not os.path.isfile(os.path.join(data_path, name, f"{name}.inter")):
        write_synthetic_dataset(data_path, name, n_users=1000, n_events=1000, n_items=3416)
    rows = []
    for length in (200, 1000):
        for path in ("stock", "plugin"):
            command = [
                sys.executable,
                __file__,
                "build-child",
                "--path",
                path,
                "--length",
                str(length),
                "--dataset",
                name,
                "--data_path",
                data_path,
                "--memory_cap_gb",
                str(args.memory_cap_gb),
            ]
            process = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
            try:
                result = json.loads(process.stdout.strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                result = {"status": f"failed: {process.stderr.strip().splitlines()[-1:]}"}
            rows.append({"path": path, "L": length, **result})
            print(rows[-1], flush=True)
    write_outputs(args.out, "data_path_build", rows, "peak_rss_gb", "peak RSS (GB)")


def run_train(args) -> None:
    from recbole_hyena.config import Config
    from recbole_hyena.data import create_dataset, data_preparation
    from recbole_hyena.utils import get_model, get_trainer

    runs = [("prefix", 0)] if "prefix" in args.modes else []
    if "autoregressive" in args.modes:
        runs += [("autoregressive", stride) for stride in args.strides]
    rows = []
    dropouts = args.dropouts or [None]  # None: the model's own hidden_dropout_prob
    settings = itertools.product(args.models, runs, dropouts, args.seeds)
    for model_name, (mode, stride), dropout, seed in settings:
        config_dict = {
            "train_mode": mode,
            "train_window_stride": stride,
            "epochs": args.prefix_epochs if mode == "prefix" else args.epochs,
            "show_progress": False,
            "use_gpu": False,
            "checkpoint_dir": tempfile.mkdtemp(prefix="ckpt-"),
            "history_mask": False,
            "seed": seed,
        }
        if dropout is not None:
            config_dict["hidden_dropout_prob"] = dropout
        config = Config(model=model_name, dataset="ml-100k", config_dict=config_dict)
        train, valid, test = data_preparation(config, create_dataset(config))
        model = get_model(model_name)(config, train._dataset)
        trainer = get_trainer(config["MODEL_TYPE"], model_name)(config, model)
        epoch_seconds = time_epochs(trainer)
        start = time.perf_counter()
        _, best_valid = trainer.fit(train, valid, saved=True, show_progress=False)
        total = time.perf_counter() - start
        result = trainer.evaluate(test, load_best_model=True)
        rows.append(
            {
                "model": model_name,
                "seed": seed,
                "train_mode": mode,
                # prefix samples are windows of stride 1 with the loss at the last position
                "window_stride": 1
                if mode == "prefix"
                else stride or config["MAX_ITEM_LIST_LENGTH"],
                "hidden_dropout_prob": config["hidden_dropout_prob"],
                "epochs": len(epoch_seconds),
                "epoch_cap": config["epochs"],
                "seconds_per_epoch": sum(epoch_seconds) / len(epoch_seconds),
                "train_seconds": total,
                "valid_ndcg@10": best_valid["ndcg@10"],
                "valid_recall@10": best_valid["recall@10"],
                "test_ndcg@10": result["ndcg@10"],
                "test_recall@10": result["recall@10"],
            }
        )
        print(rows[-1], flush=True)
    write_outputs(args.out, "data_path_train", rows, "train_seconds", "training time (s)", 5)


def run_scale(args) -> None:
    """Build a synthetic set of ``--users`` x 1000 events at L=1000, train one HyenaRec epoch
    (autoregressive windows, batch 32 as the paper's XLong) and run one validation pass."""
    import torch

    from recbole_hyena.config import Config
    from recbole_hyena.data import create_dataset, data_preparation
    from recbole_hyena.data.synthetic import write_synthetic_dataset
    from recbole_hyena.utils import get_model, get_trainer

    data_path = args.data_path or tempfile.mkdtemp(prefix="synthetic-")
    name = f"synth-{args.users}x1000"
    start = time.perf_counter()
    if not os.path.isfile(os.path.join(data_path, name, f"{name}.inter")):
        write_synthetic_dataset(data_path, name, n_users=args.users, n_events=1000, n_items=3416)
    write_seconds = time.perf_counter() - start
    config = Config(
        model="HyenaRec",
        dataset=name,
        config_dict={
            "data_path": data_path,
            "MAX_ITEM_LIST_LENGTH": 1000,
            "train_batch_size": 32,
            "user_inter_num_interval": None,
            "item_inter_num_interval": None,
            "show_progress": True,
            "use_gpu": False,
        },
    )
    start = time.perf_counter()
    train, valid, test = data_preparation(config, create_dataset(config))
    build_seconds = time.perf_counter() - start
    build_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    model = get_model("HyenaRec")(config, train._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], "HyenaRec")(config, model)
    start = time.perf_counter()
    loss = trainer._train_epoch(train, 0, show_progress=True)
    epoch_seconds = time.perf_counter() - start
    epoch_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    # One full-ranking validation pass, so that the whole pipeline has run at this scale.
    start = time.perf_counter()
    _, valid_result = trainer._valid_epoch(valid, show_progress=True)
    row = {
        "interactions": train._dataset.inter_num,
        "L": 1000,
        "windows": len(train._dataset),
        "torch_threads": torch.get_num_threads(),
        "write_s": write_seconds,
        "build_s": build_seconds,
        "build_peak_rss_gb": build_rss,
        "epoch_s": epoch_seconds,
        "epoch_peak_rss_gb": epoch_rss,
        "train_loss": float(loss),
        "valid_s": time.perf_counter() - start,
        "valid_peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        **{f"valid_{key}": value for key, value in valid_result.items()},
    }
    print(row, flush=True)
    write_outputs(
        args.out, f"data_path_scale_{args.users}x1000", [row], "epoch_s", "epoch time (s)"
    )


def time_epochs(trainer) -> list[float]:
    """Wrap ``trainer._train_epoch`` so that each epoch's seconds land in the returned list."""
    seconds: list[float] = []
    train_epoch = trainer._train_epoch

    def timed_epoch(*args, **kwargs):
        start = time.perf_counter()
        loss = train_epoch(*args, **kwargs)
        seconds.append(time.perf_counter() - start)
        return loss

    trainer._train_epoch = timed_epoch
    return seconds


def write_outputs(
    out: str, stem: str, rows: list[dict], plot_key: str, plot_label: str, label_keys: int = 2
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out, exist_ok=True)
    header = environment()
    keys = list(dict.fromkeys(key for row in rows for key in row))
    with open(os.path.join(out, f"{stem}.csv"), "w", newline="") as file:
        file.write(f"# {header}\n")
        writer = csv.DictWriter(file, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    labels = [" ".join(str(row[k]) for k in keys[:label_keys]) for row in rows]
    values = [row.get(plot_key) or 0 for row in rows]
    figure, axis = plt.subplots(figsize=(8, 4))
    axis.bar(labels, values)
    axis.set_ylabel(plot_label)
    axis.set_title(f"{stem}\n{header}", fontsize=7)
    axis.tick_params(axis="x", labelsize=7, rotation=20)
    figure.tight_layout()
    figure.savefig(os.path.join(out, f"{stem}.png"), dpi=120)
    print(f"wrote {out}/{stem}.csv and .png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["build", "train", "scale", "build-child"])
    parser.add_argument("--users", type=int, default=10000, help="scale: users x 1000 events")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--memory_cap_gb", type=float, default=12.0)
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--models", nargs="+", default=["HyenaRec", "SASRec"])
    parser.add_argument("--epochs", type=int, default=200, help="epoch cap, autoregressive mode")
    parser.add_argument("--prefix_epochs", type=int, default=200, help="epoch cap, prefix mode")
    parser.add_argument(
        "--modes", nargs="+", default=["prefix", "autoregressive"], help="train: training modes"
    )
    parser.add_argument(
        "--strides",
        nargs="+",
        type=int,
        default=[0],
        help="train: train_window_stride values of the autoregressive runs (0: L)",
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[2020], help="train: one run per seed"
    )
    parser.add_argument(
        "--dropouts",
        nargs="+",
        type=float,
        help="train: hidden_dropout_prob values, one run each (default: the model's own)",
    )
    # build-child only
    parser.add_argument("--path", choices=["stock", "plugin"])
    parser.add_argument("--length", type=int)
    parser.add_argument("--dataset")
    args = parser.parse_args()
    {"build": run_build, "train": run_train, "scale": run_scale, "build-child": build_child}[
        args.command
    ](args)


if __name__ == "__main__":
    main()
