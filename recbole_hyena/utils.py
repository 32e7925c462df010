"""
recbole_hyena.utils
###################

Model and trainer lookup: the plugin first, then RecBole.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils import get_model as recbole_get_model
from recbole.utils import get_trainer as recbole_get_trainer

from recbole_hyena.trainer import with_safe_checkpoints
from recbole_hyena.trainer.long_users import with_long_user_evaluation

_PACKAGE_DIR = Path(__file__).resolve().parent


def properties_dir() -> Path:
    """The plugin's YAML folder: inside the package when installed from a wheel, at the top of
    the repository in a checkout."""
    for candidate in (_PACKAGE_DIR / "properties", _PACKAGE_DIR.parent / "properties"):
        if (candidate / "overall.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"recbole_hyena's properties/ folder (with overall.yaml) is missing beside {_PACKAGE_DIR}"
    )


def get_model(model_name: str) -> type[AbstractRecommender]:
    """The model class called ``model_name``: a plugin model if there is one, else RecBole's."""
    plugin_models = importlib.import_module("recbole_hyena.model")
    model_class = getattr(plugin_models, model_name, None)
    if isinstance(model_class, type) and issubclass(model_class, AbstractRecommender):
        return model_class
    try:
        return recbole_get_model(model_name)
    except (ValueError, ImportError) as error:
        # RecBole's lookup imports its exlib models on a miss, which fails without lightgbm.
        raise ValueError(
            f"model [{model_name}] is neither a recbole_hyena model ({', '.join(plugin_models.__all__)}) "
            f"nor a RecBole model ({error})"
        ) from None


def get_trainer(model_type, model_name: str) -> type:
    """RecBole's trainer for the model (or the plugin's ``<model_name>Trainer``), with
    checkpoints that reload under ``torch.load(weights_only=True)`` and the long-user metrics."""
    plugin_trainers = importlib.import_module("recbole_hyena.trainer")
    trainer_class = getattr(plugin_trainers, model_name + "Trainer", None)
    if trainer_class is None:
        trainer_class = recbole_get_trainer(model_type, model_name)
    return with_safe_checkpoints(with_long_user_evaluation(trainer_class))
