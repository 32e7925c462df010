"""RecBole's multi-process (DDP) path with a plugin model: 2 processes on CPU (gloo).

With the same global batch, no dropout and no shuffling, a DDP step averages the gradients of two
half batches, which is the single-process gradient of the whole batch; the users are split
between the processes for evaluation and the metrics gathered. So a 2-process run trains the same
model and reports the same metrics as a single-process run, up to float rounding.
"""

from __future__ import annotations

import glob
import socket

import pytest
import torch
import torch.multiprocessing as mp
from tiny_data import TINY_DATASET, single_thread, write_tiny_dataset  # noqa: F401 (fixture)

from recbole_hyena import quick_start
from recbole_hyena.distributed import DistributedDeviceMixin
from recbole_hyena.trainer import load_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return str(sock.getsockname()[1])


def spawned_run(rank: int, model: str, dataset: str, config_dict: dict, queue) -> None:
    """One DDP process, as ``quick_start.run`` spawns it, with gloo on CPU.

    Until ``recbole_hyena.config.Config`` includes ``DistributedDeviceMixin``, the mixin is added
    here (in the spawned process, which imports the package afresh)."""
    if not issubclass(quick_start.Config, DistributedDeviceMixin):
        quick_start.Config = type("Config", (DistributedDeviceMixin, quick_start.Config), {})
    kwargs = {"config_dict": dict(config_dict), "queue": queue}
    quick_start.run_recbole_hyenas(rank, model, dataset, None, kwargs)


def run_ddp(model: str, dataset: str, config_dict: dict, nproc: int = 2) -> dict:
    config_dict = {
        **config_dict,
        "world_size": nproc,
        "nproc": nproc,
        "ip": "localhost",
        "port": free_port(),
        "offset": 0,
    }
    if issubclass(quick_start.Config, DistributedDeviceMixin):
        return quick_start.run(
            model,
            dataset,
            config_dict=config_dict,
            nproc=nproc,
            port=config_dict["port"],
        )
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(spawned_run, args=(model, dataset, config_dict, queue), nprocs=nproc, join=True)
    return queue.get()


def checkpoint_state(folder) -> dict:
    (path,) = glob.glob(f"{folder}/*.pth")
    return load_checkpoint(path)["state_dict"]


def test_two_processes_train_and_evaluate_like_one(tmp_path):
    # 64 users x 13 prefix samples = 832 samples, one batch per epoch: each process gets 416.
    config_dict = {
        **write_tiny_dataset(tmp_path / "data"),
        "train_mode": "prefix",
        "history_mask": False,
        "hidden_dropout_prob": 0.0,
        "shuffle": False,
        "epochs": 2,
        "train_batch_size": 1024,
        "eval_batch_size": 1024,
        "state": "INFO",
    }
    single = quick_start.run_recbole_hyena(
        "HyenaRec",
        TINY_DATASET,
        config_dict={**config_dict, "checkpoint_dir": str(tmp_path / "single")},
    )
    ddp = run_ddp(
        "HyenaRec", TINY_DATASET, {**config_dict, "checkpoint_dir": str(tmp_path / "ddp")}
    )

    # Every metric, the long_ ones (over the top 10% of all processes' users) included; they are
    # rounded to 4 decimals per process before being averaged.
    for phase in ("best_valid_result", "test_result"):
        assert ddp[phase].keys() == single[phase].keys()
        metrics = list(single[phase])
        assert any(metric.startswith("long_") for metric in metrics)
        for metric in metrics:
            assert ddp[phase][metric] == pytest.approx(single[phase][metric], abs=1.01e-4), (
                phase,
                metric,
            )
    single_state, ddp_state = (
        checkpoint_state(tmp_path / "single"),
        checkpoint_state(tmp_path / "ddp"),
    )
    assert single_state.keys() == ddp_state.keys()
    for name, tensor in single_state.items():
        torch.testing.assert_close(ddp_state[name], tensor, atol=1e-5, rtol=1e-4, msg=name)
