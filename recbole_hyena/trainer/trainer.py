"""
recbole_hyena.trainer.trainer
#############################

Checkpoints that load under ``torch.load(weights_only=True)``.

RecBole 1.2.1 pickles its whole ``Config`` into every checkpoint and reloads it with a bare
``torch.load``; since torch 2.6 that raises ``UnpicklingError`` when ``trainer.evaluate`` reloads
the best model. Rather than switching ``weights_only`` off (which would run arbitrary pickled code),
the mixin below stores the config as plain data and loads with ``weights_only=True``.
"""

from __future__ import annotations

import enum
import numbers
import os
from functools import cache

import torch
from recbole.utils import set_color


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


class SafeCheckpointMixin:
    """Overrides RecBole ``Trainer``'s three checkpoint methods; training is untouched."""

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
            checkpoint_file = model_file or self.saved_model_file
            checkpoint = load_checkpoint(checkpoint_file, map_location=self.device)
            self.model.load_state_dict(checkpoint["state_dict"])
            self.model.load_other_parameter(checkpoint.get("other_parameter"))
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)


@cache
def with_safe_checkpoints(trainer_class: type) -> type:
    """``trainer_class`` with safe checkpoints (one subclass per RecBole trainer, made once)."""
    if issubclass(trainer_class, SafeCheckpointMixin):
        return trainer_class
    return type(trainer_class.__name__, (SafeCheckpointMixin, trainer_class), {})
