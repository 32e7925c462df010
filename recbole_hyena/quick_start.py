"""
recbole_hyena.quick_start
#########################

``run_recbole_hyena`` and ``run``: RecBole's quick start with the plugin's Config, models, data
path and trainers. Signatures and return values are RecBole's, multi-process path included.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from logging import getLogger

import torch.distributed as dist
from recbole.data.transform import construct_transform
from recbole.utils import get_environment, get_flops, init_logger, init_seed, set_color

from recbole_hyena.checkpoint import save_run_bundle
from recbole_hyena.config import Config
from recbole_hyena.data import create_dataset, data_preparation
from recbole_hyena.utils import get_model, get_trainer


def run(
    model: str,
    dataset: str,
    config_file_list: list[str] | None = None,
    config_dict: dict | None = None,
    saved: bool = True,
    nproc: int = 1,
    world_size: int = -1,
    ip: str = "localhost",
    port: str = "5678",
    group_offset: int = 0,
) -> dict | None:
    """One process, or ``nproc`` processes of a DDP group (RecBole's ``run``)."""
    if nproc == 1 and world_size <= 0:
        return run_recbole_hyena(model, dataset, config_file_list, config_dict, saved)
    import torch.multiprocessing as mp

    if world_size == -1:
        world_size = nproc
    queue = mp.get_context("spawn").SimpleQueue()
    config_dict = dict(config_dict or {})
    config_dict.update(
        {"world_size": world_size, "ip": ip, "port": port, "nproc": nproc, "offset": group_offset}
    )
    kwargs = {"config_dict": config_dict, "queue": queue}
    mp.spawn(
        run_recbole_hyenas,
        args=(model, dataset, config_file_list, kwargs),
        nprocs=nproc,
        join=True,
    )
    return None if queue.empty() else queue.get()


def run_recbole_hyena(
    model: str | None = None,
    dataset: str | None = None,
    config_file_list: list[str] | None = None,
    config_dict: dict | None = None,
    saved: bool = True,
    queue=None,
) -> dict:
    r"""Train, validate with early stopping and test ``model`` on ``dataset``.

    Returns RecBole's dict: ``best_valid_score``, ``valid_score_bigger``, ``best_valid_result``,
    ``test_result``.
    """
    config = Config(
        model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict
    )
    # DDP ranks start together and RecBole's ensure_dir (exists, then makedirs) races between them
    for directory in (os.path.join("./log", config["model"]), config["checkpoint_dir"]):
        os.makedirs(directory, exist_ok=True)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)

    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(model)
    transform = construct_transform(config)
    # a training sample: the plugin data set's full table holds raw rows, not sequences
    flops = get_flops(model, train_data._dataset, config["device"], logger, transform)
    logger.info(set_color("FLOPs", "blue") + f": {flops}")

    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    test_result = trainer.evaluate(
        test_data, load_best_model=saved, show_progress=config["show_progress"]
    )
    if saved:  # beside the checkpoint, a weights_only bundle for recbole_hyena.recommend
        save_run_bundle(trainer.saved_model_file, model, config, dataset)

    environment_tb = get_environment(config)
    logger.info("The running environment of this training is as follows:\n" + environment_tb.draw())
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")

    result = {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
    }
    if not config["single_spec"]:
        dist.destroy_process_group()
    if config["local_rank"] == 0 and queue is not None:
        queue.put(result)
    return result


def restart_logger(config) -> None:
    """Log the next run of this process to its own file: drop the previous run's handlers (as
    RecBole's tuning does) before RecBole's ``init_logger``."""
    logger = getLogger()
    for handler in logger.handlers[:]:
        logger.removeHandler(handler)
    init_logger(config)


def run_recbole_hyenas(rank: int, *args) -> None:
    """Entry point of one spawned DDP process (RecBole's ``run_recboles``)."""
    kwargs = args[-1]
    if not isinstance(kwargs, MutableMapping):
        raise ValueError(
            f"the last argument must be a dict of keyword arguments, got {type(kwargs)}"
        )
    kwargs["config_dict"] = kwargs.get("config_dict", {})
    kwargs["config_dict"]["local_rank"] = rank
    run_recbole_hyena(*args[:3], **kwargs)


def objective_function(
    config_dict: dict | None = None,
    config_file_list: list[str] | None = None,
    saved: bool = True,
) -> dict:
    r"""One trial of a hyper-parameter search (RecBole's ``objective_function``, with the plugin's
    Config, data path, models and trainers): train with early stopping, then test.

    ``model`` and ``dataset`` come from ``config_dict`` or the config files. Returns RecBole's dict
    (``model``, ``best_valid_score``, ``valid_score_bigger``, ``best_valid_result``,
    ``test_result``). Inside a Ray Tune trial the metrics also go to Ray, as ``valid_<metric>``,
    ``test_<metric>`` and ``best_valid_score``.
    """
    config = Config(config_dict=config_dict, config_file_list=config_file_list)
    init_seed(config["seed"], config["reproducibility"])
    restart_logger(config)

    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, verbose=False, saved=saved, show_progress=config["show_progress"]
    )
    test_result = trainer.evaluate(
        test_data, load_best_model=saved, show_progress=config["show_progress"]
    )
    result = {
        "model": config["model"],
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
    }
    _report_to_ray(result)
    return result


def _report_to_ray(result: dict) -> None:
    # Ray is imported by every Ray Tune worker; outside Ray there is nothing to report to.
    if "ray" not in sys.modules:
        return
    from ray import tune
    from ray.air import session

    if not tune.is_session_enabled():
        return
    metrics = {"best_valid_score": float(result["best_valid_score"])}
    for prefix, values in (("valid", result["best_valid_result"]), ("test", result["test_result"])):
        metrics.update({f"{prefix}_{name}": float(value) for name, value in (values or {}).items()})
    session.report(metrics)


__all__ = ["objective_function", "run", "run_recbole_hyena", "run_recbole_hyenas"]
