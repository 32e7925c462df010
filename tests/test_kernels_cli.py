"""``python -m recbole_hyena.kernels``: the basis-size criterion and the kernel plot."""

import struct

import pytest
import torch

from recbole_hyena.config import Config
from recbole_hyena.kernels import (
    cumulative_energy,
    energy_rows,
    load_filters,
    main,
    probe_sizes,
    smallest_basis_size,
)
from recbole_hyena.trainer.trainer import plain_config
from recbole_hyena.utils import get_model

from conftest import DatasetStub

HIDDEN, ORDER, P_REF, SEQ_LEN = 4, 2, 8, 16


def save_checkpoint(path, model_name="HyenaRec", coefficients=None) -> torch.nn.Module:
    """A checkpoint as the plugin's trainer writes it, of a tiny untrained model; ``coefficients``
    (``[layers, P_ref, ORDER * HIDDEN]``) replace its basis coefficients."""
    config = Config(
        model=model_name,
        dataset="ml-100k",
        config_dict={
            "use_gpu": False,
            "MAX_ITEM_LIST_LENGTH": SEQ_LEN,
            "hidden_size": HIDDEN,
            "inner_size": 8,
            "hyena_order": ORDER,
            "filter_order": P_REF,
            "implicit_filter_width": 8,
        },
    )
    torch.manual_seed(0)
    model = get_model(model_name)(config, DatasetStub(30))
    if coefficients is not None:
        with torch.no_grad():
            for block, layer_coefficients in zip(model.blocks, coefficients):
                block.mixer.long_filter.coefficients.copy_(layer_coefficients)
    state = {
        "config": plain_config(config),
        "epoch": 0,
        "cur_step": 0,
        "best_valid_score": 0.0,
        "state_dict": model.state_dict(),
        "other_parameter": model.other_parameter(),
        "optimizer": {},
    }
    torch.save(state, path)
    return model


def hand_made_coefficients() -> torch.Tensor:
    """Layer 0: stage 0 lives on the first 2 basis functions, stage 1 spreads evenly over all 8.
    Layer 1: both stages decay geometrically, row energy 2^-k."""
    coefficients = torch.zeros(2, P_REF, ORDER * HIDDEN)
    coefficients[0, :2, :HIDDEN] = 1.0
    coefficients[0, :, HIDDEN:] = 0.5
    coefficients[1] = (0.5 ** (torch.arange(P_REF) / 2)).unsqueeze(-1) / HIDDEN**0.5
    return coefficients


def test_cumulative_energy_of_hand_made_coefficients():
    # Row energies 4, 3, 2, 1 (spread over channels differently): E = .4, .7, .9, 1.
    coefficients = torch.tensor(
        [[2.0, 0.0], [1.0, 2**0.5], [1.0, 1.0], [0.0, -1.0]], dtype=torch.float64
    )
    energy = cumulative_energy(coefficients)
    assert torch.allclose(energy, torch.tensor([0.4, 0.7, 0.9, 1.0], dtype=torch.float64))
    expected = {0.3: 1, 0.4: 1, 0.5: 2, 0.9: 3, 0.95: 4, 1.0: 4}
    for threshold, size in expected.items():
        assert smallest_basis_size(energy, threshold) == size, threshold


def test_energy_criterion_rejects_bad_input():
    with pytest.raises(ValueError, match="threshold"):
        smallest_basis_size(torch.tensor([0.5, 1.0]), 1.5)
    with pytest.raises(ValueError, match="zero"):
        cumulative_energy(torch.zeros(4, 3))


def test_probe_sizes_are_powers_of_two_then_the_reference():
    assert probe_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
    assert probe_sizes(48) == [1, 2, 4, 8, 16, 32, 48]
    assert probe_sizes(1) == [1]


def test_energy_per_layer_and_stage_of_a_checkpoint(tmp_path):
    path = tmp_path / "model.pth"
    save_checkpoint(path, coefficients=hand_made_coefficients())
    filters = load_filters(torch.load(path, weights_only=True))
    rows = {(row["layer"], row["stage"]): row for row in energy_rows(filters, 0.99)}
    assert {key: row["P"] for key, row in rows.items()} == {
        (0, 0): 2,
        (0, 1): 8,
        # E(P) = (1 - 2^-P) / (1 - 2^-8): E(6) = 0.988, E(7) = 0.996.
        (1, 0): 7,
        (1, 1): 7,
    }
    assert torch.allclose(rows[0, 1]["energy"], torch.arange(1, 9, dtype=torch.float64) / 8)
    geometric = energy_rows(filters, 0.9)
    assert [row["P"] for row in geometric] == [2, 8, 4, 4]  # E(3) = 0.878, E(4) = 0.941


def test_energy_command_prints_the_table(tmp_path, capsys):
    path = tmp_path / "model.pth"
    save_checkpoint(path, coefficients=hand_made_coefficients())
    main(["energy", "--checkpoint", str(path), "--threshold", "0.9"])
    out = capsys.readouterr().out
    assert "reference order P_ref = 8" in out
    assert "| layer | stage | E(1) | E(2) | E(4) | E(8) | P at E >= 0.9 |" in out
    assert "| 0 | 0 | 0.5000 | 1.0000 | 1.0000 | 1.0000 | 2 |" in out
    assert "| 0 | 1 | 0.1250 | 0.2500 | 0.5000 | 1.0000 | 8 |" in out
    assert "smallest P passing in every layer and stage: 8" in out


def test_loaded_filters_give_the_model_kernels(tmp_path):
    for name in ("HyenaRecFourier", "HyenaVanilla"):
        model = save_checkpoint(tmp_path / f"{name}.pth", name)
        filters = load_filters(torch.load(tmp_path / f"{name}.pth", weights_only=True))
        assert len(filters) == len(model.blocks)
        for long_filter, block in zip(filters, model.blocks):
            assert torch.allclose(long_filter.kernels(), block.mixer.kernels(SEQ_LEN))


def test_energy_refuses_an_implicit_filter(tmp_path):
    path = tmp_path / "vanilla.pth"
    save_checkpoint(path, "HyenaVanilla")
    with pytest.raises(ValueError, match="basis coefficients"):
        main(["energy", "--checkpoint", str(path)])


def test_checkpoint_without_long_filters_is_named(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"config": {"model": "SASRec"}, "state_dict": {"w": torch.ones(2)}}, path)
    with pytest.raises(ValueError, match=r"\[SASRec\] holds no Hyena long filter"):
        main(["energy", "--checkpoint", str(path)])


def png_size(path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize(
    "model_name, beside",
    [("HyenaRec", None), ("HyenaRecChebyshev", "HyenaVanilla"), ("HyenaVanilla", None)],
)
def test_plot_command_writes_a_png(tmp_path, capsys, model_name, beside):
    path = tmp_path / "model.pth"
    save_checkpoint(path, model_name)
    args = ["plot", "--checkpoint", str(path), "--out", str(tmp_path / "kernels.png")]
    if beside:
        save_checkpoint(tmp_path / "beside.pth", beside)
        args += ["--implicit-checkpoint", str(tmp_path / "beside.pth")]
    main(args)
    assert "wrote" in capsys.readouterr().out
    width, height = png_size(tmp_path / "kernels.png")
    # Two kernel columns per stage (checkpoint and implicit filter) unless the checkpoint is
    # itself implicit; one row for the basis and one per layer.
    columns = ORDER * (1 if model_name == "HyenaVanilla" else 2)
    assert width == pytest.approx(3.4 * columns * 120, abs=2)
    assert height == pytest.approx(2.5 * 3 * 120, abs=2)
