"""
recbole_hyena.model.abstract_recommender
########################################

What the plugin's causal models share.

- ``AllPositionMixin`` adds all-position training to any causal RecBole model that can return a
  representation at every position (``forward_sequence``): when a batch carries a per-position
  target list (the ``train_mode: autoregressive`` data path), the loss is cross-entropy at every
  target; otherwise the model's own (prefix) loss runs unchanged.
- ``CausalSequentialRecommender`` is the base of the plugin's own models: subclasses implement
  ``forward_sequence`` and get RecBole's ``forward`` (last valid position), weight-tied scores
  with an optional learnable item bias, the prefix losses (CE or BPR), ``predict`` and
  ``full_sort_predict``.
- ``read_block_chunk_size``, ``sequences_per_chunk`` and ``map_chunks``: the ``block_chunk_size``
  option of the models that run their layers a chunk of sequences at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.loss import BPRLoss
from torch import nn

# Prefix of the per-position target field written by the all-position data path:
# "target_" + ITEM_SEQ, e.g. ``target_item_id_list``; 0 marks a position without a target.
TARGET_PREFIX = "target_"
# glibc serves allocations above its mmap threshold (at most 32 MB) with fresh pages, which the
# kernel zero-fills on first touch: at L=1000 and batch 128 those page faults took a third of
# HyenaRec's CPU training step (and HyTRec spent 5.4 of its 17 CPU seconds a step in the kernel).
# ``block_chunk_size: auto`` keeps a model's widest tensors below this size.
CPU_CHUNK_BYTES = 24 * 2**20
# Score block size of the all-item cross-entropy. On CPU a block that stays in cache: its scores
# take about five passes (max, exp, sum, divide, cast) between the products. All-position CE over
# 128 x 1000 positions and 3,417 items, forward + backward, 2-core EPYC: 1,247-1,377 ms in 4 MiB
# blocks against 1,472-1,490 ms in 24 MiB ones; at ML-1M's 128 x 200, 240-256 against 307 ms.
# Accelerators' caching allocators make large blocks cheap.
CPU_SCORE_BYTES = 4 * 2**20
ACCELERATOR_SCORE_BYTES = 256 * 2**20


def read_block_chunk_size(config) -> int | str:
    """The ``block_chunk_size`` option: ``auto`` or an int >= 0 (0 or unset: the whole batch)."""
    value = config["block_chunk_size"] or 0
    if value != "auto" and (not isinstance(value, int) or value < 0):
        raise ValueError(
            f"block_chunk_size must be 'auto' or an int >= 0 (0: the whole batch), got [{value}]"
        )
    return value


def sequences_per_chunk(setting: int | str, item_seq: torch.Tensor, bytes_per_position: int) -> int:
    """Sequences per chunk under ``block_chunk_size: setting``. ``auto``: whole batches on
    accelerators (their caching allocators reuse memory); on CPU as many sequences as keep the
    model's widest tensor, ``bytes_per_position`` per position, within ``CPU_CHUNK_BYTES``.
    Every layer is per sequence, so chunking changes no result (dropout masks are drawn per
    chunk)."""
    if setting == "auto":
        if item_seq.device.type != "cpu":
            return len(item_seq)
        return max(1, CPU_CHUNK_BYTES // (item_seq.shape[1] * bytes_per_position))
    return setting or len(item_seq)


def map_chunks(
    function: Callable[..., torch.Tensor], chunk: int, *tensors: torch.Tensor | None
) -> torch.Tensor:
    """``function`` on successive chunks of ``chunk`` rows of ``tensors`` (a ``None`` is passed
    as ``None`` to every call), the results concatenated; one call when a chunk holds them all."""
    rows = len(tensors[0])
    if chunk >= rows:
        return function(*tensors)
    pieces = [[None] * -(-rows // chunk) if t is None else t.split(chunk) for t in tensors]
    return torch.cat([function(*arguments) for arguments in zip(*pieces)])


def all_items_cross_entropy(
    queries: torch.Tensor,
    item_matrix: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
) -> torch.Tensor:
    """Mean cross-entropy of the scores ``queries @ item_matrix.T + bias`` ``[N, n_items]``
    against ``targets`` ``[N]``; with gradients on, a block of rows at a time (see
    ``_BlockwiseScoresCrossEntropy``), otherwise directly."""
    if not torch.is_grad_enabled():
        scores = queries @ item_matrix.transpose(0, 1)
        return nn.functional.cross_entropy(scores if bias is None else scores + bias, targets)
    if bias is None:
        bias = item_matrix.new_zeros(())  # a constant: its gradient is dropped
    budget = CPU_SCORE_BYTES if queries.device.type == "cpu" else ACCELERATOR_SCORE_BYTES
    rows = max(1, budget // (4 * len(item_matrix)))
    return _BlockwiseScoresCrossEntropy.apply(queries, item_matrix, bias, targets, rows)


def _block_scores(block: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``block @ matrix.T + bias`` in float32; a 0-dim ``bias`` is the zero constant of a model
    without one. In float32 the bias enters the product itself (one pass fewer over the
    scores)."""
    if bias.dim() == 0:
        return (block @ matrix.t()).float()
    if block.dtype == torch.float32:
        return torch.addmm(bias.float(), block, matrix.t())
    return (block @ matrix.t()).float() + bias.float()


class _BlockwiseScoresCrossEntropy(torch.autograd.Function):
    """All-item cross-entropy with its gradients computed in the forward pass, ``rows`` score
    rows at a time. All-position training scores every position: at ML-1M's shape (batch 128,
    L=200, 3,417 items) the float32 scores are 350 MB, and autograd builds several such tensors
    (scores, biased scores, log-softmax, its gradient), which on CPU were half of HyenaRec's
    training step. Per block this computes the scores, their log-sum-exp and the gradient
    ``softmax - onehot``, multiplies it straight into the gradients of the queries, the item
    matrix and the bias, and frees it, so nothing of size [N, n_items] is ever kept. The same
    products as autograd's; under autocast they run in autocast's dtype and the softmax in
    float32, as ``F.linear`` and ``F.cross_entropy`` would."""

    @staticmethod
    def forward(ctx, queries, item_matrix, bias, targets, rows):
        device = queries.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        dtype = dtype or torch.promote_types(queries.dtype, item_matrix.dtype)
        with torch.autocast(device, enabled=False):
            matrix = item_matrix.to(dtype)
            grad_queries = torch.empty(queries.shape, dtype=dtype, device=queries.device)
            grad_matrix = torch.zeros(item_matrix.shape, dtype=torch.float32, device=queries.device)
            grad_bias = torch.zeros(len(item_matrix), dtype=torch.float32, device=queries.device)
            total = torch.zeros((), dtype=torch.float32, device=queries.device)
            for start in range(0, len(queries), rows):
                block = queries[start : start + rows].to(dtype)
                block_targets = targets[start : start + rows]
                scores = _block_scores(block, matrix, bias)  # [rows, n_items], float32
                target_scores = scores.gather(1, block_targets.unsqueeze(1))
                # d loss_sum / d scores = softmax - onehot, in place and with one exp: the
                # log-sum-exp comes from the softmax's own max and sum
                max_scores = scores.amax(dim=-1, keepdim=True)
                grad_scores = scores.sub_(max_scores).exp_()
                sums = grad_scores.sum(dim=-1, keepdim=True)
                total += (max_scores + sums.log() - target_scores).sum()
                grad_scores.div_(sums)
                grad_scores[torch.arange(len(block), device=block.device), block_targets] -= 1
                if ctx.needs_input_grad[2]:
                    grad_bias += grad_scores.sum(0)
                grad_scores = grad_scores.to(dtype)
                grad_queries[start : start + rows] = grad_scores @ matrix
                grad_matrix += (grad_scores.t() @ block).float()
        ctx.save_for_backward(grad_queries, grad_matrix, grad_bias)
        ctx.count = len(queries)
        return total / ctx.count

    @staticmethod
    def backward(ctx, grad_loss):
        grad_queries, grad_matrix, grad_bias = ctx.saved_tensors
        scale = grad_loss / ctx.count
        grad_bias = grad_bias * scale if ctx.needs_input_grad[2] else None
        return grad_queries * scale, grad_matrix * scale, grad_bias, None, None


class AllPositionMixin:
    """All-position cross-entropy for a causal model; put it first among the base classes."""

    @property
    def TARGET_ITEM_SEQ(self) -> str:
        return TARGET_PREFIX + self.ITEM_SEQ

    def forward_sequence(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """Representations at every position, ``[B, L, H]``; position t sees items 0..t."""
        raise NotImplementedError

    def score_operands(
        self, seq_output: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(queries, item_matrix, bias)`` such that the scores of all items are
        ``queries @ item_matrix.T + bias``: weight-tied to the item embedding, plus ``item_bias``
        when the model has one. Models that score otherwise override this."""
        return seq_output, self.item_embedding.weight, getattr(self, "item_bias", None)

    def item_scores(
        self, seq_output: torch.Tensor, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scores of ``items`` (same leading shape as ``seq_output``) or of all items."""
        if items is None:
            queries, item_matrix, bias = self.score_operands(seq_output)
            scores = queries @ item_matrix.transpose(0, 1)
            return scores if bias is None else scores + bias
        bias = getattr(self, "item_bias", None)
        scores = (seq_output * self.item_embedding(items)).sum(dim=-1)
        return scores if bias is None else scores + bias[items]

    def calculate_loss(self, interaction) -> torch.Tensor:
        if self.TARGET_ITEM_SEQ not in interaction:
            return super().calculate_loss(interaction)
        if self.loss_type != "CE":
            raise ValueError(
                f"train_mode 'autoregressive' needs loss_type 'CE', got [{self.loss_type}]"
            )
        item_seq = interaction[self.ITEM_SEQ]
        targets = interaction[self.TARGET_ITEM_SEQ]  # [B, L]
        output = self.forward_sequence(item_seq, interaction[self.ITEM_SEQ_LEN])  # [B, L, H]
        has_target = targets > 0
        return all_items_cross_entropy(
            *self.score_operands(output[has_target]), targets[has_target]
        )


class WeightTiedSequentialRecommender(SequentialRecommender):
    """RecBole's prefix protocol on top of ``forward_sequence``: the last valid position scores
    the next item, CE over all items or BPR against the sampled negative."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.loss_type = config["loss_type"]
        if self.loss_type == "BPR":
            self.loss_fct = BPRLoss()
        elif self.loss_type == "CE":
            self.loss_fct = nn.CrossEntropyLoss()
        else:
            raise NotImplementedError(
                f"loss_type [{self.loss_type}] is not supported; make sure it is in ['BPR', 'CE']"
            )
        # Subclasses with a learnable item bias replace this by an nn.Parameter [n_items].
        self.item_bias: torch.Tensor | None = None
        # ``torch_compile: True`` compiles ``forward_sequence`` and ``forward`` (lazily, at their
        # first calls): it fuses the element-wise work between the matrix products and FFTs. The
        # state dict keeps its keys, and nothing else depends on it.
        if config["torch_compile"]:
            self.forward_sequence = torch.compile(self.forward_sequence)
            self.forward = torch.compile(self.forward)

    def _init_weights(self, module: nn.Module) -> None:
        """RecBole's SASRec initialisation, for ``self.apply``: N(0, initializer_range) weights,
        zero biases, unit LayerNorms."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        output = self.forward_sequence(item_seq, item_seq_len)  # [B, L, H]
        return self.gather_indexes(output, item_seq_len - 1)  # [B, H]

    def calculate_loss(self, interaction) -> torch.Tensor:
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        pos_items = interaction[self.POS_ITEM_ID]
        if self.loss_type == "BPR":
            pos_score = self.item_scores(seq_output, pos_items)
            neg_score = self.item_scores(seq_output, interaction[self.NEG_ITEM_ID])
            return self.loss_fct(pos_score, neg_score)
        return self.loss_fct(self.item_scores(seq_output), pos_items)

    def predict(self, interaction) -> torch.Tensor:
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return self.item_scores(seq_output, interaction[self.ITEM_ID])  # [B]

    def full_sort_predict(self, interaction) -> torch.Tensor:
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return self.item_scores(seq_output)  # [B, n_items]


class CausalSequentialRecommender(AllPositionMixin, WeightTiedSequentialRecommender):
    """Base of the plugin's causal models: implement ``forward_sequence``, define
    ``item_embedding`` (and optionally ``item_bias``), and both training modes work."""
