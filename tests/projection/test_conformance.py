"""Every registered projection method does what its ``guarantee`` capability says (docs/projection/design.md).

The core check (:func:`conformance`) does not look at the method's own memory — a method storing the wrong
basis must fail it (tests/projection/test_mutants.py). It measures what the method promises on a model where the
protected layer is **not** fully protected (remembered inputs span 3 of 12 input dimensions), after several
steps of AdamW **with weight decay** through ``method.wrap(...)``:

* ``"exact"`` + activation subspace: the protected layer's outputs on the remembered inputs are unchanged
  (relative change < 1e-5) while its outputs on other inputs do move (the layer is still plastic);
* ``"exact"`` + weight subspace (OSFT): the weight's action ``W v`` on what the method preserves — the
  weight's top right singular vectors ``v``, computed independently in float64;
* ``"soft"`` (SGP): the change on the remembered inputs is < 10 % of what plain AdamW does to them;
* ``"first_order"`` (OGD, GU, OGPSA): the quantity the method protects (OGD: ground-truth logits of the stored
  examples; otherwise the loss of every remembered batch) changes < 5 % of plain AdamW's change at a small step
  size, while the parameters move.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from orthokit.projection import PROJECTIONS
from orthokit.projection.registry import REQUIRED_CAPABILITIES

# methods whose default-size runs take > 5 s here run as slow tests
SLOW: set[str] = set()
# constructor options that keep a method's run small here (HLOP's default learns until its span settles,
# up to 1000 passes, when after_task sees batches that no training forward pass streamed)
FAST_KWARGS: dict[str, dict[str, Any]] = {"hlop": {"passes": 100}}
NAMES = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in PROJECTIONS.names()]
D_IN, D_SUB = 12, 3
# methods whose "exact" promise does not hold today; owned by another engineer (fidelity work in progress)
KNOWN_FAILING: dict[str, str] = {}


def _model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D_IN, 16), nn.ReLU(), nn.Linear(16, 5))


def _task_batches(seed: int, n: int = 40) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two (x, y) batches whose inputs span a D_SUB-dimensional subspace of R^D_IN (flat spectrum)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(D_IN, D_SUB, generator=g))[0]
    x = torch.randn(n, D_SUB, generator=g) @ basis.T
    y = torch.randint(0, 5, (n,), generator=g)
    return [(x[: n // 2], y[: n // 2]), (x[n // 2 :], y[n // 2 :])]


def _steps(model: nn.Module, opt: torch.optim.Optimizer, n: int = 5, seed: int = 11) -> None:
    """``n`` optimizer steps on inputs spanning all of R^D_IN (so the unprotected update is generic)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x, y = torch.randn(16, D_IN, generator=g), torch.randint(0, 5, (16,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).double().norm() / b.double().norm().clamp_min(1e-30))


def _adamw(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)


def _claimed_quantity(name: str, method: Any, model: nn.Module, batches: list[Any]) -> torch.Tensor:
    """What a first-order method promises to keep: OGD — ground-truth logits of the stored examples; others
    (GU, OGPSA, ...) — the loss of every remembered batch."""
    with torch.no_grad():
        if name == "ogd":
            n = int(method.samples_per_task)
            x = torch.cat([b[0] for b in batches])[:n]
            y = torch.cat([b[1] for b in batches])[:n]
            return model(x).gather(1, y[:, None]).squeeze(1)
        return torch.stack([nn.functional.cross_entropy(model(x), y) for x, y in batches])


def conformance(name: str, cls: type | None = None) -> dict[str, float]:
    """Measure the registered method ``name`` (or ``cls`` registered with ``name``'s capabilities).

    Returns ``{"protected": relative change of what is promised, "plastic": relative change elsewhere,
    "bound": the largest allowed "protected" value}``.
    """
    caps = PROJECTIONS.capabilities(name)
    cls = cls or PROJECTIONS.get(name)
    batches = _task_batches(0)
    x_mem = torch.cat([b[0] for b in batches])
    x_other = torch.randn(64, D_IN, generator=torch.Generator().manual_seed(5))
    if caps["guarantee"] in ("exact", "soft"):
        model = _model()
        method = cls(
            model, ["0"], **FAST_KWARGS.get(name, {})
        )  # protect the first layer only: its inputs are the remembered x
        layer = model[0]
        w0 = layer.weight.detach().double().clone()
        method.after_task(batches)
        if caps["subspace"] == "weight":
            k = method.memory.layer("0").k
            assert 0 < k < min(w0.shape), f"{name}: weight memory must keep some but not all directions ({k})"
            x_mem = torch.linalg.svd(w0, full_matrices=False)[2][:k].float()  # top right singular vectors
        ref = copy.deepcopy(model)

        def out(lay: nn.Linear, x: torch.Tensor) -> torch.Tensor:
            # weight subspaces (OSFT) promise the weight's action on its top singular directions: W v, no bias
            return nn.functional.linear(x, lay.weight, None if caps["subspace"] == "weight" else lay.bias)

        with torch.no_grad():
            h_mem, h_other = out(layer, x_mem).clone(), out(layer, x_other).clone()
        _steps(model, method.wrap(_adamw(model, 1e-2)))
        _steps(ref, _adamw(ref, 1e-2))
        with torch.no_grad():
            protected = _rel(out(layer, x_mem), h_mem)
            plastic = _rel(out(layer, x_other), h_other)
            baseline = _rel(out(ref[0], x_mem), h_mem)
        bound = 1e-5 if caps["guarantee"] == "exact" else 0.1 * baseline
        return {"protected": protected, "plastic": plastic, "bound": bound, "baseline": baseline}
    # first order: every layer protected, small steps; the promised quantity vs plain AdamW's change of it
    model = _model()
    method = cls(model, **FAST_KWARGS.get(name, {}))
    method.after_task(batches)
    ref = copy.deepcopy(model)
    q0 = _claimed_quantity(name, method, model, batches)
    p0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()
    _steps(model, method.wrap(_adamw(model, 1e-4)), n=3)
    _steps(ref, _adamw(ref, 1e-4), n=3)
    dq = float((_claimed_quantity(name, method, model, batches) - q0).norm())
    dq_ref = float((_claimed_quantity(name, method, ref, batches) - q0).norm())
    plastic = _rel(torch.cat([p.detach().reshape(-1) for p in model.parameters()]), p0)
    return {"protected": dq / max(dq_ref, 1e-30), "plastic": plastic, "bound": 0.05, "baseline": dq_ref}


def check_conformance(name: str, cls: type | None = None) -> dict[str, float]:
    """Assert :func:`conformance` against the method's guarantee (``AssertionError`` with the numbers)."""
    m = conformance(name, cls)
    assert m["protected"] < m["bound"], f"{name}: protected quantity changed {m}"
    assert m["plastic"] > 1e-4, f"{name}: vacuous check — nothing else moved either {m}"
    return m


def test_registry_not_empty() -> None:
    assert {"gpm", "sgp", "ogd", "gu"} <= set(PROJECTIONS.names())


@pytest.mark.parametrize("name", NAMES)
def test_capabilities_docs_and_export(name: str) -> None:
    import orthokit.projection as P

    caps = PROJECTIONS.capabilities(name)
    for c in REQUIRED_CAPABILITIES:
        assert c in caps, f"{name} lacks capability {c}"
    cls = PROJECTIONS.get(name)
    assert (cls.__doc__ or "").strip(), f"{name} has no docstring"
    assert "Example" in cls.__doc__
    assert getattr(P, cls.__name__, None) is cls, f"{cls.__name__} is not exported from orthokit.projection"
    assert cls.__name__ in P.__all__


@pytest.mark.parametrize("name", NAMES)
def test_wrap_before_memory_is_noop(name: str) -> None:
    """Independent reference: a plain AdamW on a deep copy must give bit-identical parameters."""
    model = _model()
    ref = copy.deepcopy(model)
    method = PROJECTIONS.get(name)(model)
    opt = method.wrap(_adamw(model, 0.01))
    assert isinstance(opt, torch.optim.Optimizer)
    _steps(model, opt, n=3)
    _steps(ref, _adamw(ref, 0.01), n=3)
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("name", NAMES)
def test_guarantee_holds(name: str) -> None:
    """The promise of the ``guarantee`` capability, measured on the model (not on the method's memory)."""
    if name in KNOWN_FAILING:
        pytest.xfail(KNOWN_FAILING[name])
    check_conformance(name)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name: str) -> None:
    """A method restored from ``state_dict`` into a fresh object steers training exactly like the original."""
    model = _model()
    method = PROJECTIONS.get(name)(model, **FAST_KWARGS.get(name, {}))
    method.after_task(_task_batches(0))
    method.after_task(_task_batches(1))
    model2 = copy.deepcopy(model)
    other = PROJECTIONS.get(name)(model2, **FAST_KWARGS.get(name, {}))
    other.load_state_dict(copy.deepcopy(method.state_dict()))
    _steps(model, method.wrap(torch.optim.SGD(model.parameters(), lr=0.05)), n=3)
    _steps(model2, other.wrap(torch.optim.SGD(model2.parameters(), lr=0.05)), n=3)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b), name
    # and the restored one is not just "no projection": an unprotected run differs
    model3 = copy.deepcopy(model2)
    _steps(model3, torch.optim.SGD(model3.parameters(), lr=0.05), n=1)
    _steps(model2, other.wrap(torch.optim.SGD(model2.parameters(), lr=0.05)), n=1)
    assert any(not torch.equal(a, b) for a, b in zip(model2.parameters(), model3.parameters())), name
