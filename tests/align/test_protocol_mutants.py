"""The protocol checks must reject plausible wrong implementations (each mutant is patched into the module)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import orthokit.align.protocol as protocol

from ._protocol_checks import check_against_reference, check_hand_cases, check_ties, check_truncation

CHECKS: list[Callable] = [check_against_reference, check_hand_cases, check_truncation, check_ties]
_REAL_SCORE_BLOCK = protocol._score_block


def _failed_checks() -> list[str]:
    failed = []
    for check in CHECKS:
        try:
            check(protocol.retrieval_metrics)
        except AssertionError:
            failed.append(check.__name__)
    return failed


def normalize_before_truncation(x: Tensor, d: int, metric: str, dtype: torch.dtype) -> Tensor:
    x = x.to(dtype)
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


MUTANTS = {
    "normalize before truncation": ("_prepare", normalize_before_truncation),
    "CMC without first-match-break": ("_score_block", cmc_without_first_match_break),
    "AP divided by all gallery items": ("_score_block", ap_over_all_gallery_items),
    "AP ignoring ties": ("_score_block", ap_ignoring_ties),
    "ties by reverse index": ("_score_block", ties_by_reverse_index),
}


def test_real_implementation_passes_every_check() -> None:
    assert _failed_checks() == []


@pytest.mark.parametrize("name", list(MUTANTS))
def test_mutant_is_rejected(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    attr, impl = MUTANTS[name]
    monkeypatch.setattr(protocol, attr, impl)
    assert _failed_checks(), f"mutant {name!r} passed every check"
