"""
recbole_hyena.data.synthetic
############################

Synthetic long user histories in RecBole's atomic format, for tests and benchmarks:
``python -m recbole_hyena.data.synthetic --users 1000 --events 1000 --items 3416 --out dataset``.

The planted pattern, which a sequence model can learn and a popularity model cannot:

- slow drift: each user's interest is a point on a ring of items that moves by a small random
  step per event; items are drawn near it, so the recent past predicts the neighbourhood;
- short bursts: with probability ``burst_prob`` per event a burst starts, and for its next
  ``burst_len`` events each item is the previous item's successor on the ring (``i -> i + 1``),
  so inside a burst the next item is exactly predictable from the last one.

Users are written in chunks, so memory stays bounded by ``chunk_users * events``.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import pandas as pd

HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"


def user_histories(
    n_users: int,
    n_events: int,
    n_items: int,
    rng: np.random.Generator,
    drift: float = 0.01,
    spread: float = 0.01,
    burst_prob: float = 0.05,
    burst_len: int = 5,
) -> np.ndarray:
    """Item ids ``[n_users, n_events]`` in 1..n_items following the drift-and-burst pattern."""
    centre = rng.random((n_users, 1)) + np.cumsum(rng.normal(0, drift, (n_users, n_events)), axis=1)
    sampled = centre + rng.normal(0, spread, (n_users, n_events))
    items = np.floor(np.mod(sampled, 1.0) * n_items).astype(np.int64)  # 0-based on the ring

    positions = np.arange(n_events)
    starts = rng.random((n_users, n_events)) < burst_prob
    last_start = np.maximum.accumulate(np.where(starts, positions, -burst_len - 1), axis=1)
    offset = positions - last_start
    in_burst = (offset >= 1) & (offset <= burst_len)
    burst_origin = np.take_along_axis(items, np.maximum(last_start, 0), axis=1)
    items = np.where(in_burst, np.mod(burst_origin + offset, n_items), items)
    return items + 1


def write_synthetic_dataset(
    out_dir: str,
    name: str,
    n_users: int,
    n_events: int,
    n_items: int,
    seed: int = 2020,
    chunk_users: int = 1000,
    **pattern,
) -> str:
    """Write ``<out_dir>/<name>/<name>.inter`` (timestamps are event positions); returns its path."""
    if min(n_users, n_events, n_items) < 1:
        raise ValueError("users, events and items must all be >= 1")
    folder = os.path.join(out_dir, name)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{name}.inter")
    partial = path + ".partial"
    rng = np.random.default_rng(seed)
    with open(partial, "w") as file:
        file.write(HEADER)
        for first_user in range(0, n_users, chunk_users):
            users = np.arange(first_user, min(n_users, first_user + chunk_users))
            items = user_histories(len(users), n_events, n_items, rng, **pattern)
            frame = pd.DataFrame(
                {
                    "user": np.repeat(users + 1, n_events),
                    "item": items.reshape(-1),
                    "time": np.tile(np.arange(n_events), len(users)),
                }
            )
            frame.to_csv(file, sep="\t", header=False, index=False)
    os.replace(partial, path)  # no half-written file under the final name
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--events", type=int, default=1000, help="events per user")
    parser.add_argument("--items", type=int, default=3416)
    parser.add_argument("--out", default="dataset", help="folder that receives <name>/<name>.inter")
    parser.add_argument(
        "--name", default=None, help="data set name (default synth-<users>x<events>)"
    )
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--burst_prob", type=float, default=0.05)
    parser.add_argument("--burst_len", type=int, default=5)
    args = parser.parse_args()
    name = args.name or f"synth-{args.users}x{args.events}"
    path = write_synthetic_dataset(
        args.out,
        name,
        args.users,
        args.events,
        args.items,
        seed=args.seed,
        burst_prob=args.burst_prob,
        burst_len=args.burst_len,
    )
    print(f"wrote {args.users * args.events} interactions to {path}")


if __name__ == "__main__":
    main()
