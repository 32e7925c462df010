"""The kernel generators: each basis against known values, and every generator's kernels."""

import math

import pytest
import torch

from recbole_hyena.model.filters import (
    KERNEL_GENERATORS,
    BasisKernelGenerator,
    ChebyshevKernelGenerator,
    FourierKernelGenerator,
    ImplicitKernelGenerator,
    KernelGenerator,
    LegendreKernelGenerator,
    build_kernel_generator,
    chebyshev_basis,
    fourier_basis,
    periodic_grid,
)

from conftest import build_model

SMALL_CONFIG = {"filter_order": 16, "normalize_kernel": True}


def test_chebyshev_recurrence_gives_cosines_of_multiple_angles():
    angles = torch.linspace(0, math.pi, 201, dtype=torch.float64)
    basis = chebyshev_basis(torch.cos(angles), 40)
    for k in range(40):
        assert torch.allclose(basis[:, k], torch.cos(k * angles), atol=1e-10), k


def test_chebyshev_basis_is_bounded_on_the_interval():
    basis = chebyshev_basis(torch.linspace(-1, 1, 333, dtype=torch.float64), 64)
    assert basis.abs().max() <= 1 + 1e-9


@pytest.mark.parametrize("seq_len", [33, 64, 200])
def test_fourier_basis_is_orthogonal_on_the_periodic_grid(seq_len):
    n_basis = 31  # highest frequency 15 < seq_len / 2: no aliasing
    basis = fourier_basis(periodic_grid(seq_len), n_basis)
    gram = basis.T @ basis
    expected = torch.full((n_basis,), seq_len / 2, dtype=torch.float64)
    expected[0] = seq_len
    assert torch.allclose(gram, torch.diag(expected), atol=1e-9)


def test_fourier_basis_orders_cosine_and_sine_by_frequency():
    grid = periodic_grid(10)
    basis = fourier_basis(grid, 5)
    expected = [
        torch.ones_like(grid),
        torch.cos(2 * math.pi * grid),
        torch.sin(2 * math.pi * grid),
        torch.cos(4 * math.pi * grid),
        torch.sin(4 * math.pi * grid),
    ]
    assert torch.allclose(basis, torch.stack(expected, dim=-1))


@pytest.mark.parametrize("name", sorted(KERNEL_GENERATORS))
@pytest.mark.parametrize("seq_len", [1, 2, 50, 1000])
def test_kernels_are_finite_and_unit_norm(name, seq_len):
    torch.manual_seed(0)
    generator = build_kernel_generator(name, 12, SMALL_CONFIG)
    kernels = generator(seq_len)
    assert kernels.shape == (12, seq_len)
    assert torch.isfinite(kernels).all()
    assert torch.allclose(kernels.norm(dim=-1), torch.ones(12), atol=1e-5)


@pytest.mark.parametrize("name", sorted(KERNEL_GENERATORS))
def test_normalisation_is_optional_and_only_rescales(name):
    torch.manual_seed(0)
    raw = build_kernel_generator(name, 6, {**SMALL_CONFIG, "normalize_kernel": False})
    torch.manual_seed(0)
    unit = build_kernel_generator(name, 6, SMALL_CONFIG)
    raw_kernels, unit_kernels = raw(40), unit(40)
    assert not torch.allclose(raw_kernels.norm(dim=-1), torch.ones(6))
    assert torch.allclose(raw_kernels / raw_kernels.norm(dim=-1, keepdim=True), unit_kernels)


@pytest.mark.parametrize(
    "name, generator_class",
    [
        ("legendre", LegendreKernelGenerator),
        ("chebyshev", ChebyshevKernelGenerator),
        ("fourier", FourierKernelGenerator),
        ("implicit", ImplicitKernelGenerator),
        ("Chebyshev", ChebyshevKernelGenerator),
    ],
)
def test_registry_builds_each_generator_from_its_config(name, generator_class):
    generator = build_kernel_generator(name, 4, SMALL_CONFIG)
    assert type(generator) is generator_class and isinstance(generator, KernelGenerator)
    if isinstance(generator, BasisKernelGenerator):
        assert generator.coefficients.shape == (16, 4)


def test_unknown_filter_type_names_the_choices():
    with pytest.raises(ValueError, match=r"filter_type \[wavelet\].*chebyshev"):
        build_kernel_generator("wavelet", 4, SMALL_CONFIG)


def test_basis_kernels_are_the_basis_times_the_coefficients():
    generator = ChebyshevKernelGenerator(3, n_basis=4, normalize=False)
    with torch.no_grad():
        generator.coefficients.copy_(torch.eye(4, 3))
    # Channel c is T_c on the uniform grid over [-1, 1].
    grid = torch.linspace(-1, 1, 9, dtype=torch.float64)
    assert torch.allclose(generator(9).double(), chebyshev_basis(grid, 3).T, atol=1e-6)


def test_implicit_filter_reads_its_config_keys():
    config = {
        "implicit_filter_emb_dim": 5,
        "implicit_filter_width": 8,
        "implicit_filter_n_hidden": 1,
        "implicit_filter_sin_freq": 10.0,
        "normalize_kernel": False,
    }
    generator = build_kernel_generator("implicit", 6, config)
    linears = [module for module in generator.mlp if isinstance(module, torch.nn.Linear)]
    assert [linear.weight.shape for linear in linears] == [(8, 5), (8, 8), (6, 8)]
    assert generator.mlp[1].omega == 10.0 and not generator.normalize
    features, time = generator.features(20)
    assert features.shape == (20, 5) and torch.allclose(time, torch.linspace(0, 1, 20))


def test_implicit_filter_window_decays_at_channel_dependent_rates():
    generator = ImplicitKernelGenerator(4, normalize=False)
    rates = generator.decay_rates
    assert torch.all(rates[1:] > rates[:-1])
    # The slowest channel reaches 1% at t = 1.5, the fastest at t = 0.3.
    assert torch.allclose(rates[[0, -1]], torch.tensor([math.log(100) / 1.5, math.log(100) / 0.3]))


def test_implicit_filter_rejects_an_even_embedding():
    with pytest.raises(ValueError, match="implicit_filter_emb_dim"):
        ImplicitKernelGenerator(4, emb_dim=4)


def test_model_init_keeps_the_implicit_filter_initialisation():
    """RecBole's N(0, 0.02) pass over every nn.Linear must not reach the filter MLP."""
    model = build_model("HyenaVanilla", hidden_size=8, MAX_ITEM_LIST_LENGTH=10)
    generator = model.blocks[0].mixer.long_filter
    first = generator.mlp[0]
    # PyTorch's Linear init is uniform in +-1/sqrt(fan_in), far wider than std 0.02.
    assert first.weight.abs().max() > 0.1
    assert first.weight.abs().max() <= 1 / math.sqrt(first.in_features)


def test_length_dependent_tensors_stay_out_of_the_state_dict():
    generator = ImplicitKernelGenerator(4)
    generator(30)
    assert not any("decay" in key or "feature" in key for key in generator.state_dict())
