"""The Sparse Mamba half of the stability report: what each layer's state matrix structure
guarantees, checked on the trained weights rather than assumed from the parameterization.

Per SC / SO layer, in fp64 over every channel's dense n x n companion matrix A:
- the largest real part of A's eigenvalues (eigvals of the dense matrix, not the roots it was built
  from, so a bug in the companion construction would show): < 0 means A is Hurwitz;
- the rank (min over channels) and 2-norm condition number (max over channels) of the controllability
  matrix [B, AB, ..., A^{n-1}B] with B = e_n (SC), or of the observability matrix [C; CA; ...; CA^{n-1}]
  with C = e_n^T (SO). A rank of n means every state is reachable (SC) or visible in the output (SO);
  the condition number says how close the channel is to losing that.
Per ST-Mamba2 layer: the largest A (every head's A is <= -STABLE_FLOOR) and how many heads the constraint
holds at that floor.
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from worker.engine.families import ssm_mixers
from worker.engine.sparse_mamba import clamped_heads, is_companion, is_stable, mixer_A
from worker.evaluation.stability.lyapunov import ssm_A


@dataclass(frozen=True)
class LayerStructure:
    layer: int
    variant: str  # "controllable" | "observable" | "stable"
    max_real_eigenvalue: float  # over channels (SC/SO) or heads (ST)
    rank: int | None = None  # SC/SO: min over channels of the controllability / observability rank
    condition_number: float | None = None  # SC/SO: max over channels
    clamped_heads: int | None = None  # ST: heads held at the floor


def krylov(A: Tensor) -> Tensor:
    """[e_n, A e_n, ..., A^{n-1} e_n] per channel: A (d, n, n) -> (d, n, n)."""
    d, n, _ = A.shape
    column = torch.zeros(d, n, 1, dtype=A.dtype, device=A.device)
    column[:, -1] = 1
    columns = [column]
    for _ in range(n - 1):
        columns.append(A @ columns[-1])
    return torch.cat(columns, dim=-1)


@torch.no_grad()
def layer_structure(layer: int, mixer: nn.Module) -> LayerStructure | None:
    if is_stable(mixer):
        return LayerStructure(layer, "stable", float(ssm_A(mixer).max()), clamped_heads=clamped_heads(mixer))
    if not is_companion(mixer):
        return None
    A = mixer_A(mixer).cpu()  # (d_inner, n, n) fp64
    # The observability matrix of (A, e_n^T) is the transpose of the controllability matrix of (A^T, e_n):
    # same rank, same condition number.
    K = krylov(A.transpose(1, 2) if mixer.ssm_structure == "observable" else A)
    return LayerStructure(
        layer,
        mixer.ssm_structure,
        float(torch.linalg.eigvals(A).real.max()),
        rank=int(torch.linalg.matrix_rank(K).min()),
        condition_number=float(torch.linalg.cond(K).max()),
    )


def structure_checks(model: nn.Module) -> list[LayerStructure]:
    """One entry per SC / SO / ST layer of `model`; empty for stock models."""
    return [s for i, m in enumerate(ssm_mixers(model)) if (s := layer_structure(i, m)) is not None]
