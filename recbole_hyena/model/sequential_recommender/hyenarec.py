"""
HyenaRec
################################################

Reference:
    "Hyena Operator for Fast Sequential Recommendation" (HyenaRec), 2026.
    Michael Poli et al. "Hyena Hierarchy: Towards Larger Convolutional Language Models." in ICML 2023.

HyenaRec stacks pre-norm residual blocks whose mixer is a Hyena operator: a GLU-gated short path
makes the modulation streams, and causal long convolutions (FFT, O(L log L)) with kernels drawn
from a fixed Legendre basis mix the whole history. Scores are weight-tied to the item embedding
plus a learnable item bias.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from recbole_hyena.model.abstract_recommender import (
    CausalSequentialRecommender,
    map_chunks,
    read_block_chunk_size,
    sequences_per_chunk,
)
from recbole_hyena.model.filters import KernelGenerator, build_kernel_generator
from recbole_hyena.model.fused_norm import LayerNorm
from recbole_hyena.model.layers import (
    Dropout,
    HyenaOperator,
    PreNormBlock,
    ShortPath,
    checkpointed,
)


class HyenaRec(CausalSequentialRecommender):
    r"""HyenaRec: Hyena-operator blocks over item embeddings, no positional embedding (position
    enters through the long kernels).

    The kernel basis (``filter_type``), the GLU (``use_glu``) and the short conv's dilation
    (``short_conv_dilation``) are config values, so the paper's ablations are this class with
    another property file.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info
        self.n_layers = config["n_layers"]
        self.hidden_size = config["hidden_size"]
        self.inner_size = config["inner_size"]
        self.hidden_dropout_prob = config["hidden_dropout_prob"]
        self.hidden_act = config["hidden_act"]
        self.layer_norm_eps = config["layer_norm_eps"]
        self.layer_norm_backend = config["layer_norm_backend"] or "auto"
        self.initializer_range = config["initializer_range"]
        self.hyena_order = config["hyena_order"]
        self.filter_type = config["filter_type"]
        self.short_conv_size = config["short_conv_size"]
        self.short_conv_dilation = config["short_conv_dilation"]
        self.use_glu = config["use_glu"]
        self.gradient_checkpointing = config["gradient_checkpointing"]
        self.block_chunk_size = read_block_chunk_size(config)

        # define layers and loss
        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.item_bias = nn.Parameter(torch.zeros(self.n_items))
        self.emb_dropout = Dropout(self.hidden_dropout_prob)
        self.blocks = nn.ModuleList(
            PreNormBlock(
                self.hidden_size,
                self._build_mixer(config),
                self.inner_size,
                self.hidden_dropout_prob,
                self.hidden_act,
                self.layer_norm_eps,
                self.layer_norm_backend,
            )
            for _ in range(self.n_layers)
        )
        self.final_norm = LayerNorm(
            self.hidden_size, eps=self.layer_norm_eps, backend=self.layer_norm_backend
        )

        # parameters initialization
        self.apply(self._init_weights)
        # The generic pass above re-draws every nn.Linear; the operators and the kernel generators
        # (some of which hold MLPs) restore their own initialisation.
        for module in self.modules():
            if isinstance(module, (HyenaOperator, KernelGenerator)):
                module.reset_parameters()

    def _build_mixer(self, config) -> HyenaOperator:
        long_filter = build_kernel_generator(
            self.filter_type, self.hyena_order * self.hidden_size, config
        )
        short_path = ShortPath(
            self.hidden_size,
            n_streams=self.hyena_order + 1,
            kernel_size=self.short_conv_size,
            dilation=self.short_conv_dilation,
            glu=self.use_glu,
        )
        return HyenaOperator(
            self.hidden_size, self.hyena_order, long_filter, short_path, self.max_seq_length
        )

    def forward_sequence(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        return self.final_norm(self.hidden_states(item_seq))  # [B, L, H]

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        # Prefix training and every evaluation score the last position only. Everything after
        # the last block's mixer works per position, so that block runs its last long
        # convolution, its MLP and the final LayerNorm at the gathered positions alone.
        hidden = self.hidden_states(item_seq, positions=item_seq_len - 1)
        return self.final_norm(hidden)  # [B, H]

    def hidden_states(
        self, item_seq: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The blocks' output before the final LayerNorm, ``[B, L, H]``; with ``positions``
        (``[B]``) only at those positions, ``[B, H]``.

        The whole stack runs ``block_chunk_size`` sequences at a time (every layer is
        per-sequence, so the result is the same): on CPU, where the allocator maps and
        zero-fills fresh pages for every tensor above 32 MB, chunks keep each tensor small and
        no full-batch ``[B, L, H]`` tensor is built. With ``gradient_checkpointing`` only each
        block's input is kept for the backward pass, which recomputes the block's activations
        (same dropout masks), so the peak memory follows the chunk, not the batch."""
        chunk = sequences_per_chunk(self.block_chunk_size, item_seq, self._bytes_per_position())
        # The long kernels and their spectra depend on L only: built once here rather than in
        # every chunk (at L=8000 a chunk holds 1-2 sequences).
        kernels = [block.mixer.conv_kernels(item_seq.shape[1]) for block in self.blocks]
        return map_chunks(partial(self._run_stack, kernels=kernels), chunk, item_seq, positions)

    def _run_stack(
        self,
        item_seq: torch.Tensor,
        positions: torch.Tensor | None,
        *,
        kernels: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """The blocks on one chunk of sequences; ``kernels``: each block's ``conv_kernels``."""
        mask = (item_seq > 0).unsqueeze(-1).to(self.item_embedding.weight.dtype)  # [B, L, 1]
        hidden = self.emb_dropout(self.item_embedding(item_seq))  # [B, L, H]
        last = len(self.blocks) - 1
        for index, block in enumerate(self.blocks):
            run = checkpointed(block, self.gradient_checkpointing)
            hidden = run(
                hidden,
                mask,
                positions=positions if index == last else None,
                conv_kernels=kernels[index],
            )
        return hidden

    def _bytes_per_position(self) -> int:
        """Of the block's widest tensor, the short path's (for ``sequences_per_chunk``)."""
        width = self.blocks[0].mixer.short_path.in_proj.out_features
        return width * self.item_embedding.weight.element_size()


# The paper's ablations (Table 4 and Appendix C). Each is HyenaRec under another name with its
# own property file, which sets the value that differs; no code changes.


class HyenaRecWoPK(HyenaRec):
    """HyenaRec w/o PK: the original Hyena implicit filter instead of the polynomial kernel
    (``filter_type: implicit``)."""


class HyenaRecWoGLU(HyenaRec):
    """HyenaRec w/o GLU: a plain short convolution, no GLU gating (``use_glu: False``)."""


class HyenaRecFourier(HyenaRec):
    """HyenaRec (Fourier): kernels from a fixed sin/cos basis (``filter_type: fourier``)."""


class HyenaRecChebyshev(HyenaRec):
    """HyenaRec (Chebyshev): kernels from a Chebyshev basis (``filter_type: chebyshev``)."""


class HyenaVanilla(HyenaRec):
    """The original Hyena in this recommender: implicit filter and no GLU
    (``filter_type: implicit``, ``use_glu: False``)."""


class AtrousHyena(HyenaVanilla):
    """HyenaVanilla with an atrous (dilated) short convolution (``short_conv_dilation: 2``)."""
