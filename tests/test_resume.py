"""An interrupted run resumes from its checkpoint and ends exactly as an uninterrupted run."""

from __future__ import annotations

import pytest
import torch
from recbole.utils import init_seed
from tiny_data import TINY_DATASET, single_thread, write_tiny_dataset  # noqa: F401 (fixture)

from recbole_hyena.config import Config
from recbole_hyena.data import create_dataset, data_preparation
from recbole_hyena.trainer import load_checkpoint
from recbole_hyena.utils import get_model, get_trainer

EPOCHS = 2

pytestmark = pytest.mark.usefixtures("single_thread")


class Interrupted(Exception):
    pass


def interrupt_after_first_epoch(epoch_idx: int, valid_score: float) -> None:
    # RecBole calls this after the epoch's checkpoint is written.
    if epoch_idx == 0:
        raise Interrupted


def build(config_dict: dict):
    """A run as quick_start builds it: (trainer, train, valid, test)."""
    config = Config(model="HyenaRec", dataset=TINY_DATASET, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    train_data, valid_data, test_data = data_preparation(config, create_dataset(config))
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    return trainer, train_data, valid_data, test_data


def finish(trainer, train_data, valid_data, test_data) -> dict:
    best_score, best_result = trainer.fit(train_data, valid_data, show_progress=False)
    return {
        "best_valid_score": best_score,
        "best_valid_result": best_result,
        "test_result": trainer.evaluate(test_data, load_best_model=True),
        "final_state": {k: v.clone() for k, v in trainer.model.state_dict().items()},
        "best_state": load_checkpoint(trainer.saved_model_file)["state_dict"],
    }


def assert_same_state(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name


@pytest.fixture
def config_dict(tmp_path) -> dict:
    # Dropout and shuffling on: the resumed epochs must draw the same masks and batches.
    return {
        **write_tiny_dataset(tmp_path / "data"),
        "epochs": EPOCHS,
        "hidden_dropout_prob": 0.2,
        "shuffle": True,
        "train_batch_size": 32,
    }


def interrupted_checkpoint(config_dict: dict, folder) -> str:
    trainer, train_data, valid_data, _ = build({**config_dict, "checkpoint_dir": str(folder)})
    with pytest.raises(Interrupted):
        trainer.fit(train_data, valid_data, callback_fn=interrupt_after_first_epoch)
    return trainer.saved_model_file


def test_resumed_run_ends_like_an_uninterrupted_one(config_dict, tmp_path):
    uninterrupted = finish(*build({**config_dict, "checkpoint_dir": str(tmp_path / "full")}))

    checkpoint_file = interrupted_checkpoint(config_dict, tmp_path / "interrupted")
    checkpoint = load_checkpoint(checkpoint_file)  # weights_only=True, as torch >= 2.6 loads
    assert checkpoint["epoch"] == 0 and checkpoint["best_valid_result"] is not None

    run = build({**config_dict, "checkpoint_dir": str(tmp_path / "resumed")})
    run[0].resume_checkpoint(checkpoint_file)
    assert run[0].start_epoch == 1
    resumed = finish(*run)

    for key in ("best_valid_score", "best_valid_result", "test_result"):
        assert resumed[key] == uninterrupted[key], key
    assert_same_state(resumed["final_state"], uninterrupted["final_state"])
    assert_same_state(resumed["best_state"], uninterrupted["best_state"])


def test_without_the_random_state_a_resumed_run_differs(config_dict, tmp_path):
    """What the saved random state buys: RecBole's checkpoint alone resumes with fresh generators
    (the first epoch's batches again, other dropout masks), so the weights end elsewhere."""
    uninterrupted = finish(*build({**config_dict, "checkpoint_dir": str(tmp_path / "full")}))
    checkpoint_file = interrupted_checkpoint(config_dict, tmp_path / "interrupted")
    checkpoint = load_checkpoint(checkpoint_file)
    del checkpoint["rng_state"], checkpoint["train_generator_state"]
    torch.save(checkpoint, checkpoint_file)

    run = build({**config_dict, "checkpoint_dir": str(tmp_path / "resumed")})
    run[0].resume_checkpoint(checkpoint_file)
    resumed = finish(*run)
    differs = [
        name
        for name, tensor in uninterrupted["final_state"].items()
        if not torch.equal(tensor, resumed["final_state"][name])
    ]
    assert differs
