"""Weighted gathers of table rows, the kernel under devoxelisation and 3-NN interpolation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


class _WeightedRows(torch.autograd.Function):
    # embedding_bag is a fast fused forward, but its CPU backward sorts the indices and was
    # ~4x slower than accumulating with index_put_ (measured at PVD sizes).
    # Both directions compute in the weights' dtype (float32 or wider, see weighted_rows): a
    # bf16 table is widened, not the weights rounded to bf16; results take the table's dtype.

    @staticmethod
    def forward(ctx, table: Tensor, rows: Tensor, weights: Tensor) -> Tensor:
        ctx.save_for_backward(rows, weights)
        ctx.num_rows = table.shape[0]
        ctx.dtype = table.dtype
        out = F.embedding_bag(rows, table.to(weights.dtype), per_sample_weights=weights, mode="sum")
        return out.to(table.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        rows, weights = ctx.saved_tensors
        values = (grad.to(weights.dtype).unsqueeze(1) * weights.unsqueeze(2)).reshape(-1, grad.shape[1])
        table_grad = values.new_zeros(ctx.num_rows, grad.shape[1]).index_put_((rows.reshape(-1),), values, accumulate=True)
        return table_grad.to(ctx.dtype), None, None


def weighted_rows(table: Tensor, rows: Tensor, weights: Tensor) -> Tensor:
    """out[i] = sum_k weights[i, k] * table[rows[i, k]].

    table: (R, C); rows: (P, K) int64; weights: (P, K) (no gradient). Returns (P, C) in the
    table's dtype, computed and accumulated in float32 (or float64 for a float64 table);
    gradients reach ``table``.
    """
    return _WeightedRows.apply(table, rows, weights.to(torch.promote_types(table.dtype, torch.float32)))
