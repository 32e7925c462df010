"""
recbole_hyena.trainer.trainer
#############################

Checkpoints that load under ``torch.load(weights_only=True)``.

RecBole 1.2.1 pickles its whole ``Config`` into every checkpoint and reloads it with a bare
``torch.load``; since torch 2.6 that raises ``UnpicklingError`` when ``trainer.evaluate`` reloads
the best model. Rather than switching ``weights_only`` off (which would run arbitrary pickled code),
the mixin below stores the config as plain data and loads with ``weights_only=True``.

Resuming (``resume_checkpoint``, then ``fit``) continues the run exactly where its checkpoint left
it: besides RecBole's fields, a checkpoint holds the best valid result and the random number
generators' states (torch, CUDA, numpy, Python, and the training dataloader's shuffling
generator), restored when ``fit`` resumes. RecBole writes its checkpoint at each improvement of
the validation score, so an interrupted run resumes from its best epoch and repeats the epochs
after it; on CPU they come out bit for bit as they did the first time.
"""

from __future__ import annotations

import enum
import numbers
import os
import random
from functools import cache

import numpy as np
import torch
from recbole.trainer import AbstractTrainer
from recbole.utils import calculate_valid_score, set_color
from torch.nn.parallel import DistributedDataParallel


def plain_config(config) -> dict:
    """The final config dict with every value reduced to str/int/float/bool/None/list/dict."""

    def plain(value):
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, numbers.Number):  # numpy scalars
            return value.item()
        if isinstance(value, enum.Enum):
            return value.name
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {str(key): plain(item) for key, item in value.items()}
        return str(value)

    return {key: plain(value) for key, value in config.final_config_dict.items()}


def load_checkpoint(path: str, map_location=None) -> dict:
    """Load a checkpoint written by this package, refusing anything but tensors and plain data."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError or EOFError here
        raise RuntimeError(
            f"cannot load checkpoint {path} with weights_only=True: it is truncated, tampered "
            f"with, or a pickled RecBole checkpoint from another tool ({error})"
        ) from error


def rng_state() -> dict:
    """The global random number generators' states as tensors and plain data."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [
            name,
            torch.from_numpy(keys.astype(np.int64)),
            position,
            has_gauss,
            cached_gaussian,
        ],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state(
        (name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian)
    )
    version, internal_state, gauss_next = state["python"]
    random.setstate((version, tuple(internal_state), gauss_next))


class SafeCheckpointMixin:
    """Overrides RecBole ``Trainer``'s three checkpoint methods, and ``fit`` to restore the random
    state of a resumed run; training is untouched."""

    def fit(self, train_data, *args, **kwargs):
        # The training dataloader is needed to save (and, after a resume, restore) its shuffling
        # generator; RecBole's trainer only sees it here.
        self._train_data = train_data
        if not self.config["single_spec"]:
            # DDP: the first process of each node writes the checkpoints, and every process
            # reloads them in evaluate, under a name RecBole makes from each process's own clock
            # (a second apart, the others would look for a file that never exists): use one name.
            names = [self.saved_model_file]
            torch.distributed.broadcast_object_list(names, src=0)
            self.saved_model_file = names[0]
        pending = getattr(self, "_resumed_rng_state", None)
        if pending is not None:
            # Restored now rather than in resume_checkpoint: building the model, the dataloaders
            # or the FLOPs count between the two would draw from these generators.
            set_rng_state(pending["global"])
            generator = getattr(train_data, "generator", None)
            if pending["train_generator"] is not None and generator is not None:
                generator.set_state(pending["train_generator"])
            self._resumed_rng_state = None
        return super().fit(train_data, *args, **kwargs)

    def _valid_epoch(self, valid_data, show_progress=False):
        valid_score, valid_result = super()._valid_epoch(valid_data, show_progress=show_progress)
        self.last_valid_result = valid_result  # every metric of the latest validation
        return valid_score, valid_result

    def _checkpoint_valid_result(self):
        # RecBole's fit saves a checkpoint when an evaluation improves, and only then updates
        # best_valid_result: the new best is the evaluation just made.
        last = getattr(self, "last_valid_result", None)
        if (
            last is not None
            and calculate_valid_score(last, self.valid_metric) == self.best_valid_score
        ):
            return last
        return self.best_valid_result

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        # RecBole's version pickles the Config object; keep everything else as it is.
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        state = {
            "config": plain_config(self.config),
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": float(self.best_valid_score),
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
            # for an exact resume (see the module docstring)
            "best_valid_result": _plain_result(self._checkpoint_valid_result()),
            "rng_state": rng_state(),
            "train_generator_state": _generator_state(getattr(self, "_train_data", None)),
        }
        torch.save(state, saved_model_file)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")

    def resume_checkpoint(self, resume_file):
        resume_file = str(resume_file)
        checkpoint = load_checkpoint(resume_file, map_location=self.device)
        self.saved_model_file = resume_file
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        # RecBole does not store the best valid result: a resumed run that never improves would
        # return None for it.
        self.best_valid_result = checkpoint.get("best_valid_result")
        if "rng_state" in checkpoint:
            self._resumed_rng_state = {
                "global": checkpoint["rng_state"],
                "train_generator": checkpoint.get("train_generator_state"),
            }
        if checkpoint["config"]["model"].lower() != self.config["model"].lower():
            self.logger.warning(
                f"checkpoint {resume_file} was written by model {checkpoint['config']['model']}, "
                f"not {self.config['model']}; loading its state dict may fail"
            )
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if load_best_model and eval_data:
            if not self.config["single_spec"]:
                torch.distributed.barrier()  # until the writing process has saved the best model
            checkpoint_file = model_file or self.saved_model_file
            checkpoint = load_checkpoint(checkpoint_file, map_location=self.device)
            self.model.load_state_dict(checkpoint["state_dict"])
            self.model.load_other_parameter(checkpoint.get("other_parameter"))
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)


def _plain_result(result: dict | None) -> dict | None:
    # RecBole's metrics can be numpy scalars, which weights_only=True refuses to load.
    return None if result is None else {str(key): float(value) for key, value in result.items()}


def _generator_state(dataloader) -> torch.Tensor | None:
    generator = getattr(dataloader, "generator", None)
    return generator.get_state() if generator is not None else None


class CpuDistributedMixin(AbstractTrainer):
    """RecBole ``AbstractTrainer.__init__`` for a DDP group on CPU (see
    ``recbole_hyena.distributed``).

    ``with_safe_checkpoints`` puts this class between a RecBole trainer and ``AbstractTrainer`` in
    the method resolution order, so the trainer's ``super().__init__`` lands here. RecBole wraps
    the model in ``DistributedDataParallel(model, device_ids=[local_rank])``, which torch refuses
    for a module on CPU; on CPU the wrapper gets no device ids. GPU and single-process runs are
    RecBole's."""

    def __init__(self, config, model):
        if config["single_spec"] or config["device"].type != "cpu":
            super().__init__(config, model)
            return
        self.config = config
        # RecBole also converts BatchNorm to SyncBatchNorm, which runs on CUDA only.
        self.model = model
        self.distributed_model = DistributedDataParallel(model)


@cache
def with_safe_checkpoints(trainer_class: type) -> type:
    """``trainer_class`` with safe, exactly resumable checkpoints and DDP on CPU (one subclass per
    RecBole trainer, made once)."""
    if issubclass(trainer_class, SafeCheckpointMixin):
        return trainer_class
    return type(
        trainer_class.__name__, (SafeCheckpointMixin, trainer_class, CpuDistributedMixin), {}
    )
