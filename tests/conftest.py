"""Shared helpers: plugin models built from a real ``Config`` and a dataset stub (no data files)."""

from __future__ import annotations

import os

import pytest
import torch

from recbole_hyena.config import Config
from recbole_hyena.utils import get_model


class DatasetStub:
    """What a sequential model's constructor asks of a RecBole dataset."""

    def __init__(self, n_items: int):
        self.n_items = n_items

    def num(self, field: str) -> int:
        return self.n_items


def build_model(model: str = "HyenaRec", n_items: int = 50, **overrides):
    """``model`` with its property files, ``overrides`` on top, on CPU, in eval mode."""
    config_dict = {"use_gpu": False, "MAX_ITEM_LIST_LENGTH": 20, **overrides}
    config = Config(model=model, dataset="ml-100k", config_dict=config_dict)
    torch.manual_seed(0)
    return get_model(model)(config, DatasetStub(n_items)).eval()


def random_sequences(batch: int, seq_len: int, n_items: int, lengths=None, seed: int = 0):
    """Right-padded item sequences ``[B, L]`` (ids 1..n_items-1) and their lengths ``[B]``."""
    generator = torch.Generator().manual_seed(seed)
    if lengths is None:
        lengths = torch.randint(1, seq_len + 1, (batch,), generator=generator)
    items = torch.randint(1, n_items, (batch, seq_len), generator=generator)
    positions = torch.arange(seq_len).unsqueeze(0)
    return items.masked_fill(positions >= lengths.unsqueeze(1), 0), lengths


def saved_activations(run):
    """``run()``'s result and the distinct tensors autograd saves while it builds its graph
    (parameters and small tensors left out), each counted once by its storage."""
    saved, storages = [], set()

    def pack(tensor):
        storage = tensor.untyped_storage().data_ptr()
        if (
            not isinstance(tensor, torch.nn.Parameter)
            and tensor.numel() >= 256
            and storage not in storages
        ):
            storages.add(storage)
            saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = run()
    return result, saved


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path, monkeypatch):
    """RecBole writes log/, saved/ and log_tensorboard/ under the working directory."""
    monkeypatch.chdir(tmp_path)
    yield


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
