r"""Haar-random rotation: ``Q`` from the QR factorization of a seeded float64 Gaussian matrix, signs fixed.

``G ~ N(0, 1)^{n×n}`` is drawn in float64 on CPU from ``torch.Generator().manual_seed(seed)``; ``G = QR`` and
``Q ← Q·diag(sign(diag R))`` makes the factorization unique, so ``Q`` is exactly Haar-distributed on ``O(n)``
(Mezzadri, "How to generate random matrices from the classical compact groups", Notices AMS 2007; QuaRot's
``random_orthogonal_matrix``, arXiv 2404.00456). Without the sign fix the law is not Haar.

**Storage:** the matrix is a function of ``(n, seed)`` only, so only the seed is stored, plus a short
*fingerprint* (the first entries of row 0, float64). Loading a state regenerates ``Q`` and checks the fingerprint,
so a state saved under a torch whose CPU Gaussian generator differs is rejected with a clear error instead of
silently loading a different rotation. Cost: ``O(n³)`` once (cached), ``O(n²)`` per vector.

Example:
    >>> import torch
    >>> from orthokit.rotation.haar import HaarRotation
    >>> r = HaarRotation(8, seed=1)
    >>> Q = r.matrix()
    >>> bool(torch.allclose(Q.T @ Q, torch.eye(8, dtype=torch.float64), atol=1e-12))
    True
    >>> bool(torch.equal(HaarRotation(8, seed=1).matrix(), Q)), bool(torch.equal(HaarRotation(8, seed=2).matrix(), Q))
    (True, False)
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from orthokit.rotation.base import Rotation
from orthokit.rotation.registry import ROTATIONS

__all__ = ["HaarRotation", "haar_matrix"]

_FINGERPRINT = 8


def haar_matrix(n: int, seed: int) -> Tensor:
    """The float64 CPU Haar-random ``(n, n)`` orthogonal matrix of ``seed`` (QR of a Gaussian, sign-fixed).

    Example:
        >>> haar_matrix(3, 0).shape
        torch.Size([3, 3])
    """
    if n <= _CACHE_MAX_N:
        return _haar_cached(n, seed).clone()
    return _haar(n, seed)


def _haar(n: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    d = torch.sign(torch.diagonal(r))
    d = torch.where(d == 0, torch.ones_like(d), d)
    return q * d


# the O(n³) QR is the cost of a Haar rotation: keep the last few small ones (≤ 8 × 8 MiB)
_CACHE_MAX_N = 1024
_haar_cached = lru_cache(maxsize=8)(_haar)


@ROTATIONS.register(
    "haar",
    aliases=("random", "random_orthogonal"),
    structured=False,
    cost="n^2",
    haar_marginals="exact",
    seeded=True,
    randomized=True,
    any_n=True,
)
class HaarRotation(Rotation):
    """Haar-random orthogonal ``Q``, regenerated deterministically in float64 from ``(n, seed)``.

    Args:
        n: size.
        seed: int seed (required: the seed *is* the stored definition).
    """

    name = "haar"

    def __init__(self, n: int, *, seed: int | None = 0) -> None:
        super().__init__(n, seed=seed)
        if self.seed is None:
            raise ValueError("haar rotation needs an int seed (the matrix is a function of (n, seed))")

    def _dense64(self) -> Tensor:
        assert self.seed is not None
        return haar_matrix(self.n, self.seed)

    def _state(self) -> dict[str, Any]:
        return {"fingerprint": self._q64()[0, :_FINGERPRINT].clone()}

    @classmethod
    def _from_state(cls, n: int, seed: int | None, d: dict[str, Any]) -> Rotation:
        if seed is None:
            raise ValueError("haar rotation state needs an int 'seed'")
        rot = cls(n, seed=seed)
        fp = d.get("fingerprint")
        if fp is not None:
            k = min(n, _FINGERPRINT)
            if not isinstance(fp, Tensor) or tuple(fp.shape) != (k,):
                raise ValueError(f"haar rotation state 'fingerprint' must be a tensor of shape ({k},)")
            if not torch.allclose(fp.detach().cpu().to(torch.float64), rot._q64()[0, :k], rtol=0, atol=1e-12):
                raise ValueError(
                    f"haar rotation state does not match the matrix regenerated from seed {seed} "
                    f"(saved under a torch with a different CPU Gaussian generator?)"
                )
        return rot
