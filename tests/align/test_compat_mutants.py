"""Mutants of the compatible-training methods must FAIL the conformance checks of test_conformance_compat.py.

Each mutant keeps the interface and breaks one defining step; a check that still passed on it would not be
testing the method's purpose. The unmodified methods pass the same checks in test_conformance_compat.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from orthokit.align._compat_common import CompatMethod, cross_entropy
from orthokit.align.bct import BCT, bct_influence_loss
from orthokit.align.bt2 import BT2
from orthokit.align.independent import Independent
from orthokit.align.lambda_compat import LambdaOrthogonal
from orthokit.align.lambda_orthogonal import lambda_orthogonality_penalty
from orthokit.align.oca import OCA

from .test_conformance_compat import (
    check_bad_batch_untouched,
    check_bt2_independent,
    check_frozen,
    check_interface,
    check_lambda_tolerance,
    check_old_batchnorm,
    check_orthogonal_layers,
    check_purpose,
    make_problem,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def problem() -> dict[str, Any]:
    return make_problem(0)


class BCTDetachedInfluence(BCT):
    """BCT whose influence loss is computed on a detached feature (so it never shapes the new model)."""

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        f = self.new_features(x)
        return nn.functional.cross_entropy(self.classifier(f), y) + bct_influence_loss(
            f.detach(), self.old_prototypes, y
        )


class BCTTrainablePrototypes(BCT):
    """BCT whose old prototypes are a trainable parameter (the old classifier is no longer frozen)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        P = self._buffers.pop("old_prototypes")
        self.old_prototypes = nn.Parameter(P.clone())


class BCTUnfrozenOldModel(BCT):
    """BCT that leaves the old model trainable."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.old_model.requires_grad_(True)


class OCAPlainLinear(OCA):
    """OCA whose 'orthogonal' layer is a plain Linear."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.orth = nn.Linear(self.feat_dim, self.feat_dim)

    def extra_parameters(self) -> int:
        return self.feat_dim * self.feat_dim + self.feat_dim


class LambdaDetachedPenalty(LambdaOrthogonal):
    """λ-orthogonal whose penalty is evaluated on a detached W (it is reported but never acts)."""

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        base = self.penalty_weight
        self.penalty_weight = 0.0
        try:
            out = super().loss(x, y)
        finally:
            self.penalty_weight = base
        return out + base * lambda_orthogonality_penalty(self.map.weight.detach(), self.lam)


class LambdaNoMap(LambdaOrthogonal):
    """λ-orthogonal that returns the raw new feature as its 'compatible' feature (not in the old space)."""

    def compatible_features(self, x: Tensor) -> Tensor:
        return self.new_features(x)


class IndependentLateLabelCheck(Independent):
    """Independent that runs the backbone before validating ``y`` (a bad batch updates BatchNorm stats)."""

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        f = self.new_features(x)
        y = self._check_labels(y, f.shape[0])
        return cross_entropy(self.classifier(f), y, self.label_smoothing)


class LambdaOldModelInTrainMode(LambdaOrthogonal):
    """λ-orthogonal that runs the old model in train mode (its BatchNorm running stats drift), then restores eval."""

    def _old_features(self, x: Tensor) -> Tensor:
        assert self.old_model is not None
        self.old_model.train()
        with torch.no_grad():
            g = self.old_model(x)
        self.old_model.eval()
        return g


class BT2IndependentFollowsTrain(BT2):
    """BT² whose ``train()`` no longer keeps ``independent_model`` in eval mode."""

    train = CompatMethod.train  # type: ignore[assignment]


class BT2TrainableIndependent(BT2):
    """BT² that leaves ``independent_model`` trainable."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        if self.independent_model is not None:
            self.independent_model.requires_grad_(True)


def test_bct_with_detached_influence_is_not_compatible(problem: dict[str, Any]) -> None:
    with pytest.raises(AssertionError, match="not backward compatible"):
        check_purpose("bct", problem, BCTDetachedInfluence)


def test_trainable_prototypes_are_rejected(problem: dict[str, Any]) -> None:
    with pytest.raises(AssertionError, match="old_prototypes is trainable"):
        check_frozen("bct", problem, BCTTrainablePrototypes)


def test_unfrozen_old_model_is_rejected(problem: dict[str, Any]) -> None:
    with pytest.raises(AssertionError, match="old_model is trainable"):
        check_frozen("bct", problem, BCTUnfrozenOldModel)


def test_oca_without_orthogonal_layer_is_rejected(problem: dict[str, Any]) -> None:
    with pytest.raises(AssertionError, match="orthogonal layer drifted"):
        check_orthogonal_layers("oca", problem, OCAPlainLinear)


def test_lambda_penalty_that_does_not_act_is_rejected(problem: dict[str, Any]) -> None:
    with pytest.raises(AssertionError, match="left the λ-ball"):
        check_lambda_tolerance(problem, LambdaDetachedPenalty)


def test_compatible_feature_outside_old_space_is_rejected(problem: dict[str, Any]) -> None:
    with pytest.raises(AssertionError, match="compatible_features"):
        check_interface("lambda_orthogonal", problem, LambdaNoMap)


def test_label_check_after_forward_is_rejected(problem: dict[str, Any]) -> None:
    with pytest.raises(AssertionError, match="a rejected batch .* changed"):
        check_bad_batch_untouched("independent", problem, IndependentLateLabelCheck)


def test_old_model_run_in_train_mode_is_rejected(problem: dict[str, Any]) -> None:
    with pytest.raises(AssertionError, match=r"old_model\.1\.running_mean changed"):
        check_old_batchnorm("lambda_orthogonal", problem, LambdaOldModelInTrainMode)


def test_bt2_independent_model_in_train_mode_is_rejected(problem: dict[str, Any]) -> None:
    with pytest.raises(AssertionError, match="switched independent_model to training mode"):
        check_bt2_independent(problem, BT2IndependentFollowsTrain)


def test_bt2_trainable_independent_model_is_rejected(problem: dict[str, Any]) -> None:
    with pytest.raises(AssertionError, match="independent_model is trainable"):
        check_bt2_independent(problem, BT2TrainableIndependent)
