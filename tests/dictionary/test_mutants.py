"""Mutants of the dictionary learners must FAIL the conformance checks (tests/dictionary/conformance.py).

Each mutant keeps the learner's interface and breaks one defining step; a check that still passed on it would not
be testing the learner's purpose. The unmodified learners pass the same checks in test_conformance.py.

Mutants of the online Frank–Wolfe *schedules* (``ρ_t = 1``: no gradient averaging; ``γ_t = 1``: no iterate
averaging) still serve the purpose — they recover planted dictionaries, stay orthogonal and keep constant memory —
so no purpose check can reject them; they break fidelity to the algorithm, and the float64 numpy reference of every
step rejects them (``test_online_fw.py::test_reference_comparison_rejects_algorithm_mutants``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from orthokit.dictionary._common import check_data, orthogonal_polar
from orthokit.dictionary.batch_msp import BatchMSP
from orthokit.dictionary.batch_procrustes import BatchProcrustesDL
from orthokit.dictionary.online_fw import OnlineFrankWolfeODL
from orthokit.dictionary.sparse import hard_threshold

from . import conformance as C


class FWNoPolar(OnlineFrankWolfeODL):
    """Reports the Frank–Wolfe iterate itself (a convex combination of rotations) as the dictionary."""

    @property
    def dictionary(self) -> Tensor:
        return self._D.clone()


class FWKeepsHistory(OnlineFrankWolfeODL):
    """Stores every batch it has seen (memory grows with the stream)."""

    def partial_fit(self, Y: Tensor) -> FWKeepsHistory:
        super().partial_fit(Y)
        self.__dict__.setdefault("history", []).append(Y.clone())
        return self


class FWKeepsNumpyHistory(OnlineFrankWolfeODL):
    """Stores a numpy copy of every batch (invisible to a walk that only counts torch tensors)."""

    def partial_fit(self, Y: Tensor) -> FWKeepsNumpyHistory:
        super().partial_fit(Y)
        self.__dict__.setdefault("_np_history", []).append(Y.detach().numpy().copy())
        return self


class _Box:
    """A plain holder object, to hide state several objects deep."""

    inner: Any


class FWKeepsNestedHistory(OnlineFrankWolfeODL):
    """Stores every batch as a tensor three objects deep (``self._box.inner.inner.h``)."""

    def partial_fit(self, Y: Tensor) -> FWKeepsNestedHistory:
        super().partial_fit(Y)
        if "_box" not in self.__dict__:
            self._box = _Box()
            self._box.inner = _Box()
            self._box.inner.inner = _Box()
            self._box.inner.inner.h = []
        self._box.inner.inner.h.append(Y.clone())
        return self


class FWKeepsGapHistory(OnlineFrankWolfeODL):
    """Logs a Python float per step (a list that grows with the stream, no tensor at all)."""

    def partial_fit(self, Y: Tensor) -> FWKeepsGapHistory:
        super().partial_fit(Y)
        self.__dict__.setdefault("gap_history", []).append(self.fw_gap)
        return self


class FWKeepsSmallest(OnlineFrankWolfeODL):
    """Sparse coding keeps the SMALLEST coefficients."""

    def transform(self, Y: Tensor, *, sparsity: int | None = None, threshold: float | None = None) -> Tensor:
        C_ = self.dictionary.T @ check_data(Y, self.d, self.dtype)
        if sparsity is None:
            return hard_threshold(C_, threshold=threshold)
        keep = C_.abs().topk(sparsity, dim=0, largest=False).indices
        return torch.zeros_like(C_).scatter_(0, keep, C_.gather(0, keep))


class FWNoUpdate(OnlineFrankWolfeODL):
    """Validates and counts the batch but never moves the dictionary."""

    def partial_fit(self, Y: Tensor) -> FWNoUpdate:
        self.n_samples_seen += check_data(Y, self.d, self.dtype).shape[1]
        self.t += 1
        return self


class FWCommitsEarly(OnlineFrankWolfeODL):
    """Advances its step counter before validating the batch (a failed step changes the state)."""

    def partial_fit(self, Y: Tensor) -> FWCommitsEarly:
        self.t += 1
        self.t -= 1 if isinstance(Y, Tensor) and bool(torch.isfinite(Y).all()) and Y.shape[0] == self.d else 0
        return super().partial_fit(Y)


class MSPMatchesLinearly(BatchMSP):
    """MSP whose matching step forgets the cube: ``polar(Y (DᵀY)ᵀ)`` is the ℓ2 gradient, constant on ``O(d)``."""

    def step(self, Y: Tensor) -> MSPMatchesLinearly:
        Yc = check_data(Y, self.d, self.dtype)
        self._D = orthogonal_polar(Yc @ (self._D.T @ Yc).T)
        return self


class ProcrustesTransposed(BatchProcrustesDL):
    """Procrustes step with the product transposed: ``polar(X Yᵀ)`` instead of ``polar(Y Xᵀ)``."""

    def step(self, Y: Tensor) -> ProcrustesTransposed:
        Yc = check_data(Y, self.d, self.dtype)
        self._D = orthogonal_polar(self._code(Yc) @ Yc.T)
        return self


def _make(cls: type) -> C.Factory:
    return lambda d, seed: cls(d, seed=seed)


MUTANTS: list[tuple[type, Callable[..., Any]]] = [
    (FWNoPolar, C.check_exact_orthogonal),
    (FWKeepsHistory, C.check_online_memory_constant),
    (FWKeepsNumpyHistory, C.check_online_memory_constant),
    (FWKeepsNestedHistory, C.check_online_memory_constant),
    (FWKeepsGapHistory, C.check_online_memory_constant),
    (FWKeepsSmallest, C.check_sparse_coding),
    (FWNoUpdate, C.check_recovers_planted),
    (FWCommitsEarly, C.check_bad_batch_untouched),
    (MSPMatchesLinearly, C.check_recovers_planted),
    (ProcrustesTransposed, C.check_recovers_planted),
]


@pytest.mark.parametrize(("cls", "check"), MUTANTS, ids=[f"{c.__name__}-{k.__name__}" for c, k in MUTANTS])
def test_mutant_fails(cls: type, check: Callable[..., Any]) -> None:
    with pytest.raises(AssertionError):
        check(_make(cls))


@pytest.mark.parametrize("cls", [OnlineFrankWolfeODL, BatchMSP, BatchProcrustesDL])
def test_originals_pass_the_checks_their_mutants_fail(cls: type) -> None:
    checks = {k for c, k in MUTANTS if issubclass(c, cls)}
    for check in checks:
        check(_make(cls))
