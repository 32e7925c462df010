"""
recbole_hyena.model.fused_norm
##############################

A ``LayerNorm`` with ``nn.LayerNorm``'s parameters and results that runs a Triton kernel on CUDA
for many short rows. PyTorch's CUDA kernel gives each row its own thread block; with the hidden
sizes of sequential recommenders (64) most of the block's threads idle, and at ``B * L`` = 512k
rows one LayerNorm took 0.78 ms forward and 0.87 ms backward on an H200, a quarter of HyenaRec's
bf16 training step at L=4000. The kernels here normalise a tile of rows per program and reduce
the weight and bias gradients per tile, then once over the tiles: on an H100, 512k x 64 fp32,
0.15 ms forward and 0.64 ms forward + backward against PyTorch's 0.77 and 1.42 ms (2M rows:
0.38 and 1.48 ms against 3.02 and 5.51).

Triton ships with PyTorch's CUDA builds; without it, on CPU, under ``torch.compile`` (whose own
fused kernel is as good) and for rows longer than ``MAX_TRITON_COLUMNS`` the module is
``nn.LayerNorm``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU builds of PyTorch do not ship Triton
    triton = None

LAYER_NORM_BACKENDS = ("auto", "torch", "triton")
MAX_TRITON_COLUMNS = 1024  # beyond this PyTorch's row-per-block kernel is already efficient
# Below this many rows ``auto`` keeps PyTorch's kernel: a Triton launch costs more host time
# (H100 host, [128, 64]: 54 us forward against 15 us), which shows where a step is launch-bound.
# HyenaRec, bf16, B=128, H=64 on an H100: Triton 3.2 ms slower at L=1000 (128k rows), 2.0 ms
# faster at L=2000 (256k rows), 3.7 ms at L=4000.
MIN_TRITON_ROWS = 192 * 1024
_TILE_ELEMENTS = 4096  # rows per program = this / the padded row length


def triton_available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit
    def _row_tile(tile, n_rows, n_cols, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
        """Program ``tile``'s rows and the columns, their masks, and the element offsets of the
        ``[BLOCK_ROWS, BLOCK_COLS]`` tile in a row-major ``[n_rows, n_cols]`` tensor."""
        rows = tile.to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        cols = tl.arange(0, BLOCK_COLS)
        row_mask = rows < n_rows
        col_mask = cols < n_cols
        mask = row_mask[:, None] & col_mask[None, :]
        return rows, cols, row_mask, col_mask, mask, rows[:, None] * n_cols + cols[None, :]

    @triton.jit
    def _layer_norm_forward_kernel(
        inputs_ptr,
        outputs_ptr,
        weight_ptr,
        bias_ptr,
        mean_ptr,
        rstd_ptr,
        n_rows,
        n_cols,
        eps,
        BLOCK_ROWS: tl.constexpr,
        BLOCK_COLS: tl.constexpr,
    ):
        rows, cols, row_mask, col_mask, mask, offsets = _row_tile(
            tl.program_id(0), n_rows, n_cols, BLOCK_ROWS, BLOCK_COLS
        )
        x = tl.load(inputs_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=1) / n_cols
        centred = tl.where(mask, x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / n_cols + eps)
        weight = tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        bias = tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        y = centred * rstd[:, None] * weight[None, :] + bias[None, :]
        tl.store(outputs_ptr + offsets, y.to(outputs_ptr.dtype.element_ty), mask=mask)
        tl.store(mean_ptr + rows, mean, mask=row_mask)
        tl.store(rstd_ptr + rows, rstd, mask=row_mask)

    @triton.jit
    def _layer_norm_backward_kernel(
        grad_outputs_ptr,
        inputs_ptr,
        weight_ptr,
        mean_ptr,
        rstd_ptr,
        grad_inputs_ptr,
        grad_weight_tiles_ptr,
        grad_bias_tiles_ptr,
        n_rows,
        n_cols,
        BLOCK_ROWS: tl.constexpr,
        BLOCK_COLS: tl.constexpr,
    ):
        tile = tl.program_id(0)
        rows, cols, row_mask, col_mask, mask, offsets = _row_tile(
            tile, n_rows, n_cols, BLOCK_ROWS, BLOCK_COLS
        )
        x = tl.load(inputs_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(grad_outputs_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + rows, mask=row_mask, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=row_mask, other=0.0)
        weight = tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        x_hat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        weighted_dy = dy * weight[None, :]  # zero outside the mask: dy loaded as 0 there
        # d/dx of (x - mean) * rstd, applied to weighted_dy: subtract its mean and its projection
        # on x_hat, then scale by rstd
        projection = tl.sum(x_hat * weighted_dy, axis=1) / n_cols
        mean_dy = tl.sum(weighted_dy, axis=1) / n_cols
        dx = (weighted_dy - x_hat * projection[:, None] - mean_dy[:, None]) * rstd[:, None]
        tl.store(grad_inputs_ptr + offsets, dx.to(grad_inputs_ptr.dtype.element_ty), mask=mask)
        tile_offsets = tile * n_cols + cols
        tl.store(grad_weight_tiles_ptr + tile_offsets, tl.sum(dy * x_hat, axis=0), mask=col_mask)
        tl.store(grad_bias_tiles_ptr + tile_offsets, tl.sum(dy, axis=0), mask=col_mask)


def _tile_shape(n_cols: int) -> tuple[int, int]:
    block_cols = triton.next_power_of_2(n_cols)
    return max(1, _TILE_ELEMENTS // block_cols), block_cols


class _TritonLayerNorm(torch.autograd.Function):
    # Under autocast, cast to float32 as autocast does for F.layer_norm, so the outputs and their
    # dtype are those of nn.LayerNorm.
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, inputs, weight, bias, eps):
        n_cols = inputs.shape[-1]
        rows = inputs.reshape(-1, n_cols).contiguous()
        outputs = torch.empty_like(rows)
        mean = torch.empty(len(rows), dtype=torch.float32, device=rows.device)
        rstd = torch.empty_like(mean)
        block_rows, block_cols = _tile_shape(n_cols)
        grid = (triton.cdiv(len(rows), block_rows),)
        _layer_norm_forward_kernel[grid](
            rows, outputs, weight, bias, mean, rstd, len(rows), n_cols, eps,
            BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols,
        )  # fmt: skip
        ctx.save_for_backward(rows, weight, mean, rstd)
        return outputs.view(inputs.shape)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_outputs):
        rows, weight, mean, rstd = ctx.saved_tensors
        n_cols = rows.shape[-1]
        grad_rows = grad_outputs.reshape(-1, n_cols).contiguous()
        grad_inputs = torch.empty_like(rows)
        block_rows, block_cols = _tile_shape(n_cols)
        n_tiles = triton.cdiv(len(rows), block_rows)
        tile_sums = torch.empty(2, n_tiles, n_cols, dtype=torch.float32, device=rows.device)
        _layer_norm_backward_kernel[(n_tiles,)](
            grad_rows, rows, weight, mean, rstd, grad_inputs, tile_sums[0], tile_sums[1],
            len(rows), n_cols, BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols,
        )  # fmt: skip
        grad_weight, grad_bias = tile_sums.sum(1).to(weight.dtype)
        return grad_inputs.view(grad_outputs.shape), grad_weight, grad_bias, None


def triton_layer_norm(
    inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """``F.layer_norm(inputs, inputs.shape[-1:], weight, bias, eps)`` by the Triton kernels."""
    if triton is None:
        raise RuntimeError(
            "triton_layer_norm needs the triton package (PyTorch's CUDA builds ship it)"
        )
    return _TritonLayerNorm.apply(inputs, weight, bias, eps)


def triton_pays(shape: torch.Size) -> bool:
    """Whether ``auto`` takes the Triton kernels for inputs of this shape (on CUDA)."""
    n_cols = shape[-1]
    return n_cols <= MAX_TRITON_COLUMNS and math.prod(shape) >= MIN_TRITON_ROWS * n_cols


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last dimension (same parameters, state-dict keys and results)
    whose ``backend`` picks the kernel: ``torch``, ``triton`` (CUDA inputs; an error where
    Triton is missing) or ``auto`` (Triton where it runs and pays: CUDA inputs of at least
    ``MIN_TRITON_ROWS`` rows of at most ``MAX_TRITON_COLUMNS``, not under ``torch.compile``)."""

    def __init__(self, normalized_shape: int, eps: float = 1e-5, backend: str = "auto"):
        super().__init__(normalized_shape, eps=eps)
        if backend not in LAYER_NORM_BACKENDS:
            raise ValueError(
                f"layer_norm_backend must be one of {list(LAYER_NORM_BACKENDS)}, got [{backend}]"
            )
        if backend == "triton" and triton is None:
            raise ValueError(
                "layer_norm_backend is 'triton' but the triton package is not installed (it "
                "ships with PyTorch's CUDA builds); use 'auto' or 'torch'"
            )
        self.backend = backend

    def _use_triton(self, inputs: torch.Tensor) -> bool:
        if self.backend == "torch" or triton is None or not inputs.is_cuda:
            return False
        if torch.compiler.is_compiling():
            return False
        return self.backend == "triton" or triton_pays(inputs.shape)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self._use_triton(inputs):
            return triton_layer_norm(inputs, self.weight, self.bias, self.eps)
        return F.layer_norm(inputs, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend}"


def replace_layer_norms(model: nn.Module, backend: str = "auto") -> int:
    """Swap each ``nn.LayerNorm`` of ``model`` over the last dimension, with weight and bias, for
    this ``LayerNorm`` with the same parameters (e.g. to time RecBole's zoo models with the same
    kernel). Returns the number swapped."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.LayerNorm or len(child.normalized_shape) != 1:
                continue
            if child.weight is None or child.bias is None:
                continue
            replacement = LayerNorm(child.normalized_shape[0], eps=child.eps, backend=backend)
            replacement.to(device=child.weight.device, dtype=child.weight.dtype)
            replacement.load_state_dict(child.state_dict())
            setattr(parent, name, replacement)
            swapped += 1
    return swapped
