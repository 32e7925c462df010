"""
recbole_hyena.model.filters
###########################

Long-kernel generators for the Hyena operator, behind one interface (``KernelGenerator``): asked
for a length ``L``, a generator returns causal depth-wise kernels ``[channels, L]``. A model picks
one by the ``filter_type`` config value through ``build_kernel_generator``:

- ``legendre``: HyenaRec's fixed Legendre basis with learnable coefficients;
- ``chebyshev`` and ``fourier``: the same with a Chebyshev or a sin/cos basis (ablations);
- ``implicit``: the original Hyena filter, a sine MLP over positional features of the time grid
  times an exponentially decaying window ("w/o PK" and HyenaVanilla).
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


def chebyshev_basis(grid: torch.Tensor, n_basis: int) -> torch.Tensor:
    r"""Chebyshev polynomials of the first kind ``T_0..T_{n-1}`` at ``grid`` by the recurrence
    ``T_{k+1} = 2 x T_k - T_{k-1}``; ``T_k(cos t) = cos(k t)``, so ``|T_k| <= 1`` on [-1, 1].
    Returns ``[len(grid), n_basis]``."""
    polys = [torch.ones_like(grid), grid]
    for k in range(1, n_basis - 1):
        polys.append(2 * grid * polys[k] - polys[k - 1])
    return torch.stack(polys[:n_basis], dim=-1)


def periodic_grid(seq_len: int, device=None, dtype=torch.float64) -> torch.Tensor:
    """``t_n = n / seq_len`` for ``n < seq_len``: one period of [0, 1) without its end point, the
    grid on which sampled sines and cosines are exactly orthogonal."""
    return torch.arange(seq_len, device=device, dtype=dtype) / seq_len


def fourier_basis(grid: torch.Tensor, n_basis: int) -> torch.Tensor:
    r"""The real Fourier basis of period 1 at ``grid``, lowest frequency first:
    ``1, cos(2 pi t), sin(2 pi t), cos(4 pi t), sin(4 pi t), ...``; returns ``[len(grid), n_basis]``.

    Ordering by frequency makes truncating to the first ``P`` functions a low-pass filter, which
    is what the cumulative-energy criterion on the coefficients assumes."""
    columns = [torch.ones_like(grid)]
    for index in range(1, n_basis):
        angle = 2 * math.pi * ((index + 1) // 2) * grid
        columns.append(torch.cos(angle) if index % 2 else torch.sin(angle))
    return torch.stack(columns, dim=-1)


def _normal_tensors() -> torch.inference_mode:
    """Context for building cached constants: one built under ``torch.inference_mode`` (a first
    call from serving code) would be an inference tensor, which later training cannot save for
    backward."""
    return torch.inference_mode(False)


def _option(config, key: str, default):
    """``config[key]``, or ``default`` where the key is absent or None (``config`` is a RecBole
    ``Config`` or a plain dict, e.g. the one stored in a checkpoint)."""
    value = config[key] if key in config else None
    return default if value is None else value


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

    # Built eagerly even inside torch.compile: traced, the recurrences of high-order bases
    # (P_n from P_{n-1} and P_{n-2}) fuse into one expression that grows without bound, and
    # inductor's code generation never ends. A cached constant is all the graph needs.
    @torch.compiler.disable
    def basis(self, seq_len: int) -> torch.Tensor:
        key = (seq_len, self.coefficients.device, self.coefficients.dtype)
        cached = self._basis_cache.get(key)
        if cached is None:
            with _normal_tensors():
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


class ChebyshevKernelGenerator(BasisKernelGenerator):
    """Ablation "HyenaRec (Chebyshev)": Chebyshev polynomials on a uniform grid over [-1, 1]."""

    def build_basis(self, seq_len: int, device: torch.device) -> torch.Tensor:
        return chebyshev_basis(uniform_grid(seq_len, device), self.n_basis)


class FourierKernelGenerator(BasisKernelGenerator):
    """Ablation "HyenaRec (Fourier)": sines and cosines of period 1 on the grid ``n / L``."""

    def build_basis(self, seq_len: int, device: torch.device) -> torch.Tensor:
        return fourier_basis(periodic_grid(seq_len, device), self.n_basis)


class Sine(nn.Module):
    """``sin(omega * freq * x)`` with a learnable frequency ``freq`` per feature (initialised
    to 1): the activation of the implicit filter's MLP."""

    def __init__(self, features: int, omega: float = 1.0):
        super().__init__()
        self.omega = omega
        self.freq = nn.Parameter(torch.empty(features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.freq)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.omega * self.freq * inputs)


class ImplicitKernelGenerator(KernelGenerator):
    r"""The original Hyena filter (Poli et al., ICML 2023), used by "w/o PK" and HyenaVanilla.

    For each tap ``n`` of a length-``L`` kernel the features are the normalised time
    ``t_n = n / (L - 1)`` and ``cos(f_k w_n), -sin(f_k w_n)`` (real and imaginary parts of
    ``exp(-i f_k w_n)``, ``w_n = 2 pi n / L``) for ``bands`` frequencies ``f_k`` spread over
    ``[1e-4, bands - 1]``. A small MLP with sine activations maps them to one value per channel,
    and a window ``exp(-a_c t_n) + shift`` with per-channel decay rates ``a_c`` (from slow to
    fast) makes distant taps fade.

    The features and the window depend only on the length and are cached like the bases.
    """

    def __init__(
        self,
        channels: int,
        emb_dim: int = 33,
        width: int = 64,
        n_hidden: int = 2,
        sin_freq: float = 1.0,
        decay_target: float = 1e-2,
        fast_decay_pct: float = 0.3,
        slow_decay_pct: float = 1.5,
        window_shift: float = 0.0,
        normalize: bool = True,
    ):
        super().__init__(channels, normalize)
        if emb_dim < 3 or emb_dim % 2 == 0:
            raise ValueError(
                f"implicit_filter_emb_dim must be odd and >= 3 (time plus cos/sin pairs), got {emb_dim}"
            )
        if width < 1 or n_hidden < 0:
            raise ValueError(
                f"implicit filter needs width >= 1 and n_hidden >= 0, got {width}, {n_hidden}"
            )
        if not 0 < decay_target < 1 or not 0 < fast_decay_pct <= slow_decay_pct:
            raise ValueError(
                "implicit filter window needs 0 < decay_target < 1 and "
                f"0 < fast_decay_pct <= slow_decay_pct, got {decay_target}, {fast_decay_pct}, "
                f"{slow_decay_pct}"
            )
        self.bands = (emb_dim - 1) // 2
        self.window_shift = window_shift
        layers = [nn.Linear(emb_dim, width), Sine(width, sin_freq)]
        for _ in range(n_hidden):
            layers += [nn.Linear(width, width), Sine(width, sin_freq)]
        layers.append(nn.Linear(width, channels, bias=False))
        self.mlp = nn.Sequential(*layers)
        # The window reaches decay_target at t = fast_decay_pct for the fastest channel and at
        # t = slow_decay_pct for the slowest one: channels see history at several time scales.
        rate_range = (
            -math.log(decay_target) / slow_decay_pct,
            -math.log(decay_target) / fast_decay_pct,
        )
        self.register_buffer("decay_rates", torch.linspace(*rate_range, channels), persistent=False)
        self._feature_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.reset_parameters()

    @classmethod
    def from_config(cls, channels: int, config) -> ImplicitKernelGenerator:
        return cls(
            channels,
            emb_dim=_option(config, "implicit_filter_emb_dim", 33),
            width=_option(config, "implicit_filter_width", 64),
            n_hidden=_option(config, "implicit_filter_n_hidden", 2),
            sin_freq=_option(config, "implicit_filter_sin_freq", 1.0),
            decay_target=_option(config, "implicit_filter_decay_target", 1e-2),
            fast_decay_pct=_option(config, "implicit_filter_fast_decay_pct", 0.3),
            slow_decay_pct=_option(config, "implicit_filter_slow_decay_pct", 1.5),
            window_shift=_option(config, "implicit_filter_window_shift", 0.0),
            normalize=_option(config, "normalize_kernel", True),
        )

    def reset_parameters(self) -> None:
        # PyTorch's own Linear initialisation (not RecBole's N(0, 0.02)): with weights that
        # small every sine would stay in its linear range and all kernels would look alike.
        for module in self.mlp:
            module.reset_parameters()

    @torch.compiler.disable  # eager and cached, like the bases' (see BasisKernelGenerator.basis)
    def features(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Positional features ``[L, emb_dim]`` and the time grid ``t [L]`` (cached)."""
        weight = self.mlp[0].weight
        key = (seq_len, weight.device, weight.dtype)
        cached = self._feature_cache.get(key)
        if cached is None:
            with _normal_tensors():
                steps = torch.arange(seq_len, device=weight.device, dtype=torch.float64)
                time = steps / max(seq_len - 1, 1)
                angles = 2 * math.pi * steps / seq_len
                freqs = torch.linspace(1e-4, self.bands - 1, self.bands, dtype=torch.float64)
                phase = angles.unsqueeze(-1) * freqs.to(weight.device)  # [L, bands]
                features = torch.cat(
                    [time.unsqueeze(-1), torch.cos(phase), -torch.sin(phase)], dim=-1
                )
                cached = (features.to(weight.dtype), time.to(weight.dtype))
            self._feature_cache[key] = cached
        return cached

    def raw_kernels(self, seq_len: int) -> torch.Tensor:
        features, time = self.features(seq_len)
        kernels = self.mlp(features).transpose(0, 1)  # [C, L]
        window = torch.exp(-self.decay_rates.unsqueeze(-1) * time) + self.window_shift
        return kernels * window


KERNEL_GENERATORS: dict[str, type[KernelGenerator]] = {
    "legendre": LegendreKernelGenerator,
    "chebyshev": ChebyshevKernelGenerator,
    "fourier": FourierKernelGenerator,
    "implicit": ImplicitKernelGenerator,
}


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
