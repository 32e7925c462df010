"""
recbole_hyena.distributed
#########################

RecBole's multi-process (DDP) path on machines without a GPU.

RecBole 1.2.1 starts every process group with NCCL on ``cuda:<local_rank>`` and asserts one GPU
id per process (``Config._init_device``); NCCL has no CPU support, so ``nproc > 1`` fails on CPU.
``DistributedDeviceMixin`` keeps RecBole's behaviour whenever a GPU is used and otherwise starts
the same group with gloo on CPU. The trainer side (``DistributedDataParallel`` without device ids
for a CPU module) is ``recbole_hyena.trainer.trainer.CpuDistributedMixin``.

What a DDP run computes is RecBole's, whatever the backend:

- training: each process gets ``train_batch_size / world_size`` samples per step from a
  ``DistributedSampler`` and DDP averages the gradients, so a step sees the same global batch
  size as a single-process step (the batches hold other samples: the sampler shuffles by epoch);
- evaluation: the ``DistributedSampler`` splits the users between the processes (padding the last
  ones by repeating a few users when the count does not divide), each process computes its
  metrics, and ``Trainer._map_reduce`` gathers them into one average over all processes.
"""

from __future__ import annotations

import os

import torch


class DistributedDeviceMixin:
    """Overrides RecBole ``Config._init_device``: a process group without a GPU uses gloo on CPU.

    A run uses a GPU when ``use_gpu`` is on, ``gpu_id`` is not empty and CUDA is available; then,
    and for every single-process run, RecBole's method runs unchanged."""

    def _init_device(self):
        config = self.final_config_dict
        gpu_id = config["gpu_id"]
        gpu_id = ",".join(map(str, gpu_id)) if isinstance(gpu_id, tuple) else str(gpu_id)
        uses_gpu = config["use_gpu"] and len(gpu_id) > 0 and torch.cuda.is_available()
        if "local_rank" not in config or uses_gpu:
            super()._init_device()
            return
        config["gpu_id"] = gpu_id
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id  # as RecBole does
        torch.distributed.init_process_group(
            backend="gloo",
            rank=config["local_rank"] + config["offset"],
            world_size=config["world_size"],
            init_method=f"tcp://{config['ip']}:{config['port']}",
        )
        config["device"] = torch.device("cpu")
        config["single_spec"] = False
        if config["local_rank"] != 0:  # RecBole: only the first process of a node logs
            config["state"] = "error"
            config["show_progress"] = False
            config["verbose"] = False
