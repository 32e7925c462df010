"""Activation memory of a training step, counted without a GPU.

For every (model, length L, dtype) this builds the model as ``benchmarks/speed.py`` does (a
RecBole ``Config`` from the property files and a dataset stub), runs ``calculate_loss`` on a batch
of full-length sequences (CE at the last position over all items) in training mode, and counts the
bytes of the tensors autograd keeps for the backward (``torch.autograd.graph.saved_tensors_hooks``;
each storage once, parameters left out). That is the memory a training step holds from the end of
its forward to the start of its backward, per token of the batch.

It is not a peak: the backward's temporaries (the FFTs' buffers, attention's workspace) come on
top, and on a GPU so does the allocator's caching. But it is the part that grows with B x L and
that precision and recomputation change, so it compares models and code versions on a machine
without a GPU. ``--as-gpu`` counts what the CUDA code path keeps where it differs from CPU's (the
Hyena short path runs as one windowed product that keeps its inputs on a GPU, and as a product
then shifted taps that keeps the product on CPU); bf16
runs under CPU autocast, which follows CUDA's rules for the operations these models use.

Outputs under ``--out``: ``activation_memory_<tag>.csv`` (settings as ``#`` lines on top),
``.md`` and ``.png`` (bytes per token against L).

Example::

    python benchmarks/activation_memory.py --models HyenaRec FlashSASRec --lengths 200 1000 \\
        --dtypes bf16 --as-gpu --tag bf16_as_gpu
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402  (this folder's benchmark: model building and machine description)

COLUMNS = ["model", "dtype", "seq_len", "batch", "saved_mib", "saved_bytes_per_token", "note"]
RESULT_PREFIX = "RESULT "


def saved_bytes(model, batch, dtype) -> int:
    """Bytes of the distinct non-parameter tensors autograd saves in ``calculate_loss``."""
    import torch

    storages: dict[int, int] = {}

    def pack(tensor):
        if not isinstance(tensor, torch.nn.Parameter):
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            model.calculate_loss(batch)
    return sum(storages.values())


def measure_in_child(label: str, seq_len: int, dtype_name: str, args: argparse.Namespace) -> dict:
    """``measure`` in a fresh process, as ``speed.py`` does: one model's memory (and a crash,
    e.g. the OOM killer's) cannot leak into the next row."""
    row = {"model": label, "dtype": dtype_name, "seq_len": seq_len, "batch": args.batch}
    command = [sys.executable, __file__, "--child", json.dumps([label, seq_len, dtype_name])]
    command += [
        f"--{key.replace('_', '-')}={value}" for key, value in _model_settings(args).items()
    ]
    if args.as_gpu:
        command.append("--as-gpu")
    done = subprocess.run(command, capture_output=True, text=True, env=speed.checkout_env())
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    error = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
    return {**row, "note": f"failed (exit {done.returncode}): {error}"[:200]}


def _model_settings(args: argparse.Namespace) -> dict:
    return {key: getattr(args, key) for key in ("batch", "hidden", "layers", "heads", "n_items")}


def measure(label: str, seq_len: int, dtype_name: str, args: argparse.Namespace) -> dict:
    import torch

    if args.as_gpu:
        from recbole_hyena.model import layers

        layers._factors_short_conv = lambda inputs: False
    torch.set_num_threads(min(2, torch.get_num_threads()))

    spec = {
        "model": label,
        "seq_len": seq_len,
        "hidden": args.hidden,
        "layers": args.layers,
        "heads": args.heads,
        "n_items": args.n_items,
        "device": "cpu",
        "overrides": {},
        "seed": 0,
    }
    row = {"model": label, "dtype": dtype_name, "seq_len": seq_len, "batch": args.batch}
    try:
        model = speed._build_model(spec)
    except Exception as error:  # a model that cannot be built is a row too
        return {**row, "note": f"build: {type(error).__name__}: {error}"[:200]}
    torch.autograd.set_detect_anomaly(False)  # RecBole's sine.py switches it on at import
    model.train()
    generator = torch.Generator().manual_seed(0)
    batch = speed.synthetic_batch(model, args.batch, seq_len, args.n_items, generator)
    dtype = {"fp32": None, "bf16": torch.bfloat16}[dtype_name]
    total = saved_bytes(model, batch, dtype)
    return {
        **row,
        "saved_mib": round(total / 2**20, 1),
        "saved_bytes_per_token": round(total / (args.batch * seq_len)),
        "note": "",
    }


def write_reports(rows: list[dict], header: dict, out: Path, tag: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"activation_memory_{tag}.csv").open("w", newline="") as file:
        for key, value in header.items():
            file.write(f"# {key}: {value}\n")
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["# Activation memory of a training step (saved for the backward)", ""]
    lines += [f"- {key}: {value}" for key, value in header.items()]
    lines += [
        "",
        "| model | dtype | L | saved MiB | bytes / token | note |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['dtype']} | {row['seq_len']:,} | {row.get('saved_mib', '–')} "
            f"| {row.get('saved_bytes_per_token', '–')} | {row.get('note', '')} |"
        )
    (out / f"activation_memory_{tag}.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4))
    for model, dtype in dict.fromkeys((row["model"], row["dtype"]) for row in rows):
        points = [
            (row["seq_len"], row["saved_bytes_per_token"])
            for row in rows
            if (row["model"], row["dtype"]) == (model, dtype) and row.get("saved_bytes_per_token")
        ]
        if points:
            axis.plot(*zip(*points), marker="o", label=f"{model} {dtype}")
    axis.set_xscale("log")
    axis.set_xlabel("sequence length L")
    axis.set_ylabel("bytes saved for the backward per token")
    axis.set_ylim(bottom=0)
    axis.set_title(f"batch {header['batch']}, hidden {header['hidden']}; {header['code_path']}")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out / f"activation_memory_{tag}.png", dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["HyenaRec", "FlashSASRec"])
    parser.add_argument("--lengths", nargs="+", type=int, default=[200, 1000, 4000])
    parser.add_argument("--dtypes", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--n-items", type=int, default=3417, help="catalogue size (ML-1M: 3,417)")
    parser.add_argument(
        "--as-gpu", action="store_true", help="count what the CUDA code path keeps (see above)"
    )
    parser.add_argument("--out", type=Path, default=speed.REPO_ROOT / "benchmarks" / "results")
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one [model, L, dtype], as JSON
    args = parser.parse_args(argv)
    if args.child:
        print(RESULT_PREFIX + json.dumps(measure(*json.loads(args.child), args)), flush=True)
        return []

    header = {
        **speed.describe_machine("cpu"),
        "batch": args.batch,
        "hidden": args.hidden,
        "layers": args.layers,
        "heads": args.heads,
        "n_items": args.n_items,
        "code_path": "CUDA's (--as-gpu)" if args.as_gpu else "CPU's",
        "counted": "tensors saved for the backward of calculate_loss (CE at the last position), "
        "each storage once, parameters excluded; the backward's temporaries are not included",
    }
    rows = []
    for dtype_name in args.dtypes:
        for label in args.models:
            for seq_len in args.lengths:
                row = measure_in_child(label, seq_len, dtype_name, args)
                rows.append(row)
                print(
                    f"{label:>12} {dtype_name} L={seq_len:<6} "
                    f"{row.get('saved_mib', '–'):>9} MiB  {row.get('saved_bytes_per_token', '–'):>6} "
                    f"B/token {row.get('note', '')}",
                    flush=True,
                )
    write_reports(rows, header, args.out, args.tag)
    print(f"wrote activation_memory_{args.tag}.csv, .md and .png under {args.out}")
    return rows


if __name__ == "__main__":
    main()
