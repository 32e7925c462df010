"""
recbole_hyena.data.utils
########################

``create_dataset`` and ``data_preparation``: RecBole's, with the plugin's long-history data path
for sequential models, the ``train_mode`` and ``history_mask`` keys checked, and a clear error
for missing data.
"""

from __future__ import annotations

import importlib
import os
import socket
from logging import getLogger

from recbole.data import create_dataset as recbole_create_dataset
from recbole.data import data_preparation as recbole_data_preparation
from recbole.data.utils import create_samplers, get_dataloader
from recbole.utils import ModelType, set_color

from recbole_hyena.data.dataloader import HistoryMaskedFullSortEvalDataLoader
from recbole_hyena.data.dataset import TRAIN_MODES, LongHistoryDataset
from recbole_hyena.model.abstract_recommender import AllPositionMixin

# A download attempt on a machine without internet must fail, not hang.
_DOWNLOAD_TIMEOUT_S = 60


# RecBole models whose training reads the augmented ``dataset.inter_feat`` (one padded history
# per interaction) that the plugin's data path does not store.
_MODELS_NEEDING_AUGMENTED_ROWS = frozenset({"FEARec"})


def _inter_files(config) -> list[str]:
    """The interaction files RecBole reads: ``<dataset>.inter``, or one per
    ``benchmark_filename`` part (``<dataset>.train.inter``, ...)."""
    parts = config["benchmark_filename"]
    suffixes = [".inter"] if parts is None else [f".{part}.inter" for part in parts]
    return [os.path.join(config["data_path"], config["dataset"] + suffix) for suffix in suffixes]


def _missing_data_error(config, reason: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"dataset [{config['dataset']}] not found: looked for {', '.join(_inter_files(config))} "
        f"({reason}). Put the atomic files there, point --data_path at the folder that holds "
        f"{config['dataset']}/, or see dataset/README.md"
    )


def uses_long_history_dataset(config) -> bool:
    """The plugin's data path serves sequential models that RecBole gives no dataset class of their
    own (DIN, KSR, ...) and that do not read RecBole's augmented rows (FEARec), with the ``LS``
    split of one ``.inter`` file and full-ranking evaluation, unless ``long_history_dataset`` is
    off. Anything else takes RecBole's own path."""
    if config["MODEL_TYPE"] != ModelType.SEQUENTIAL or not config["long_history_dataset"]:
        return False
    recbole_datasets = importlib.import_module("recbole.data.dataset")
    if hasattr(recbole_datasets, config["model"] + "Dataset"):
        return False
    if config["model"] in _MODELS_NEEDING_AUGMENTED_ROWS or config["benchmark_filename"]:
        return False
    eval_args = config["eval_args"]
    # sampled evaluation (uni100, pop100) scores RecBole's per-row samples: its loader, its path
    full_ranking = all(mode == "full" for mode in eval_args["mode"].values())
    return full_ranking and "LS" in (eval_args["split"] or {})


_PLUGIN_PATH_NEEDS = (
    "a sequential model, eval_args.split {'LS': ...}, eval_args.mode full, one .inter file "
    "(no benchmark_filename) and long_history_dataset: True"
)


def check_data_config(config) -> None:
    """Clear errors for bad values of the plugin's data keys, naming key, value and model."""
    train_mode = config["train_mode"]
    if train_mode not in TRAIN_MODES:
        raise ValueError(f"train_mode [{train_mode}] must be one of {list(TRAIN_MODES)}")
    for key in ("history_mask", "long_history_dataset"):
        if not isinstance(config[key], bool):
            raise ValueError(f"{key} [{config[key]}] must be True or False")
    stride = config["train_window_stride"]
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 0:
        raise ValueError(
            f"train_window_stride [{stride}] must be an integer >= 0 (0: MAX_ITEM_LIST_LENGTH)"
        )
    if stride > config["MAX_ITEM_LIST_LENGTH"]:
        raise ValueError(
            f"train_window_stride [{stride}] exceeds MAX_ITEM_LIST_LENGTH "
            f"[{config['MAX_ITEM_LIST_LENGTH']}]: windows would skip training targets"
        )
    long_history = uses_long_history_dataset(config)
    if train_mode == "autoregressive":
        from recbole_hyena.utils import get_model

        if not issubclass(get_model(config["model"]), AllPositionMixin):
            raise ValueError(
                f"model [{config['model']}] cannot train at every position (it is not causal or "
                "has no per-position output); set train_mode: prefix"
            )
        if not long_history:
            raise ValueError(
                f"train_mode [autoregressive] needs the plugin's sequential data path: {_PLUGIN_PATH_NEEDS}"
            )
        if config["loss_type"] != "CE":
            raise ValueError(
                f"train_mode [autoregressive] needs loss_type CE, got [{config['loss_type']}]"
            )
    if config["history_mask"] and not long_history:
        raise ValueError(
            f"history_mask [True] needs the plugin's sequential data path: {_PLUGIN_PATH_NEEDS}; "
            "or set history_mask: False"
        )


def create_dataset(config):
    """The data set for ``config``: ``LongHistoryDataset`` for sequential models (see
    ``uses_long_history_dataset``), RecBole's otherwise. A data set that is missing and cannot be
    downloaded raises ``FileNotFoundError`` naming the path it looked in."""
    check_data_config(config)
    data_path = config["data_path"]
    if os.path.isdir(data_path) and not all(map(os.path.isfile, _inter_files(config))):
        raise _missing_data_error(config, f"the folder {data_path} lacks one of them")
    if not os.path.isdir(data_path):
        # RecBole downloads known data sets into a missing folder; bound the wait offline.
        previous_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
        try:
            return _create_dataset(config)
        except Exception as error:
            raise _missing_data_error(config, f"download failed: {error}") from error
        finally:
            socket.setdefaulttimeout(previous_timeout)
    return _create_dataset(config)


def _create_dataset(config):
    if uses_long_history_dataset(config):
        return LongHistoryDataset(config)
    return recbole_create_dataset(config)


def data_preparation(config, dataset):
    """Split ``dataset`` and build the train/valid/test dataloaders (RecBole's
    ``data_preparation``; the plugin's evaluation loader when the data path is the plugin's)."""
    if not isinstance(dataset, LongHistoryDataset):
        return recbole_data_preparation(config, dataset)
    built_datasets = dataset.build()
    train_dataset, valid_dataset, test_dataset = built_datasets
    train_sampler, valid_sampler, test_sampler = create_samplers(config, dataset, built_datasets)
    train_data = get_dataloader(config, "train")(
        config, train_dataset, train_sampler, shuffle=config["shuffle"]
    )
    loaders = []
    for phase, phase_dataset, sampler in (
        ("valid", valid_dataset, valid_sampler),
        ("test", test_dataset, test_sampler),
    ):
        loader_class = get_dataloader(config, phase)
        if config["eval_args"]["mode"][phase] == "full":
            loader_class = HistoryMaskedFullSortEvalDataLoader
        loaders.append(loader_class(config, phase_dataset, sampler, shuffle=False))
    logger = getLogger()
    logger.info(
        set_color("[Training]: ", "pink")
        + set_color("train_mode", "cyan")
        + f" = [{config['train_mode']}], {len(train_dataset)} samples, "
        + set_color("train_batch_size", "cyan")
        + f" = [{config['train_batch_size']}]"
    )
    logger.info(
        set_color("[Evaluation]: ", "pink")
        + set_color("eval_batch_size", "cyan")
        + f" = [{config['eval_batch_size']}], "
        + set_color("history_mask", "cyan")
        + f" = [{config['history_mask']}], "
        + set_color("eval_args", "cyan")
        + f": [{config['eval_args']}]"
    )
    return train_data, loaders[0], loaders[1]
