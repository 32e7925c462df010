"""The model bundle: weights_only loading in a fresh process, a rebuild equal to the original,
and clear errors for truncated, tampered and foreign files."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest
import torch
from recbole.utils import ModelType

from recbole_hyena.checkpoint import (
    BUNDLE_FORMAT,
    BundleConfig,
    BundleError,
    ModelBundle,
    bundle_path,
    load_bundle,
    load_model,
    save_run_bundle,
)
from recbole_hyena.config import Config
from recbole_hyena.utils import get_model
from tests.conftest import DatasetStub, random_sequences

N_ITEMS = 30
MAX_LEN = 12


def make_model_and_config():
    config = Config(
        model="HyenaRec",
        dataset="ml-100k",
        config_dict={
            "use_gpu": False,
            "MAX_ITEM_LIST_LENGTH": MAX_LEN,
            "hidden_size": 16,
            "inner_size": 32,
            "n_layers": 1,
        },
    )
    torch.manual_seed(0)
    model = get_model("HyenaRec")(config, DatasetStub(N_ITEMS)).eval()
    with torch.no_grad():  # a bias that is not all zeros, so that losing it would show
        model.item_bias.normal_()
    return model, config


def item_tokens() -> list[str]:
    return ["[PAD]"] + [f"movie-{i}" for i in range(1, N_ITEMS)]


@pytest.fixture
def saved_bundle(tmp_path):
    model, config = make_model_and_config()
    history = {
        "items": torch.tensor([3, 4, 5, 7], dtype=torch.int32),
        "offsets": torch.tensor([0, 0, 3, 4]),
    }
    bundle = ModelBundle.from_model(model, config, item_tokens(), ["[PAD]", "ann", "bob"], history)
    path = bundle.save(str(tmp_path / "model.bundle.pt"))
    return path, model


def scores_of(model, seed: int = 1, batch: int = 5, seq_len: int = MAX_LEN) -> torch.Tensor:
    from recbole.data.interaction import Interaction

    item_seq, item_seq_len = random_sequences(batch, seq_len, N_ITEMS, seed=seed)
    with torch.no_grad():
        return model.full_sort_predict(
            Interaction({model.ITEM_SEQ: item_seq, model.ITEM_SEQ_LEN: item_seq_len})
        )


def test_rebuilt_model_scores_like_the_original(saved_bundle):
    path, model = saved_bundle
    rebuilt, bundle = load_model(path)
    assert type(rebuilt) is type(model) and not rebuilt.training
    for seed in (1, 2, 3):
        torch.testing.assert_close(scores_of(rebuilt, seed), scores_of(model, seed))
    assert bundle.item_tokens == item_tokens()
    assert bundle.fields == {
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "ITEM_SEQ": "item_id_list",
        "ITEM_SEQ_LEN": "item_length",
        "MAX_ITEM_LIST_LENGTH": MAX_LEN,
    }
    assert bundle.user_ids == {"ann": 1, "bob": 2}
    assert bundle.user_history(1).tolist() == [3, 4, 5]


def test_bundle_loads_with_weights_only_in_a_fresh_process(saved_bundle, tmp_path):
    path, model = saved_bundle
    out = str(tmp_path / "scores.pt")
    script = (
        "import sys, torch\n"
        "state = torch.load(sys.argv[1], weights_only=True)\n"
        f"assert state['format'] == {BUNDLE_FORMAT!r}\n"
        "from recbole_hyena.checkpoint import load_model\n"
        "from tests.test_checkpoint import scores_of\n"
        "model, _ = load_model(sys.argv[1])\n"
        "torch.save(scores_of(model), sys.argv[2])\n"
    )
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run(
        [sys.executable, "-c", script, path, out], check=True, cwd=repo_root, timeout=120
    )
    torch.testing.assert_close(torch.load(out, weights_only=True), scores_of(model))


def test_truncated_bundle_is_refused(saved_bundle):
    path, _ = saved_bundle
    data = open(path, "rb").read()
    with open(path, "wb") as file:
        file.write(data[: len(data) // 2])
    with pytest.raises(BundleError, match="truncated"):
        load_bundle(path)


def test_flipped_byte_in_the_weights_is_refused(saved_bundle):
    path, _ = saved_bundle
    with zipfile.ZipFile(path) as archive:
        biggest = max(archive.infolist(), key=lambda info: info.file_size)
        header_offset = biggest.header_offset
    with open(path, "r+b") as file:
        # The local header is 30 bytes plus the name and extra fields; the data follows it.
        file.seek(header_offset + 26)
        name_length, extra_length = (int.from_bytes(file.read(2), "little") for _ in range(2))
        position = header_offset + 30 + name_length + extra_length + biggest.file_size // 2
        file.seek(position)
        byte = file.read(1)[0]
        file.seek(position)
        file.write(bytes([byte ^ 0x40]))
    with pytest.raises(BundleError):  # torch's CRC check or the bundle's own digest
        load_bundle(path)


def test_edited_weights_fail_the_digest(saved_bundle):
    path, _ = saved_bundle
    state = torch.load(path, weights_only=True)
    state["state_dict"]["item_bias"] += 1.0
    torch.save(state, path)
    with pytest.raises(BundleError, match="SHA-256"):
        load_bundle(path)


class Payload:
    """Unpickling this would create a file: a stand-in for code hidden in a checkpoint."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_is_refused_and_not_run(tmp_path):
    marker = str(tmp_path / "ran")
    path = str(tmp_path / "evil.bundle.pt")
    torch.save({"format": BUNDLE_FORMAT, "version": 1, "payload": Payload(marker)}, path)
    with pytest.raises(BundleError, match="weights_only"):
        load_bundle(path)
    assert not os.path.exists(marker)


def test_foreign_files_get_a_reason(tmp_path):
    checkpoint = str(tmp_path / "HyenaRec.pth")
    torch.save({"config": {}, "state_dict": {}, "epoch": 3}, checkpoint)
    with pytest.raises(BundleError, match="training checkpoint"):
        load_bundle(checkpoint)
    old = str(tmp_path / "old.bundle.pt")
    torch.save({"format": BUNDLE_FORMAT, "version": 99}, old)
    with pytest.raises(BundleError, match="version 99"):
        load_bundle(old)
    with pytest.raises(FileNotFoundError):
        load_bundle(str(tmp_path / "missing.bundle.pt"))


def test_history_times_that_do_not_fit_the_items_are_refused(tmp_path):
    model, config = make_model_and_config()
    items = torch.tensor([3, 4, 5, 7], dtype=torch.int32)
    offsets = torch.tensor([0, 0, 3, 4])
    users = ["[PAD]", "ann", "bob"]
    for times, reason in [
        (torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), "torch.float64, (3,)"),
        (torch.tensor([1, 2, 3, 4]), "torch.int64, (4,)"),
    ]:
        history = {"items": items, "offsets": offsets, "times": times}
        bundle = ModelBundle.from_model(model, config, item_tokens(), users, history)
        path = bundle.save(str(tmp_path / "times.bundle.pt"))
        with pytest.raises(BundleError, match="history times") as error:
            load_bundle(path)
        assert "times.bundle.pt" in str(error.value) and reason in str(error.value)
    history = {"items": items, "offsets": offsets, "times": torch.arange(4.0).double()}
    path = ModelBundle.from_model(model, config, item_tokens(), users, history).save(
        str(tmp_path / "good.bundle.pt")
    )
    assert load_bundle(path).has_times


def test_weights_of_another_shape_are_reported(tmp_path):
    model, config = make_model_and_config()
    bundle = ModelBundle.from_model(model, config, item_tokens())
    bundle.item_tokens = bundle.item_tokens[:-1]  # one item fewer: embedding shapes disagree
    with pytest.raises(BundleError, match="do not fit"):
        bundle.build_model()


def test_bundle_config_reads_like_recbole_config():
    config = BundleConfig({"MODEL_TYPE": "SEQUENTIAL", "hidden_size": 8}, device="cpu")
    assert config["MODEL_TYPE"] is ModelType.SEQUENTIAL
    assert config["hidden_size"] == 8 and "hidden_size" in config
    assert config["not_a_key"] is None  # as RecBole's Config
    assert config["device"] == torch.device("cpu")


def test_bundle_path_sits_beside_the_checkpoint():
    assert bundle_path("saved/HyenaRec-Mar-01-2026_10-00-00.pth") == (
        "saved/HyenaRec-Mar-01-2026_10-00-00.bundle.pt"
    )


def test_run_bundle_is_skipped_not_fatal(tmp_path, caplog):
    """After training: no bundle for non-sequential models or other DDP ranks, and a failure to
    write one is a warning, not a crashed run."""
    model, config = make_model_and_config()
    checkpoint = str(tmp_path / "HyenaRec-x.pth")
    assert save_run_bundle(checkpoint, torch.nn.Linear(2, 2), config, dataset=None) is None
    with caplog.at_level("WARNING"):
        assert save_run_bundle(checkpoint, model, config, dataset=None) is None
    assert "could not write the model bundle" in caplog.text
    config["single_spec"], config["local_rank"] = False, 1
    assert save_run_bundle(checkpoint, model, config, dataset=None) is None
    assert os.listdir(tmp_path) == []
