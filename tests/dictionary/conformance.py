"""Conformance checks of the orthogonal dictionary learners, as plain functions the suites and mutants call.

Each check takes a *learner factory* ``make(d, seed) -> learner`` (default: the registered class) and raises
``AssertionError`` when the learner does not do what its registry entry promises:

* purpose: a planted orthogonal dictionary (Bernoulli–Gaussian codes) is recovered up to signed permutation —
  measured against the known planted ``D₀``, never against another learner;
* ``exact_orthogonal=True``: ``‖DᵀD − I‖_max ≤ 1e-10`` (float64) after every step;
* sparse coding: ``transform(Y, sparsity=s)`` equals the closed form (the ``s`` largest ``|DᵀY|`` per column,
  re-derived here with numpy ``argsort``) and the reconstruction error is non-increasing in ``s`` and 0 at ``s = d``;
* ``online=True``: memory independent of the samples seen — everything reachable from the learner (tensors,
  numpy arrays, bytes, Python containers and numbers, at any depth) is counted by :func:`held_bytes` (not the
  learner's own report), after 1 and after 200 batches;
* a bad batch (NaN, wrong shape, transposed) raises ``ValueError`` and leaves every state tensor unchanged.
"""

from __future__ import annotations

import collections
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

import orthokit.dictionary.batch_msp
import orthokit.dictionary.batch_procrustes
import orthokit.dictionary.online_fw  # noqa: F401  (registers the learners until the package re-exports them)
from orthokit.dictionary.metrics import atom_recovery, planted_data
from orthokit.dictionary.registry import DICT_LEARNERS

Factory = Callable[[int, int], Any]
BATCH = 20  # online mini-batch size used by the suite


def factory(name: str) -> Factory:
    """The registered learner ``name`` built with its defaults (``cls(d, seed=seed)``)."""
    cls = DICT_LEARNERS.get(name)
    return lambda d, seed: cls(d, seed=seed)


def drive(
    learner: Any, Y: Tensor, on_step: Callable[[Any], None] | None = None, steps: int | None = None
) -> Any:
    """Train ``learner`` on ``Y`` ``[d, n]`` step by step: mini-batches of ``BATCH`` through ``partial_fit`` for
    online learners, full-batch ``step`` sweeps (``steps``, default 30) otherwise; ``on_step`` after each step."""
    if getattr(learner, "online", False):
        for s in range(0, Y.shape[1], BATCH):
            learner.partial_fit(Y[:, s : s + BATCH])
            if on_step is not None:
                on_step(learner)
    else:
        for _ in range(steps or 30):
            learner.step(Y)
            if on_step is not None:
                on_step(learner)
    return learner


def _orth_err(D: Tensor) -> float:
    D = D.to(torch.float64)
    return float((D.T @ D - torch.eye(D.shape[1], dtype=torch.float64)).abs().max())


def check_recovers_planted(make: Factory, d: int = 8, n: int = 6000, max_angle_deg: float = 5.0) -> None:
    """Purpose: the planted dictionary is recovered (max matched-atom angle below ``max_angle_deg``)."""
    Y, D0 = planted_data(d, n, theta=0.2, seed=0)
    learner = drive(make(d, 0), Y)
    r = atom_recovery(learner.dictionary, D0)
    assert r["max_angle_deg"] < max_angle_deg, f"planted dictionary not recovered: {r}"


def check_exact_orthogonal(make: Factory, d: int = 8, n: int = 1000, tol: float = 1e-10) -> None:
    """``exact_orthogonal``: the dictionary is orthogonal to ``tol`` after every step (float64)."""
    Y, _ = planted_data(d, n, theta=0.2, seed=1)
    errs: list[float] = []
    drive(make(d, 1), Y, on_step=lambda lr: errs.append(_orth_err(lr.dictionary)), steps=10)
    assert errs, "the learner took no step"
    assert max(errs) <= tol, (
        f"dictionary not orthogonal: max |DᵀD − I| = {max(errs):.3e} (step {errs.index(max(errs))})"
    )


def _topk_reference(C: np.ndarray, s: int) -> np.ndarray:
    out = np.zeros_like(C)
    if s == 0:
        return out
    idx = np.argsort(-np.abs(C), axis=0, kind="stable")[:s]
    cols = np.arange(C.shape[1])[None, :].repeat(s, 0)
    out[idx, cols] = C[idx, cols]
    return out


def check_sparse_coding(make: Factory, d: int = 8, n: int = 500) -> None:
    """Codes are the closed-form top-``s`` of ``|DᵀY|``; reconstruction error non-increasing in ``s``, 0 at ``d``."""
    Y, _ = planted_data(d, n, theta=0.5, seed=2)
    Y = Y + 0.01 * torch.randn(d, n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    learner = drive(make(d, 2), Y, steps=3)
    D = learner.dictionary.to(torch.float64).numpy()
    C = D.T @ Y.numpy()
    errs = []
    for s in range(d + 1):
        X = learner.transform(Y, sparsity=s).to(torch.float64).numpy()
        ref = _topk_reference(C, s)
        assert np.allclose(X, ref, atol=1e-10), f"transform(sparsity={s}) is not the top-s of |DᵀY|"
        errs.append(learner.relative_error(Y, sparsity=s))
    assert all(b <= a + 1e-12 for a, b in zip(errs, errs[1:])), f"error increases with sparsity: {errs}"
    assert errs[-1] < 1e-10, f"full code does not reconstruct: {errs[-1]}"
    tau = float(np.median(np.abs(C)))
    Xt = learner.transform(Y, threshold=tau).to(torch.float64).numpy()
    assert np.allclose(Xt, np.where(np.abs(C) >= tau, C, 0.0), atol=1e-10), (
        "threshold= is not hard thresholding"
    )


_ATOM = 8  # bytes charged per scalar / container slot (ints and floats count the same whatever their value)


def held_bytes(obj: Any) -> int:
    """Bytes of the whole state reachable from ``obj``, walked recursively to any depth with cycle detection:
    torch tensors (the bytes of their storage, each storage once), numpy arrays (``nbytes``), ``bytes`` /
    ``bytearray`` / ``str`` (their length), numbers (8 each) and every slot of a list, tuple, set, dict or deque
    (8 each, plus what it holds); objects through ``__dict__`` and ``__slots__``. Classes, modules and functions
    are code, not state, and are skipped. A learner that keeps any growing history — tensors, numpy copies, Python
    lists of floats, at any nesting depth — holds more bytes after more batches."""
    seen: set[int] = set()
    storages: set[tuple[int, int]] = set()
    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)

    def walk(x: Any) -> int:
        if x is None or isinstance(x, skip):
            return 0
        if isinstance(x, (bool, int, float, complex, np.generic, torch.dtype, torch.device)):
            return _ATOM  # values, not shared state: never de-duplicated (equal small ints share one object)
        if isinstance(x, (bytes, str)):
            return len(x)
        if id(x) in seen:
            return 0
        seen.add(id(x))
        if isinstance(x, Tensor):
            st = x.untyped_storage()
            key = (st.data_ptr(), st.nbytes())
            if key in storages:
                return 0
            storages.add(key)
            return max(st.nbytes(), x.numel() * x.element_size())
        if isinstance(x, np.ndarray):
            return int(x.nbytes) + (walk(x.base) if x.base is not None else 0)
        if isinstance(x, (bytearray, memoryview)):
            return len(x)
        if isinstance(x, dict):
            return sum(_ATOM + walk(k) + walk(v) for k, v in x.items())
        if isinstance(x, (list, tuple, set, frozenset, collections.deque)):
            return sum(_ATOM + walk(v) for v in x)
        total = 0
        if hasattr(x, "__dict__"):
            total += walk(vars(x))
        for slot in getattr(type(x), "__slots__", ()):
            if isinstance(slot, str) and hasattr(x, slot):
                total += walk(getattr(x, slot))
        return total or _ATOM

    return walk(obj)


def check_online_memory_constant(make: Factory, d: int = 8) -> None:
    """``online``: no stored history — the bytes of everything the learner holds (:func:`held_bytes`, a recursive
    walk, not the learner's own report) after 1 batch equal those after 200 batches."""
    Y, _ = planted_data(d, 200 * BATCH, theta=0.2, seed=4)
    learner = make(d, 4)
    learner.partial_fit(Y[:, :BATCH])
    first = held_bytes(learner)
    for s in range(BATCH, Y.shape[1], BATCH):
        learner.partial_fit(Y[:, s : s + BATCH])
    last = held_bytes(learner)
    assert last == first, f"memory grows with samples seen: {first} -> {last} bytes"
    assert learner.state_nbytes() <= first, "state_nbytes() under-reports nothing it holds"


def _snapshot(learner: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in vars(learner).items():
        if isinstance(v, Tensor):
            out[k] = v.clone()
        elif isinstance(v, (int, float, str)):
            out[k] = v
        elif isinstance(v, list):
            out[k] = list(v)
    return out


def check_bad_batch_untouched(make: Factory, d: int = 8) -> None:
    """NaN / wrong-shape / transposed batches raise ``ValueError`` and leave the state unchanged."""
    Y, _ = planted_data(d, 200, theta=0.2, seed=5)
    learner = drive(make(d, 5), Y, steps=2)
    before = _snapshot(learner)
    nan = Y[:, :BATCH].clone()
    nan[0, 0] = float("nan")
    bads = [nan, torch.randn(d + 1, BATCH, dtype=torch.float64), Y[:, :d].T.contiguous()[: d - 1]]
    feed = learner.partial_fit if getattr(learner, "online", False) else learner.step
    for bad in bads:
        try:
            feed(bad)
        except ValueError:
            pass
        else:
            raise AssertionError(f"bad batch of shape {tuple(bad.shape)} was accepted")
        after = _snapshot(learner)
        assert after.keys() == before.keys(), "state attributes changed on a failed step"
        for k, v in before.items():
            w = after[k]
            same = torch.equal(v, w) if isinstance(v, Tensor) else (v == w or (v != v and w != w))
            assert same, f"state {k!r} changed on a failed step"


ALL_CHECKS = (
    check_recovers_planted,
    check_exact_orthogonal,
    check_sparse_coding,
    check_online_memory_constant,
    check_bad_batch_untouched,
)


def applicable(name: str) -> list[Callable[[Factory], None]]:
    """The checks a registered learner must pass, read from its capabilities."""
    caps = DICT_LEARNERS.capabilities(name)
    out: list[Callable[[Factory], None]] = [
        check_recovers_planted,
        check_sparse_coding,
        check_bad_batch_untouched,
    ]
    if caps.get("exact_orthogonal"):
        out.append(check_exact_orthogonal)
    if caps.get("online"):
        out.append(check_online_memory_constant)
    return out
