"""Defaults from one place (issue 9 item 6, issue 15): a constructor's signature is the only user default.

The registry's ``default_lr`` is the conformance-test lr (alias ``test_lr``); ``create_optimizer`` and ``hybrid``
must build exactly what ``Cls(params)`` builds.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from orthokit.optim import OPTIMIZERS, create_optimizer, get_optimizer, hybrid
from orthokit.optim.registry import constructor_defaults

NAMES = OPTIMIZERS.names()


def _hyper(opt: torch.optim.Optimizer) -> list[dict]:
    return [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]


def _params() -> list[nn.Parameter]:
    torch.manual_seed(0)
    return [nn.Parameter(torch.randn(6, 4))]


@pytest.mark.parametrize("name", NAMES)
def test_create_optimizer_equals_constructor_defaults(name: str) -> None:
    cls = get_optimizer(name)
    extra = OPTIMIZERS.capabilities(name)["extra_kwargs"]  # e.g. a required rank; applied to both sides
    a = create_optimizer(name, _params(), **extra)
    b = cls(_params(), **extra)
    assert _hyper(a) == _hyper(b)
    # and that default is the signature's (independent of the registry)
    assert a.param_groups[0]["lr"] == inspect.signature(cls.__init__).parameters["lr"].default


@pytest.mark.parametrize("name", NAMES)
def test_hybrid_ortho_lr_is_the_constructor_default(name: str) -> None:
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.LayerNorm(6))
    extra = OPTIMIZERS.capabilities(name)["extra_kwargs"]
    opt = hybrid(m, name, **extra)
    ortho = [g for g in opt.param_groups if g["role"] == "ortho"]
    assert ortho and all(g["lr"] == constructor_defaults(name)["lr"] for g in ortho)


def test_test_lr_is_the_registry_default_lr_and_differs_from_user_defaults_where_documented() -> None:
    differs = []
    for name in NAMES:
        caps = OPTIMIZERS.capabilities(name)
        assert caps["test_lr"] == caps["default_lr"] > 0
        if caps["default_lr"] != constructor_defaults(name)["lr"]:
            differs.append(name)
    # the registry value is free to differ (it is a test setting); the user default never comes from it
    for name in differs:
        assert (
            create_optimizer(name, _params()).param_groups[0]["lr"]
            != OPTIMIZERS.capabilities(name)["test_lr"]
        )


def test_constructor_defaults_errors() -> None:
    with pytest.raises(TypeError, match="name_or_cls"):
        constructor_defaults(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown optimizer"):
        constructor_defaults("no_such_optimizer")
    assert "params" not in constructor_defaults("muon")
