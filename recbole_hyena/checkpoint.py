"""
recbole_hyena.checkpoint
########################

The model bundle: one file holding everything needed to rebuild a trained model and recommend
with it, without the training data and without unpickling code.

A bundle is a ``torch.save`` of a dict of tensors and plain data, so that
``torch.load(path, weights_only=True)`` reads it:

- ``model``: the model's class name (found again with ``recbole_hyena.utils.get_model``);
- ``config``: the run's final config as plain data (``trainer.plain_config``);
- ``fields``: ``USER_ID_FIELD``, ``ITEM_ID_FIELD``, ``ITEM_SEQ``, ``ITEM_SEQ_LEN`` and
  ``MAX_ITEM_LIST_LENGTH``;
- ``item_tokens``: the item token of every internal id (``item_tokens[0]`` is ``[PAD]``);
- ``user_tokens`` and ``history`` (optional): every user's token and time-ordered item ids, stored
  flat (``history["items"]``) with ``history["offsets"]`` so that user ``u``'s items are
  ``items[offsets[u]:offsets[u + 1]]``, and, when the data set has a time field, the events'
  times (``history["times"]``, float64, aligned with ``items``); this lets ``recommend`` serve
  training users by token, time-aware models (HSTU, HyTRec) with the times they were trained on;
- ``state_dict`` and ``other_parameter``: the weights;
- ``sha256``: a digest of all of the above, so that a file changed after it was written (a flipped
  byte in the weights, say) is refused rather than served.

``weights_only=True`` refuses files that would run code; a truncated file fails to unzip; both,
and a wrong digest, raise ``BundleError`` with the reason.

Training runs write a bundle beside RecBole's checkpoint (``saved/<Model>-<time>.bundle.pt``).
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass, field
from logging import getLogger

import numpy as np
import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import EvaluatorType, InputType, ModelType, set_color

from recbole_hyena.data.dataset import recbole_event_order
from recbole_hyena.trainer.trainer import load_checkpoint, plain_config
from recbole_hyena.utils import get_model

BUNDLE_FORMAT = "recbole_hyena.bundle"
BUNDLE_VERSION = 1
BUNDLE_SUFFIX = ".bundle.pt"

# plain_config stores enums by name; the config keys RecBole models may compare with an enum.
_ENUM_KEYS = {"MODEL_TYPE": ModelType, "MODEL_INPUT_TYPE": InputType, "eval_type": EvaluatorType}


class BundleError(RuntimeError):
    """A bundle that cannot be trusted or used: truncated, tampered with, or not a bundle."""


class BundleConfig:
    """The bundle's plain config behind RecBole ``Config``'s interface (``config[key]``, ``None``
    for a missing key, ``key in config``, ``final_config_dict``), with ``device`` set to where the
    model is rebuilt. Rebuilding the real ``Config`` instead would re-read YAML files that may have
    changed since training and would need the data set's name to resolve; this cannot drift."""

    def __init__(self, config_dict: dict, device: torch.device | str = "cpu"):
        self.final_config_dict = dict(config_dict)
        for key, enum_class in _ENUM_KEYS.items():
            value = self.final_config_dict.get(key)
            if isinstance(value, str) and value in enum_class.__members__:
                self.final_config_dict[key] = enum_class[value]
        self.final_config_dict["device"] = torch.device(device)
        self.final_config_dict["use_gpu"] = torch.device(device).type == "cuda"

    def __getitem__(self, key: str):
        return self.final_config_dict.get(key)

    def __setitem__(self, key: str, value) -> None:
        self.final_config_dict[key] = value

    def __contains__(self, key: str) -> bool:
        return key in self.final_config_dict

    def get(self, key: str, default=None):
        return self.final_config_dict.get(key, default)

    def __repr__(self) -> str:
        return f"BundleConfig(model={self['model']!r}, dataset={self['dataset']!r})"


class DatasetStandIn:
    """What a sequential model's constructor asks of a RecBole dataset (``num``), answered from
    the bundle's token lists."""

    def __init__(self, fields: dict, item_tokens: list[str], user_tokens: list[str] | None):
        self.uid_field = fields["USER_ID_FIELD"]
        self.iid_field = fields["ITEM_ID_FIELD"]
        self.field2id_token = {self.iid_field: np.array(item_tokens)}
        if user_tokens is not None:
            self.field2id_token[self.uid_field] = np.array(user_tokens)

    def num(self, field: str) -> int:
        if field == self.uid_field and field not in self.field2id_token:
            return 1  # a bundle without users: sequence models do not use the user count
        if field not in self.field2id_token:
            raise BundleError(
                f"the model asks for the size of field [{field}], which a bundle does not store "
                f"(it knows [{self.uid_field}] and [{self.iid_field}])"
            )
        return len(self.field2id_token[field])


@dataclass
class ModelBundle:
    """A trained model as plain data: build it with ``build_model``, save it with ``save``."""

    model: str
    config: dict
    fields: dict
    item_tokens: list[str]
    state_dict: dict[str, torch.Tensor]
    other_parameter: object = None
    user_tokens: list[str] | None = None
    history: dict[str, torch.Tensor] | None = None
    _item_ids: dict[str, int] | None = field(default=None, repr=False, compare=False)
    _user_ids: dict[str, int] | None = field(default=None, repr=False, compare=False)

    @property
    def max_seq_length(self) -> int:
        return int(self.fields["MAX_ITEM_LIST_LENGTH"])

    @property
    def n_items(self) -> int:
        """Catalogue size, padding id 0 included (the model's ``n_items``)."""
        return len(self.item_tokens)

    @property
    def item_ids(self) -> dict[str, int]:
        """Item token -> internal id (built once)."""
        if self._item_ids is None:
            self._item_ids = {token: i for i, token in enumerate(self.item_tokens) if i > 0}
        return self._item_ids

    @property
    def user_ids(self) -> dict[str, int]:
        """User token -> internal id; empty for a bundle without users."""
        if self._user_ids is None:
            tokens = self.user_tokens or []
            self._user_ids = {token: u for u, token in enumerate(tokens) if u > 0}
        return self._user_ids

    def user_history(self, user_id: int) -> torch.Tensor:
        """Internal item ids of user ``user_id``, oldest first."""
        if self.history is None:
            raise BundleError("this bundle stores no user histories")
        offsets = self.history["offsets"]
        return self.history["items"][offsets[user_id] : offsets[user_id + 1]].long()

    @property
    def has_times(self) -> bool:
        """Whether the stored histories carry their events' times."""
        return self.history is not None and self.history.get("times") is not None

    @classmethod
    def from_model(
        cls,
        model,
        config,
        item_tokens: list[str],
        user_tokens: list[str] | None = None,
        history: dict[str, torch.Tensor] | None = None,
    ) -> ModelBundle:
        """The bundle of ``model`` (built from ``config``) whose item ids are the positions in
        ``item_tokens``; ``user_tokens`` and ``history`` (see ``user_histories``) are optional."""
        model = getattr(model, "module", model)  # unwrap DistributedDataParallel
        fields = {
            "USER_ID_FIELD": model.USER_ID,
            "ITEM_ID_FIELD": model.ITEM_ID,
            "ITEM_SEQ": model.ITEM_SEQ,
            "ITEM_SEQ_LEN": model.ITEM_SEQ_LEN,
            "MAX_ITEM_LIST_LENGTH": int(model.max_seq_length),
        }
        if len(item_tokens) != model.n_items:
            raise ValueError(
                f"{len(item_tokens)} item tokens for a model of {model.n_items} items (padding "
                "included)"
            )
        return cls(
            model=type(model).__name__,
            config=plain_config(config),
            fields=fields,
            item_tokens=[str(token) for token in item_tokens],
            state_dict={key: value.detach().cpu() for key, value in model.state_dict().items()},
            other_parameter=model.other_parameter(),
            user_tokens=None if user_tokens is None else [str(token) for token in user_tokens],
            history=history,
        )

    @classmethod
    def from_dataset(cls, model, config, dataset, with_history: bool = True) -> ModelBundle:
        """The bundle of ``model`` trained with ``config`` on ``dataset`` (RecBole's full dataset,
        whose item and user tokens the model's ids refer to), with every user's history unless
        ``with_history`` is false."""
        model = getattr(model, "module", model)
        item_tokens = list(dataset.field2id_token[model.ITEM_ID])
        user_tokens, history = None, None
        if with_history:
            user_tokens = list(dataset.field2id_token[model.USER_ID])
            history = user_histories(dataset, len(user_tokens))
        return cls.from_model(model, config, item_tokens, user_tokens, history)

    def to_dict(self) -> dict:
        state = {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "model": self.model,
            "config": self.config,
            "fields": self.fields,
            "item_tokens": self.item_tokens,
            "user_tokens": self.user_tokens,
            "history": self.history,
            "state_dict": self.state_dict,
            "other_parameter": self.other_parameter,
        }
        state["sha256"] = _digest(state)
        return state

    def save(self, path: str) -> str:
        """Write the bundle to ``path`` atomically (a temporary file renamed at the end)."""
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        temp_file = f"{path}.tmp-{os.getpid()}"
        try:
            torch.save(self.to_dict(), temp_file)
            os.replace(temp_file, path)
        finally:
            if os.path.exists(temp_file):
                os.remove(temp_file)
        return path

    def build_model(self, device: torch.device | str = "cpu") -> torch.nn.Module:
        """The model rebuilt from the bundle alone, weights loaded, on ``device``, in eval mode."""
        config = BundleConfig(self.config, device)
        dataset = DatasetStandIn(self.fields, self.item_tokens, self.user_tokens)
        model = get_model(self.model)(config, dataset)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as error:
            raise BundleError(
                f"the bundle's weights do not fit model {self.model}: {error}"
            ) from error
        model.load_other_parameter(self.other_parameter)
        return model.to(config["device"]).eval()


def user_histories(dataset, n_users: int) -> dict[str, torch.Tensor]:
    """Every user's item ids in time order, flat, with offsets (``n_users + 1``), and their
    times (float64) when the data set has a time field.

    The order is RecBole's (``recbole_event_order``), the one the model was trained and
    evaluated in.
    """
    inter = dataset.inter_feat
    has_time = dataset.time_field is not None and dataset.time_field in inter
    users = inter[dataset.uid_field].numpy()
    order = recbole_event_order(users, inter[dataset.time_field] if has_time else None)
    users = users[order]
    items = inter[dataset.iid_field].numpy()[order]
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=offsets[1:])
    history = {
        "items": torch.from_numpy(items.astype(np.int32)),
        "offsets": torch.from_numpy(offsets),
    }
    if has_time:
        times = inter[dataset.time_field].numpy().astype(np.float64)[order]
        history["times"] = torch.from_numpy(times)
    return history


def _digest(state: dict) -> str:
    """SHA-256 over every value but ``sha256`` itself, tensors by dtype, shape and bytes."""
    hasher = hashlib.sha256()

    def feed(value) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous().reshape(-1)
            hasher.update(f"T{tensor.dtype}{tuple(value.shape)}".encode())
            hasher.update(tensor.view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            hasher.update(b"D%d" % len(value))
            for key in sorted(value, key=str):
                feed(str(key))
                feed(value[key])
        elif isinstance(value, (list, tuple)):
            hasher.update(b"L%d" % len(value))
            for item in value:
                feed(item)
        elif isinstance(value, str):
            data = value.encode()
            hasher.update(b"S" + struct.pack("<Q", len(data)) + data)
        else:  # None, bool, int, float (and anything else weights_only let through)
            hasher.update(f"{type(value).__name__}:{value!r};".encode())

    feed({key: value for key, value in state.items() if key != "sha256"})
    return hasher.hexdigest()


_REQUIRED = {
    "model": str,
    "config": dict,
    "fields": dict,
    "item_tokens": list,
    "state_dict": dict,
}
_FIELD_KEYS = ("USER_ID_FIELD", "ITEM_ID_FIELD", "ITEM_SEQ", "ITEM_SEQ_LEN", "MAX_ITEM_LIST_LENGTH")


def load_bundle(path: str) -> ModelBundle:
    """Read and check a bundle; tensors stay on the CPU (``build_model`` moves them)."""
    try:
        state = load_checkpoint(str(path), map_location="cpu")
    except RuntimeError as error:
        raise BundleError(str(error)) from error
    if not isinstance(state, dict) or state.get("format") != BUNDLE_FORMAT:
        hint = ""
        if isinstance(state, dict) and "state_dict" in state and "config" in state:
            hint = (
                " (it looks like a training checkpoint; bundles are the *.bundle.pt files a run "
                "writes beside it)"
            )
        raise BundleError(f"{path} is not a recbole_hyena model bundle{hint}")
    if state.get("version") != BUNDLE_VERSION:
        raise BundleError(
            f"{path} is a bundle of version {state.get('version')}, this code reads version "
            f"{BUNDLE_VERSION}"
        )
    for key, kind in _REQUIRED.items():
        if not isinstance(state.get(key), kind):
            raise BundleError(f"{path}: bundle entry [{key}] is missing or not a {kind.__name__}")
    missing = [key for key in _FIELD_KEYS if key not in state["fields"]]
    if missing:
        raise BundleError(f"{path}: bundle fields lack {missing}")
    if state.get("sha256") != _digest(state):
        raise BundleError(
            f"{path}: content does not match its SHA-256 digest; the file was changed or damaged "
            "after it was written"
        )
    history = state.get("history")
    if history is not None:
        n_users = len(state.get("user_tokens") or [])
        if len(history["offsets"]) != n_users + 1:
            raise BundleError(f"{path}: history offsets do not match the {n_users} user tokens")
        times = history.get("times")
        if times is not None and (
            times.shape != history["items"].shape or not times.is_floating_point()
        ):
            raise BundleError(
                f"{path}: history times ({times.dtype}, {tuple(times.shape)}) do not match the "
                f"{len(history['items'])} history items"
            )
    return ModelBundle(
        model=state["model"],
        config=state["config"],
        fields=state["fields"],
        item_tokens=state["item_tokens"],
        state_dict=state["state_dict"],
        other_parameter=state.get("other_parameter"),
        user_tokens=state.get("user_tokens"),
        history=history,
    )


def load_model(
    path: str, device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, ModelBundle]:
    """The model of bundle ``path`` on ``device``, in eval mode, and the bundle."""
    bundle = load_bundle(path)
    return bundle.build_model(device), bundle


def save_bundle(path: str, model, config, dataset, with_history: bool = True) -> str:
    """Write the bundle of ``model`` trained with ``config`` on ``dataset`` to ``path``."""
    return ModelBundle.from_dataset(model, config, dataset, with_history).save(path)


def bundle_path(checkpoint_file: str) -> str:
    """``saved/HyenaRec-<time>.pth`` -> ``saved/HyenaRec-<time>.bundle.pt``."""
    root, extension = os.path.splitext(str(checkpoint_file))
    return (root if extension == ".pth" else str(checkpoint_file)) + BUNDLE_SUFFIX


def save_run_bundle(checkpoint_file: str, model, config, dataset) -> str | None:
    """Called by the quick start after training: the bundle beside RecBole's checkpoint, written
    by one process of a DDP group only. Returns its path (``None`` on the other processes)."""
    if not config["single_spec"] and config["local_rank"] != 0:
        return None
    logger = getLogger()
    if not isinstance(getattr(model, "module", model), SequentialRecommender):
        logger.info(f"no bundle for {type(model).__name__}: bundles serve sequential models")
        return None
    try:
        path = save_bundle(bundle_path(checkpoint_file), model, config, dataset)
    except Exception as error:  # a finished training run must not fail on its by-product
        logger.warning(f"could not write the model bundle beside {checkpoint_file}: {error!r}")
        return None
    logger.info(set_color("Saving bundle", "blue") + f": {path}")
    return path


__all__ = [
    "BundleConfig",
    "BundleError",
    "DatasetStandIn",
    "ModelBundle",
    "bundle_path",
    "load_bundle",
    "load_model",
    "save_bundle",
    "save_run_bundle",
    "user_histories",
]
