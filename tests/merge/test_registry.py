"""Registry conformance: every registered merge method obeys the signature convention and its claims."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import pytest
import torch
from torch import Tensor

import orthokit.merge  # noqa: F401  (registers every method)
from orthokit.merge.registry import (
    INPUT_KINDS,
    MERGE_METHODS,
    check_merge_inputs,
    method_schema,
    register_merge_method,
    validate_params,
)

from .conformance import CHECKS, CLOSED_FORM, PROPERTIES

FULL = MERGE_METHODS.names(inputs="full")


def _inputs(n: int = 3, shape: tuple[int, ...] = (16, 12), dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(*shape, generator=g, dtype=dtype)
    fts = [base + 0.1 * torch.randn(*shape, generator=g, dtype=dtype) for _ in range(n)]
    return base, fts


def _call(name: str, base: Tensor | None, fts: Sequence[Tensor], seed: int = 0, **kw) -> Tensor:
    fn = MERGE_METHODS.get(name)
    schema = method_schema(name)
    params = validate_params(name, kw, n_models=len(fts))
    if schema.takes_generator:
        params["generator"] = torch.Generator().manual_seed(seed)
    if schema.takes_name:
        params["name"] = "layers.0.mlp.weight"
    return fn(base if MERGE_METHODS.capabilities(name)["needs_base"] else None, fts, **params)


def test_core_methods_registered() -> None:
    for name in ("task_arithmetic", "ties", "dare_ties", "dare_linear"):
        assert name in MERGE_METHODS


@pytest.mark.parametrize("name", MERGE_METHODS.names())
def test_capabilities_and_schema(name: str) -> None:
    caps = MERGE_METHODS.capabilities(name)
    assert caps["inputs"] in INPUT_KINDS
    assert isinstance(caps["needs_base"], bool) and isinstance(caps["order_invariant"], bool)
    schema = method_schema(name)
    assert "weights" in caps["per_model_params"]
    assert schema.lookup("weight") is not None and schema.lookup("weight").per_model
    sig = inspect.signature(MERGE_METHODS.get(name))
    assert list(sig.parameters)[:2] == ["base", "tensors"]
    assert MERGE_METHODS.get(name).__doc__ and len(MERGE_METHODS.get(name).__doc__) > 80


# ---- declared properties and closed forms (tests/merge/conformance.py; mutants in test_mutants.py)


@pytest.mark.parametrize("name", MERGE_METHODS.names())
def test_every_method_declares_its_properties_and_has_a_closed_form(name: str) -> None:
    for prop in PROPERTIES:
        val = MERGE_METHODS.capabilities(name).get(prop)
        assert val is False or isinstance(val, dict), f"{name} must declare {prop} (False or parameters)"
    assert name in CLOSED_FORM, f"{name} has no closed-form conformance check"


@pytest.mark.parametrize(
    ("name", "prop"),
    [
        (n, p)
        for n in MERGE_METHODS.names()
        for p in PROPERTIES
        if MERGE_METHODS.capabilities(n).get(p) is not False
    ],
)
def test_declared_property_holds(name: str, prop: str) -> None:
    CHECKS[prop](name)


@pytest.mark.parametrize("name", sorted(CLOSED_FORM))
def test_closed_form(name: str) -> None:
    CLOSED_FORM[name]()


def test_registration_validates_declared_properties() -> None:
    with pytest.raises(TypeError, match="one_model_exact must be a mapping"):
        register_merge_method("broken_prop_test", one_model_exact=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="names unknown parameter 'lambda_x'"):

        @register_merge_method("broken_prop_test2", idempotent={"lambda_x": 1.0})
        def broken(
            base: Tensor | None, tensors: Sequence[Tensor], *, weights: Sequence[float] | None = None
        ) -> Tensor:
            """Declares a property under a parameter it does not have."""
            return tensors[0]

    assert "broken_prop_test2" not in MERGE_METHODS


@pytest.mark.parametrize("name", [n for n in FULL if MERGE_METHODS.capabilities(n)["order_invariant"]])
def test_order_invariance(name: str) -> None:
    base, fts = _inputs(n=4)
    weights = [0.5, 1.0, 1.5, 0.7]
    kw: dict = {"weight": weights}
    spec = method_schema(name).lookup("density")
    if spec is not None and spec.per_model:
        kw["density"] = [0.3, 0.5, 0.7, 0.9]
    out = _call(name, base, fts, **kw)
    perm = [2, 0, 3, 1]
    kw2 = {k: [v[i] for i in perm] for k, v in kw.items()}
    out2 = _call(name, base, [fts[i] for i in perm], **kw2)
    torch.testing.assert_close(out, out2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", FULL)
def test_shape_and_dtype_mismatch_raise(name: str) -> None:
    base, fts = _inputs()
    with pytest.raises(ValueError, match="shape"):
        _call(name, base, [fts[0], fts[1][:-1]])
    with pytest.raises(TypeError, match="dtype"):
        _call(name, base, [fts[0], fts[1].float()])


def test_validate_params_unknown_key_named() -> None:
    with pytest.raises(ValueError, match=r"unknown parameter 'densty'.*valid parameters: weight"):
        validate_params("ties", {"densty": 0.5}, n_models=2)


def test_validate_params_coercion_and_broadcast() -> None:
    kw = validate_params(
        "ties", {"weight": [1, 2], "density": "5e-1", "lambda": 2, "normalize": "false"}, n_models=2
    )
    assert kw == {"weights": [1.0, 2.0], "density": [0.5, 0.5], "lambda_": 2.0, "normalize": False}
    assert validate_params("task_arithmetic", {}, n_models=3) == {"weights": [1.0, 1.0, 1.0]}


def test_validate_params_errors() -> None:
    with pytest.raises(ValueError, match="3 values for 2 models"):
        validate_params("ties", {"weight": [1, 2, 3]}, n_models=2)
    with pytest.raises(TypeError, match="'normalize' must be a boolean"):
        validate_params("ties", {"normalize": 3}, n_models=2)
    with pytest.raises(TypeError, match="global parameter"):
        validate_params("ties", {"lambda": [1, 2]}, n_models=2)
    with pytest.raises(ValueError, match="finite"):
        validate_params("ties", {"lambda": float("nan")}, n_models=2)
    with pytest.raises(ValueError, match="unknown merge method 'tiez'"):
        validate_params("tiez", {}, n_models=2)


def test_registration_rejects_broken_signatures() -> None:
    with pytest.raises(TypeError, match="keyword-only"):

        @register_merge_method("broken_positional_test")
        def broken(
            base: Tensor | None, tensors: Sequence[Tensor], weights: Sequence[float] | None = None
        ) -> Tensor:
            """Not keyword-only."""
            return tensors[0]

    with pytest.raises(TypeError, match="must accept weights"):

        @register_merge_method("broken_noweights_test")
        def broken2(base: Tensor | None, tensors: Sequence[Tensor], *, lam: float = 1.0) -> Tensor:
            """No weights."""
            return tensors[0]

    with pytest.raises(ValueError, match="inputs must be one of"):
        register_merge_method("broken_inputs_test", inputs="dense")
    assert "broken_positional_test" not in MERGE_METHODS


def test_check_merge_inputs_errors() -> None:
    base, fts = _inputs()
    with pytest.raises(ValueError, match="at least one tensor"):
        check_merge_inputs(base, [], None)
    with pytest.raises(ValueError, match="needs a base"):
        check_merge_inputs(None, fts, None)
    with pytest.raises(ValueError, match="2 weights for 3 tensors"):
        check_merge_inputs(base, fts, [1.0, 2.0])
    with pytest.raises(TypeError, match="floating point"):
        check_merge_inputs(base.long(), [t.long() for t in fts], None)
    with pytest.raises(ValueError, match="finite"):
        check_merge_inputs(base, fts, [1.0, float("inf"), 1.0])
