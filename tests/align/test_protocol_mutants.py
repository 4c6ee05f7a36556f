"""The protocol checks must reject plausible wrong implementations (each mutant is patched into the module)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import orthokit.align.backfill as backfill
import orthokit.align.protocol as protocol

from ._protocol_checks import (
    check_against_reference,
    check_backfill_exclude_self,
    check_hand_cases,
    check_scale,
    check_ties,
    check_truncation,
)

CHECKS: list[Callable] = [
    check_against_reference,
    check_hand_cases,
    check_truncation,
    check_ties,
    check_scale,
]
_REAL_SCORE_BLOCK = protocol._score_block


def _failed_checks() -> list[str]:
    failed = []
    for check in CHECKS:
        try:
            check(protocol.retrieval_metrics)
        except AssertionError:
            failed.append(check.__name__)
    return failed


def normalize_before_truncation(
    x: Tensor, d: int, metric: str, dtype: torch.dtype, scale: float = 1.0
) -> Tensor:
    x = x.to(dtype) * scale
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
    return x[:, :d]


def _sorted(dist: Tensor, relevant: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    dist_sorted, order = torch.sort(dist, dim=1, stable=True)
    match = torch.gather(relevant, 1, order)
    return dist_sorted, match, match.sum(dim=1)


def _textbook_ap(match: Tensor, n_pos: Tensor, denominator: Tensor) -> Tensor:
    ranks = torch.arange(1, match.shape[1] + 1, dtype=torch.float64)
    prec = match.cumsum(dim=1, dtype=torch.float64) / ranks
    return (prec * match).sum(dim=1) / denominator


def cmc_without_first_match_break(dist: Tensor, relevant: Tensor, ks: tuple[int, ...]):
    """CMC(k) counts every relevant item in the top k (recall@k) instead of stopping at the first."""
    _, match, n_pos = _sorted(dist, relevant)
    hits = torch.stack([match[:, :k].sum(dim=1) / n_pos.clamp_min(1) for k in ks])
    return hits, _textbook_ap(match, n_pos, n_pos.clamp_min(1)), n_pos > 0


def ap_over_all_gallery_items(dist: Tensor, relevant: Tensor, ks: tuple[int, ...]):
    """AP divided by the gallery size instead of the number of relevant items."""
    _, match, n_pos = _sorted(dist, relevant)
    first = match.to(torch.int8).argmax(dim=1)
    hits = torch.stack([first < k for k in ks]) & (n_pos > 0)
    return hits, _textbook_ap(match, n_pos, torch.full_like(n_pos, match.shape[1])), n_pos > 0


def ap_ignoring_ties(dist: Tensor, relevant: Tensor, ks: tuple[int, ...]):
    """Rank-based AP over the index-broken order: differs from sklearn when distances tie."""
    _, match, n_pos = _sorted(dist, relevant)
    first = match.to(torch.int8).argmax(dim=1)
    hits = torch.stack([first < k for k in ks]) & (n_pos > 0)
    return hits, _textbook_ap(match, n_pos, n_pos.clamp_min(1)), n_pos > 0


def ties_by_reverse_index(dist: Tensor, relevant: Tensor, ks: tuple[int, ...]):
    """The real scoring, but tied distances ranked by *descending* gallery index."""
    return _REAL_SCORE_BLOCK(dist.flip(1), relevant.flip(1), ks)


def backfill_ignores_exclude_self(blocks, query_labels, gallery_labels, ks, exclude_self):
    """The backfill scores every point without leave-one-out, whatever ``exclude_self`` says."""
    return protocol._score(blocks, query_labels, gallery_labels, ks, False)


def per_block_scale(parts, metric: str, dtype: torch.dtype) -> float:
    """No common rescaling: huge l2/inner features overflow their squares."""
    return 1.0


def prepare_without_row_rescale(
    x: Tensor, d: int, metric: str, dtype: torch.dtype, scale: float = 1.0
) -> Tensor:
    """Cosine straight through ``F.normalize``: a 1e300 row's norm overflows to inf and the row becomes 0."""
    x = x[:, :d].to(dtype)
    return torch.nn.functional.normalize(x, dim=1) if metric == "cosine" else x * scale


MUTANTS = {
    "normalize before truncation": ("_prepare", normalize_before_truncation),
    "CMC without first-match-break": ("_score_block", cmc_without_first_match_break),
    "AP divided by all gallery items": ("_score_block", ap_over_all_gallery_items),
    "AP ignoring ties": ("_score_block", ap_ignoring_ties),
    "ties by reverse index": ("_score_block", ties_by_reverse_index),
    "no common scale for l2/inner": ("_common_scale", per_block_scale),
    "cosine without row rescale": ("_prepare", prepare_without_row_rescale),
}


def test_real_implementation_passes_every_check() -> None:
    assert _failed_checks() == []


@pytest.mark.parametrize("name", list(MUTANTS))
def test_mutant_is_rejected(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    attr, impl = MUTANTS[name]
    monkeypatch.setattr(protocol, attr, impl)
    assert _failed_checks(), f"mutant {name!r} passed every check"


def test_real_backfill_passes_the_exclude_self_check() -> None:
    check_backfill_exclude_self(backfill.partial_backfill_curve)


def test_backfill_mutant_ignoring_exclude_self_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backfill, "_score", backfill_ignores_exclude_self)
    with pytest.raises(AssertionError):
        check_backfill_exclude_self(backfill.partial_backfill_curve)
