"""A tiny synthetic data set in RecBole's atomic format, for tests that run whole trainings in a
second or two (ml-100k takes ten or more on a shared CPU)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

TINY_DATASET = "tiny"


def write_tiny_dataset(
    folder: str | os.PathLike,
    n_users: int = 64,
    n_items: int = 30,
    length: int = 16,
    seed: int = 0,
) -> dict:
    """Write ``<folder>/tiny/tiny.inter`` and return the config keys a run on it needs, with tiny
    model settings (CPU, one epoch, no progress bars).

    Every user has ``length`` interactions walking the item cycle ``1 -> 2 -> ... -> n_items -> 1``
    from a random start, with one step in five jumping to a random item: a sequence pattern a
    model can learn in a few epochs."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(1, n_users + 1):
        item = int(rng.integers(1, n_items + 1))
        for step in range(length):
            rows.append(f"{user}\t{item}\t{step + 1}")
            item = item % n_items + 1 if rng.random() > 0.2 else int(rng.integers(1, n_items + 1))
    data_folder = os.path.join(folder, TINY_DATASET)
    os.makedirs(data_folder, exist_ok=True)
    with open(os.path.join(data_folder, f"{TINY_DATASET}.inter"), "w") as file:
        file.write("user_id:token\titem_id:token\ttimestamp:float\n")
        file.write("\n".join(rows) + "\n")
    return {
        "data_path": str(folder),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "use_gpu": False,
        "gpu_id": "",
        "MAX_ITEM_LIST_LENGTH": 10,
        "hidden_size": 16,
        "inner_size": 32,
        "filter_order": 8,
        "epochs": 1,
        "train_batch_size": 256,
        "eval_batch_size": 256,
        "show_progress": False,
        "state": "ERROR",
    }


@pytest.fixture
def single_thread(monkeypatch):
    """One torch thread, here and in spawned processes: on a small, shared CPU two threads per
    process spin against each other and make these tiny runs several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(threads)
