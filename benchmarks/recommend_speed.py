"""How long ``recbole_hyena.recommend`` takes to rank the whole catalogue for every user.

Builds (or reuses) a HyenaRec bundle on ML-1M at the paper's settings (L=200, hidden 64, two
blocks; the weights are the untrained initialisation unless ``--bundle`` names a trained one:
ranking time does not depend on the weight values), then times top-10 for all users with and
without history masking. Prints a table and writes CSV + PNG with the machine, versions and
settings.

    cd /tmp && python /work/main/benchmarks/recommend_speed.py --data_path /work/shared/datasets
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time

import torch

from recbole_hyena.checkpoint import save_bundle
from recbole_hyena.config import Config
from recbole_hyena.data import create_dataset, data_preparation
from recbole_hyena.recommend import Recommender
from recbole_hyena.utils import get_model

HERE = os.path.dirname(os.path.abspath(__file__))


def build_bundle(data_path: str, dataset_name: str, path: str) -> str:
    """An untrained HyenaRec's bundle, with every user's history, written to ``path``."""
    config = Config(
        model="HyenaRec",
        dataset=dataset_name,
        config_dict={
            "data_path": data_path,
            "use_gpu": False,
            "save_dataset": False,
            "save_dataloaders": False,
            # The shared copy is already 5-core filtered; skip the filter, it changes nothing.
            "user_inter_num_interval": None,
            "item_inter_num_interval": None,
        },
    )
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)  # builds the full dataset's table
    torch.manual_seed(0)
    model = get_model("HyenaRec")(config, train_data._dataset)
    return save_bundle(path, model, config, dataset)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as file:
            cpu = next(line.split(":", 1)[1].strip() for line in file if "model name" in line)
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{cpu}, {os.cpu_count()} CPUs ({usable} usable by this process), "
        f"load average {load:.1f} at start; "
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", default="/work/shared/datasets")
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--bundle", default="/tmp/recommend_speed/HyenaRec-ml-1m.bundle.pt")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument(
        "--full_padding", action="store_true", help="pad to MAX_ITEM_LIST_LENGTH (no trimming)"
    )
    parser.add_argument("-k", "--topk", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "recommend_speed"))
    args = parser.parse_args()

    if not os.path.isfile(args.bundle):
        start = time.perf_counter()
        build_bundle(args.data_path, args.dataset, args.bundle)
        print(f"bundle built in {time.perf_counter() - start:.1f} s: {args.bundle}")

    start = time.perf_counter()
    recommender = Recommender.from_file(
        args.bundle, args.device, args.batch_size, False if args.full_padding else None
    )
    load_s = time.perf_counter() - start
    users = recommender.users
    recommender.recommend_users(users[: args.batch_size], args.topk)  # warm-up (allocations)

    rows = []
    for exclude_history in (True, False):
        seconds, cpu_seconds = [], []
        for _ in range(args.repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            results = recommender.recommend_users(users, args.topk, exclude_history)
            seconds.append(time.perf_counter() - start)
            # CPU time of all threads: on a shared machine it shows how much of the wall time
            # the process actually ran (at best wall = cpu / threads on an idle machine).
            cpu_seconds.append(time.process_time() - cpu_start)
        assert len(results) == len(users) and all(len(r.items) == args.topk for r in results)
        rows.append(
            {
                "device": str(recommender.device),
                "users": len(users),
                "items": recommender.bundle.n_items - 1,
                "max_seq_length": recommender.max_seq_length,
                "k": args.topk,
                "batch_size": args.batch_size,
                "exclude_history": exclude_history,
                "min_s": round(min(seconds), 3),
                "median_s": round(statistics.median(seconds), 3),
                "max_s": round(max(seconds), 3),
                "cpu_s_median": round(statistics.median(cpu_seconds), 3),
                "trim_padding": recommender.trim_padding,
                "bundle_load_s": round(load_s, 3),
            }
        )

    settings = machine()
    print(f"# {settings}")
    print(
        f"# bundle: {args.bundle} (model {recommender.bundle.model}, {args.repeats} repeats, "
        f"batch {args.batch_size}, trim_padding {recommender.trim_padding})"
    )
    print(f"{'history':>10} {'users':>6} {'min s':>7} {'median s':>9} {'max s':>7} {'cpu s':>7}")
    for row in rows:
        masked = "excluded" if row["exclude_history"] else "kept"
        print(
            f"{masked:>10} {row['users']:>6} {row['min_s']:>7.2f} {row['median_s']:>9.2f} "
            f"{row['max_s']:>7.2f} {row['cpu_s_median']:>7.2f}"
        )

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".csv", "w", newline="") as file:
        file.write(f"# {settings}\n# command: {' '.join(sys.argv)}\n")
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.2))
    labels = ["history excluded", "history kept"]
    axis.bar(labels, [row["median_s"] for row in rows], color=["tab:blue", "tab:orange"])
    axis.axhline(10, color="grey", linestyle="--", label="target: 10 s")
    axis.set_ylabel("seconds (median)")
    axis.set_title(
        f"top-{args.topk} for {rows[0]['users']:,} users, L={rows[0]['max_seq_length']}, "
        f"{rows[0]['device']}",
        fontsize=10,
    )
    axis.legend()
    figure.text(0.01, 0.01, settings, fontsize=6, wrap=True)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    figure.savefig(args.out + ".png", dpi=120)
    print(f"written: {args.out}.csv, {args.out}.png")


if __name__ == "__main__":
    main()
