"""Global negatives: gather features from every rank so the contrastive loss sees the whole
global batch, with gradients flowing back to the rank that computed each slice.

Convention (used by the models' losses): every rank computes the SAME full loss over the gathered
batch. The backward of `all_gather_with_grad` sums the incoming gradients over ranks and returns
this rank's slice, so a rank's parameters get world_size x dL/d(own features); DDP then averages
parameter gradients over ranks, which gives exactly dL/dtheta of the one-process full-batch loss.
Without the sum, DDP's average would scale the gradient by 1/world_size.

Ranks may hold different batch sizes (a short last batch) and different sizes in other dims
(word counts): tensors are zero-padded to the largest shape, gathered, and trimmed on dim 0.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def _gather_shapes(t: torch.Tensor) -> list[list[int]]:
    shape = torch.tensor(list(t.shape), dtype=torch.long, device=t.device)
    shapes = [torch.zeros_like(shape) for _ in range(world_size())]
    dist.all_gather(shapes, shape)
    return [s.tolist() for s in shapes]


def _pad_to(t: torch.Tensor, shape: list[int]) -> torch.Tensor:
    if list(t.shape) == shape:
        return t
    out = t.new_zeros(shape)
    out[tuple(slice(0, n) for n in t.shape)] = t
    return out


def _gather_padded(t: torch.Tensor) -> tuple[torch.Tensor, list[int], list[int]]:
    """(concatenated tensor, per-rank dim-0 sizes, padded shape); no autograd."""
    shapes = _gather_shapes(t)
    padded_shape = [max(dims) for dims in zip(*shapes)]
    local = _pad_to(t.contiguous(), padded_shape)
    if local.dtype == torch.bool:  # gloo has no bool all_gather
        parts = [torch.zeros_like(local, dtype=torch.uint8) for _ in shapes]
        dist.all_gather(parts, local.to(torch.uint8))
        parts = [p.bool() for p in parts]
    else:
        parts = [torch.zeros_like(local) for _ in shapes]
        dist.all_gather(parts, local)
    sizes = [s[0] for s in shapes]
    return torch.cat([p[:n] for p, n in zip(parts, sizes)], dim=0), sizes, padded_shape


def all_gather_padded(t: torch.Tensor) -> torch.Tensor:
    """Concatenate `t` from every rank along dim 0 without gradient (masks, labels)."""
    if world_size() == 1:
        return t
    return _gather_padded(t)[0]


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        out, sizes, _ = _gather_padded(t)
        ctx.local_shape = list(t.shape)
        ctx.offset = sum(sizes[: rank()])
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # every rank's loss depends on our slice
        n = ctx.local_shape[0]
        piece = grad[ctx.offset: ctx.offset + n]
        return piece[tuple(slice(0, d) for d in ctx.local_shape)]


def all_gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate `t` from every rank along dim 0; the gradient reaches this rank's slice
    (summed over the ranks' losses). Identity when not distributed."""
    if world_size() == 1:
        return t
    return _AllGatherWithGrad.apply(t)
