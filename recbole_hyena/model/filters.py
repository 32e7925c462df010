"""
recbole_hyena.model.filters
###########################

Long-kernel generators for the Hyena operator, behind one interface (``KernelGenerator``): asked
for a length ``L``, a generator returns causal depth-wise kernels ``[channels, L]``. A model picks
one by the ``filter_type`` config value through ``build_kernel_generator``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def uniform_grid(seq_len: int, device=None, dtype=torch.float64) -> torch.Tensor:
    """``seq_len`` points spaced uniformly over [-1, 1] (the single point -1 when ``seq_len`` is 1)."""
    return torch.linspace(-1.0, 1.0, seq_len, device=device, dtype=dtype)


def legendre_basis(grid: torch.Tensor, n_basis: int) -> torch.Tensor:
    r"""Legendre polynomials ``P_0..P_{n-1}`` at ``grid`` by the three-term recurrence
    ``(k+1) P_{k+1} = (2k+1) x P_k - k P_{k-1}``; returns ``[len(grid), n_basis]``."""
    polys = [torch.ones_like(grid), grid]
    for k in range(1, n_basis - 1):
        polys.append(((2 * k + 1) * grid * polys[k] - k * polys[k - 1]) / (k + 1))
    return torch.stack(polys[:n_basis], dim=-1)


class KernelGenerator(nn.Module):
    r"""Interface of the long-filter generators: asked for a length ``L``, return causal
    depth-wise kernels ``[channels, L]`` (tap 0 is lag 0).

    With ``normalize`` each channel's kernel is scaled to unit L2 norm over time, so that
    stacked long convolutions neither blow up nor vanish the signal.
    """

    def __init__(self, channels: int, normalize: bool = True, eps: float = 1e-8):
        super().__init__()
        self.channels = channels
        self.normalize = normalize
        self.eps = eps

    @classmethod
    def from_config(cls, channels: int, config) -> KernelGenerator:
        """Build from a RecBole ``Config``; each generator reads only its own keys."""
        raise NotImplementedError

    def raw_kernels(self, seq_len: int) -> torch.Tensor:
        raise NotImplementedError

    def reset_parameters(self) -> None:
        raise NotImplementedError

    def forward(self, seq_len: int) -> torch.Tensor:
        if seq_len < 1:
            raise ValueError(f"kernel length must be >= 1, got {seq_len}")
        kernels = self.raw_kernels(seq_len)
        if self.normalize:
            kernels = kernels / kernels.norm(dim=-1, keepdim=True).clamp_min(self.eps)
        return kernels


class BasisKernelGenerator(KernelGenerator):
    r"""Kernels ``K = (Phi C)^T`` from a fixed basis ``Phi [L, P]`` and learnable coefficients
    ``C [P, channels]``. Subclasses only say how ``Phi`` is built; it is cached per
    (length, device, dtype), never stored in a checkpoint, so a model is not pinned to one length.
    """

    def __init__(self, channels: int, n_basis: int, normalize: bool = True):
        super().__init__(channels, normalize)
        if n_basis < 1:
            raise ValueError(f"the number of basis functions must be >= 1, got {n_basis}")
        self.n_basis = n_basis
        self.coefficients = nn.Parameter(torch.empty(n_basis, channels))
        self._basis_cache: dict[tuple, torch.Tensor] = {}
        self.reset_parameters()

    @classmethod
    def from_config(cls, channels: int, config) -> BasisKernelGenerator:
        return cls(channels, n_basis=config["filter_order"], normalize=config["normalize_kernel"])

    def build_basis(self, seq_len: int, device: torch.device) -> torch.Tensor:
        """The basis ``[seq_len, n_basis]`` in float64."""
        raise NotImplementedError

    def reset_parameters(self) -> None:
        nn.init.normal_(self.coefficients, std=1.0 / math.sqrt(self.n_basis))

    def basis(self, seq_len: int) -> torch.Tensor:
        key = (seq_len, self.coefficients.device, self.coefficients.dtype)
        cached = self._basis_cache.get(key)
        if cached is None:
            cached = self.build_basis(seq_len, self.coefficients.device)
            cached = cached.to(self.coefficients.dtype)
            self._basis_cache[key] = cached
        return cached

    def raw_kernels(self, seq_len: int) -> torch.Tensor:
        return (self.basis(seq_len) @ self.coefficients).transpose(0, 1)  # [C, L]


class LegendreKernelGenerator(BasisKernelGenerator):
    """HyenaRec's filter: Legendre polynomials on a uniform grid over [-1, 1]."""

    def build_basis(self, seq_len: int, device: torch.device) -> torch.Tensor:
        return legendre_basis(uniform_grid(seq_len, device), self.n_basis)


KERNEL_GENERATORS: dict[str, type[KernelGenerator]] = {"legendre": LegendreKernelGenerator}


def build_kernel_generator(name: str, channels: int, config) -> KernelGenerator:
    """The generator registered under ``name`` (the ``filter_type`` config key)."""
    try:
        generator_class = KERNEL_GENERATORS[name.lower()]
    except KeyError:
        raise ValueError(
            f"filter_type [{name}] is not a known kernel generator; choose one of "
            f"{sorted(KERNEL_GENERATORS)}"
        ) from None
    return generator_class.from_config(channels, config)
