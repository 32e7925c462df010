"""
Mamba4Rec
################################################

Reference:
    Chengkai Liu et al. "Mamba4Rec: Towards Efficient Sequential Recommendation with Selective
    State Space Models." arXiv 2403.03900, 2024.
    Albert Gu and Tri Dao. "Mamba: Linear-Time Sequence Modeling with Selective State Spaces."
    arXiv 2312.00752, 2023.

Reference code:
    https://github.com/chengkai-liu/Mamba4Rec (and ``mamba_simple.py`` of state-spaces/mamba)

Each layer is a Mamba block (in-projection to a stream and a gate, causal depth-wise
convolution, input-dependent ``dt``, ``B``, ``C`` and the selective scan, SiLU gate,
out-projection), then dropout, a residual and LayerNorm, then a position-wise feed-forward
network. The selective scan is plain PyTorch (step by step, or by recursive doubling:
``torch_scan``), so the model runs on any device; when
``mamba_ssm`` is installed and the data is on a GPU, its fused CUDA scan is used instead
(``scan_backend``), with the same parameters.

Where this departs from the authors' code:
    - The Mamba block is this package's own, with the same parameters and initialisation as
      ``mamba_ssm.Mamba`` (its fused in/out projection kernels are not used).
    - The authors re-initialise every ``nn.Linear`` of the block, ``dt_proj`` included, with
      RecBole's normal(0, 0.02) after building it, which sets every initial step size to
      softplus(0) = 0.69; here the block keeps Mamba's own initialisation (step sizes
      log-uniform in ``[dt_min, dt_max]``, ``A = -(1..d_state)``).
    - The scores are weight-tied with a learnable item bias.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from recbole.model.layers import FeedForward
from torch import nn

from recbole_hyena.model.abstract_recommender import CausalSequentialRecommender
from recbole_hyena.model.sequence_layers import mamba_kernel, selective_scan

SCAN_BACKENDS = ("auto", "torch", "mamba_ssm")
TORCH_SCANS = ("stepwise", "parallel")


class MambaMixer(nn.Module):
    r"""A Mamba (S6) block, ``[B, L, D] -> [B, L, D]``, causal."""

    def __init__(
        self,
        d_model: int,
        d_state: int,
        d_conv: int,
        expand: int,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        scan_backend: str = "auto",
        torch_scan: str = "stepwise",
    ):
        super().__init__()
        if scan_backend not in SCAN_BACKENDS:
            raise ValueError(f"scan_backend [{scan_backend}] must be one of {list(SCAN_BACKENDS)}")
        if torch_scan not in TORCH_SCANS:
            raise ValueError(f"torch_scan [{torch_scan}] must be one of {list(TORCH_SCANS)}")
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        self.scan_backend = scan_backend
        self.torch_scan = torch_scan
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)  # stream | gate
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state))
        self.D = nn.Parameter(torch.empty(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Mamba's initialisation (to be rerun after RecBole's generic pass)."""
        for linear in (self.in_proj, self.x_proj, self.out_proj):
            linear.reset_parameters()
        self.conv1d.reset_parameters()
        with torch.no_grad():
            dt_std = self.dt_rank**-0.5
            nn.init.uniform_(self.dt_proj.weight, -dt_std, dt_std)
            # bias = softplus^{-1}(dt) for dt log-uniform in [dt_min, dt_max]
            dt = torch.exp(
                torch.rand(self.d_inner) * (math.log(self.dt_max) - math.log(self.dt_min))
                + math.log(self.dt_min)
            ).clamp(min=self.dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            states = torch.arange(1, self.d_state + 1, dtype=torch.float32)
            self.A_log.copy_(torch.log(states).expand(self.d_inner, -1))
            self.D.fill_(1.0)

    def uses_kernel(self, inputs: torch.Tensor) -> bool:
        """Whether this call goes through ``mamba_ssm``'s CUDA scan."""
        if self.scan_backend == "torch":
            return False
        available = inputs.is_cuda and mamba_kernel() is not None
        if self.scan_backend == "mamba_ssm" and not available:
            raise RuntimeError(
                "scan_backend [mamba_ssm] needs the mamba-ssm package and a CUDA tensor; "
                "use scan_backend: auto or torch"
            )
        return available

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        seq_len = inputs.shape[1]
        stream, gate = self.in_proj(inputs).transpose(1, 2).chunk(2, dim=1)  # [B, E, L] each
        # symmetric padding, output cut to the first L: a causal convolution
        stream = F.silu(self.conv1d(stream)[..., :seq_len])
        dt, B, C = self.x_proj(stream.transpose(1, 2)).split(
            [self.dt_rank, self.d_state, self.d_state], dim=-1
        )
        dt = (dt @ self.dt_proj.weight.t()).transpose(1, 2)  # [B, E, L]; bias added in the scan
        if self.uses_kernel(inputs):
            scan = mamba_kernel()
        else:
            scan = partial(selective_scan, parallel=self.torch_scan == "parallel")
        outputs = scan(
            stream.contiguous(),
            dt.contiguous(),
            -torch.exp(self.A_log.float()),
            B.transpose(1, 2).contiguous(),  # [B, N, L]
            C.transpose(1, 2).contiguous(),
            self.D.float(),
            z=gate.contiguous(),
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
        )
        return self.out_proj(outputs.transpose(1, 2))  # [B, L, D]


class Mamba4Rec(CausalSequentialRecommender):
    r"""Mamba4Rec: embedding, ``n_layers`` of (Mamba block, feed-forward), weight-tied scores."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info
        self.n_layers = config["n_layers"]
        self.hidden_size = config["hidden_size"]
        self.inner_size = config["inner_size"]
        self.hidden_dropout_prob = config["hidden_dropout_prob"]
        self.hidden_act = config["hidden_act"]
        self.layer_norm_eps = config["layer_norm_eps"]
        self.initializer_range = config["initializer_range"]
        self.d_state = config["d_state"]
        self.d_conv = config["d_conv"]
        self.expand = config["expand"]
        self.scan_backend = config["scan_backend"]
        self.torch_scan = config["torch_scan"]

        # define layers and loss
        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.item_bias = nn.Parameter(torch.zeros(self.n_items))
        self.emb_dropout = nn.Dropout(self.hidden_dropout_prob)
        self.emb_norm = nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps)
        self.mixers = nn.ModuleList(
            MambaMixer(
                self.hidden_size,
                self.d_state,
                self.d_conv,
                self.expand,
                scan_backend=self.scan_backend,
                torch_scan=self.torch_scan,
            )
            for _ in range(self.n_layers)
        )
        self.mixer_dropout = nn.Dropout(self.hidden_dropout_prob)
        self.mixer_norms = nn.ModuleList(
            nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps) for _ in range(self.n_layers)
        )
        self.feed_forwards = nn.ModuleList(
            FeedForward(
                self.hidden_size,
                self.inner_size,
                self.hidden_dropout_prob,
                self.hidden_act,
                self.layer_norm_eps,
            )
            for _ in range(self.n_layers)
        )

        # parameters initialization
        self.apply(self._init_weights)
        for mixer in self.mixers:
            mixer.reset_parameters()

    def forward_sequence(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        hidden = self.emb_norm(self.emb_dropout(self.item_embedding(item_seq)))  # [B, L, H]
        for mixer, norm, feed_forward in zip(self.mixers, self.mixer_norms, self.feed_forwards):
            mixed = self.mixer_dropout(mixer(hidden))
            # the authors keep the residual only when layers are stacked
            hidden = norm(mixed + hidden if self.n_layers > 1 else mixed)
            hidden = feed_forward(hidden)
        return hidden
