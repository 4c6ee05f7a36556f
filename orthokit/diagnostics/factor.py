r"""Factor orthogonality: are attribute-labelled embeddings a sum of per-concept components, and are the
components of different concepts orthogonal?

Uselis, Dittadi, Oh, "Compositional Generalization Requires Linear, Orthogonal Representations in Vision
Embedding Models" (arXiv 2602.24264; official code ``github.com/oshapio/necessary-compositionality`` at commit
``9458769``, ``analyse_embeddings_probes.py``). With embeddings ``X`` (``[n, d]``) centered by their global mean
and concepts ``h`` (e.g. color, object) taking values ``y_h(i)``:

* **Per-concept components** (``fit="means"``, the official rule): ``u_h(v) = mean{ X_c[i] : y_h(i) = v }`` —
  the per-value mean of the centered embeddings. ``fit="lstsq"`` fits all concepts jointly by least squares on
  the centered one-hot design (``[1{y_h = v} − freq_h(v)]``), which equals the means on a balanced full-factorial
  design and removes the confounding of unbalanced ones.
* **Linear-additivity R²** (official ``compute_linear_factorization_r2_from_matrix``):
  ``X̂ = Σ_h u_h(y_h)``, ``R² = 1 − ‖X_c − X̂‖² / ‖X_c‖²``; also in whitened coordinates (``r2_whitened``).
* **Orthogonality** (official ``compute_means_metrics_and_orthogonality``): the mean ``|cos|`` between component
  vectors of different concepts (``cross_abs_cos``) and of the same concept (``within_abs_cos``), and the
  number of components that explain 95 % of a concept's component variance (``k95``).
* **Principal angles** between concept subspaces ``span{u_h(v)}`` (rank ``rank`` or numerical rank), via
  :func:`orthokit.linalg.principal_angles` — our addition (the paper reports the ``|cos|`` statistics).
* **Summary** (ours): ``orthogonality = 1 − mean_{pairs} mean_i cos²θ_i`` (1 for orthogonal subspaces, 0 for
  identical), ``score = R² · orthogonality``. Needs at least 2 concepts. Ranks are cut at the embeddings' global
  scale (``‖X_c‖_F · eps · max(n, d)``): a concept the embeddings do not encode has rank 0, is listed in
  ``null_concepts`` and left out of the angles and of ``orthogonality`` (NaN, like ``score``, when fewer than
  two encoded concepts remain).

Everything is computed in float64, on ``X / max|X|`` (scale-safe; R² and the angles are scale-invariant).

Example:
    >>> import torch
    >>> from orthokit.diagnostics.factor import factor_orthogonality
    >>> color, obj = torch.arange(12) % 3, torch.arange(12) // 3        # 3 colors x 4 objects, all pairs
    >>> U, V = torch.eye(8, dtype=torch.float64)[:3], torch.eye(8, dtype=torch.float64)[3:7]
    >>> X = U[color] + V[obj] + 5.0                                       # additive, orthogonal, offset
    >>> rep = factor_orthogonality(X, {"color": color, "object": obj})
    >>> round(rep.r2, 12), round(rep.orthogonality, 12), round(rep.angles_deg[("color", "object")].min().item(), 6)
    (1.0, 1.0, 90.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from orthokit.diagnostics.registry import DIAGNOSTICS
from orthokit.linalg import principal_angles

__all__ = ["FactorReport", "factor_orthogonality", "concept_labels"]

_FITS = ("means", "lstsq")


@dataclass(frozen=True)
class FactorReport:
    """Result of :func:`factor_orthogonality`; ``float(report)`` is ``report.score``.

    ``components[h]`` is ``[C_h, d]`` (one row per value present, in ascending value order ``values[h]``);
    ``bases[h]`` the ``[d, r_h]`` orthonormal basis of concept ``h``'s subspace; ``angles[(a, b)]`` the principal
    angles (radians, ascending) between the subspaces of concepts ``a`` and ``b``. ``null_concepts`` are the
    concepts whose components are zero at the embeddings' scale (rank 0: the concept is not encoded); they take
    no part in the angles, the ``|cos|`` statistics or ``orthogonality``, which is NaN (and so is ``score``)
    when fewer than two encoded concepts remain.
    """

    concepts: tuple[str, ...]
    values: dict[str, list[int]]
    components: dict[str, Tensor]
    bases: dict[str, Tensor]
    ranks: dict[str, int]
    k95: dict[str, int]
    angles: dict[tuple[str, str], Tensor]
    null_concepts: tuple[str, ...]
    r2: float
    r2_whitened: float
    cross_abs_cos: float
    within_abs_cos: float
    orthogonality: float
    score: float
    fit: str
    n: int
    d: int

    def __float__(self) -> float:
        return self.score

    @property
    def angles_deg(self) -> dict[tuple[str, str], Tensor]:
        """Principal angles in degrees."""
        return {p: a * (180.0 / math.pi) for p, a in self.angles.items()}

    def to_markdown(self) -> str:
        """Two small tables: per concept (values, rank, k95) and per concept pair (principal angles)."""
        lines = [
            f"additivity R² {self.r2:.4f} (whitened {self.r2_whitened:.4f}) · mean |cos| across concepts "
            f"{self.cross_abs_cos:.4f}, within {self.within_abs_cos:.4f} · orthogonality {self.orthogonality:.4f}"
            f" · score {self.score:.4f} (fit={self.fit}, n={self.n}, d={self.d})"
            + (f" · not encoded (rank 0): {', '.join(self.null_concepts)}" if self.null_concepts else ""),
            "",
            "| concept | values | subspace rank | k95 |",
            "|---|---|---|---|",
        ]
        lines += [f"| {h} | {len(self.values[h])} | {self.ranks[h]} | {self.k95[h]} |" for h in self.concepts]
        lines += ["", "| concepts | principal angles (deg, min / median / max) |", "|---|---|"]
        for (a, b), ang in self.angles_deg.items():
            if ang.numel():
                lines.append(
                    f"| {a} vs {b} | {ang.min().item():.1f} / {ang.median().item():.1f} / {ang.max().item():.1f} |"
                )
        return "\n".join(lines)


def concept_labels(
    attributes: Mapping[str, Tensor] | Tensor, n: int, *, min_concepts: int = 1
) -> dict[str, Tensor]:
    """Validate ``attributes`` (``{name: LongTensor [n]}`` or an integer ``[n, n_concepts]`` tensor, whose
    columns are named ``c0, c1, …``; at least ``min_concepts`` of them) and return ``{name: int64 [n]}``."""
    if isinstance(attributes, Tensor):
        if attributes.ndim != 2 or attributes.shape[0] != n:
            raise ValueError(
                f"attributes tensor must be [n={n}, n_concepts], got shape {tuple(attributes.shape)}"
            )
        attributes = {f"c{j}": attributes[:, j] for j in range(attributes.shape[1])}
    if not isinstance(attributes, Mapping):
        raise TypeError(
            f"attributes must be a dict of LongTensors or a [n, n_concepts] tensor, got {type(attributes).__name__}"
        )
    out: dict[str, Tensor] = {}
    for name, y in attributes.items():
        if not isinstance(name, str):
            raise TypeError(f"attribute names must be strings, got {name!r}")
        if not isinstance(y, Tensor):
            raise TypeError(f"attributes[{name!r}] must be a torch.Tensor, got {type(y).__name__}")
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise TypeError(f"attributes[{name!r}] must be an integer tensor of value ids, got {y.dtype}")
        if y.shape != (n,):
            raise ValueError(
                f"attributes[{name!r}] must have shape [{n}] (one label per row), got {tuple(y.shape)}"
            )
        if bool((y < 0).any()):
            raise ValueError(f"attributes[{name!r}] has negative value ids")
        if torch.unique(y).numel() < 2:
            raise ValueError(f"attributes[{name!r}] takes a single value; a concept needs at least 2")
        out[name] = y.to(torch.int64)
    if len(attributes) < min_concepts:
        raise ValueError(
            f"attributes must name at least {min_concepts} concept(s), got {len(attributes)}"
            + (" (orthogonality compares concepts with each other)" if min_concepts > 1 else "")
        )
    return out


def _subspace(M: Tensor, rank: int | None, tol: float) -> tuple[Tensor, int, int]:
    """Orthonormal basis [d, r] of the row span of M, its rank r (singular values above the absolute ``tol``)
    and k95."""
    _, S, Vh = torch.linalg.svd(M, full_matrices=False)
    r_num = int((S > tol).sum())
    var = S.square()
    total = float(var[:r_num].sum())
    k95 = (
        int(torch.searchsorted(torch.cumsum(var[:r_num], 0) / total, torch.tensor(0.95, dtype=var.dtype))) + 1
        if total > 0
        else 0
    )
    k95 = min(k95, r_num)
    r = r_num if rank is None else min(rank, r_num)
    return Vh[:r].T.contiguous(), r, k95


def _norm_rows(M: Tensor) -> Tensor:
    return M / M.norm(dim=1, keepdim=True).clamp_min(1e-300)


@DIAGNOSTICS.register(
    "factor_orthogonality", input="labelled_embeddings", higher_is="orthogonal", paper="arXiv 2602.24264"
)
def factor_orthogonality(
    emb: Tensor,
    attributes: Mapping[str, Tensor] | Tensor,
    *,
    rank: int | None = None,
    fit: str = "means",
) -> FactorReport:
    """Per-concept components, their principal angles and the linear-additivity R² of labelled embeddings.

    Args:
        emb: ``[n, d]`` finite floating embeddings.
        attributes: ``{concept: LongTensor [n]}`` of value ids (or ``[n, n_concepts]`` integer tensor).
        rank: dimension of each concept subspace (top singular directions of its components); ``None``: numerical
            rank (at most ``#values − 1`` for centered components).
        fit: ``"means"`` (official: per-value means of the centered embeddings) or ``"lstsq"`` (joint least
            squares on the centered one-hot design).

    Returns:
        :class:`FactorReport`.

    Example:
        >>> import torch
        >>> from orthokit.diagnostics.factor import factor_orthogonality
        >>> g = torch.Generator().manual_seed(0)
        >>> y = {"a": torch.arange(40) % 4, "b": torch.arange(40) // 10}
        >>> rep = factor_orthogonality(torch.randn(40, 16, generator=g), y)   # pure noise: weakly additive
        >>> rep.r2 < 0.5, rep.ranks
        (True, {'a': 3, 'b': 3})
    """
    if not isinstance(emb, Tensor):
        raise TypeError(f"emb must be a torch.Tensor, got {type(emb).__name__}")
    if emb.ndim != 2 or not emb.is_floating_point():
        raise ValueError(
            f"emb must be a 2-D floating tensor [n, d], got shape {tuple(emb.shape)} dtype {emb.dtype}"
        )
    n, d = emb.shape
    if n < 3:
        raise ValueError(f"emb needs at least 3 rows, got {n}")
    if not bool(torch.isfinite(emb).all()):
        raise ValueError("emb has non-finite entries")
    if fit not in _FITS:
        raise ValueError(f"fit must be one of {', '.join(_FITS)}, got {fit!r}")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be a positive int or None, got {rank!r}")
    labels = concept_labels(attributes, n, min_concepts=2)
    names = tuple(labels)
    X = emb.detach().to(torch.float64)
    # R², angles and |cos| are scale-invariant: work at unit max-abs so that squares neither overflow nor
    # underflow (embeddings of magnitude 1e200 or 1e-200); components are scaled back at the end
    scale = float(X.abs().max())
    if scale == 0.0:
        raise ValueError("emb has zero variance (all rows equal); nothing to factor")
    X = X / scale
    Xc = X - X.mean(dim=0, keepdim=True)
    sst = float(Xc.square().sum())
    if sst == 0.0:
        raise ValueError("emb has zero variance (all rows equal); nothing to factor")
    # rank cut-off relative to the embeddings' global scale, not to each component's own largest singular
    # value: a concept that carries nothing (components at rounding level) gets rank 0
    tol = math.sqrt(sst) * torch.finfo(torch.float64).eps * max(n, d)

    values: dict[str, list[int]] = {}
    inv: dict[str, Tensor] = {}
    onehots: dict[str, Tensor] = {}
    for h, y in labels.items():
        vals, iv = torch.unique(y, sorted=True, return_inverse=True)
        values[h] = vals.tolist()
        inv[h] = iv
        onehots[h] = torch.nn.functional.one_hot(iv, len(vals)).to(torch.float64)

    comps: dict[str, Tensor] = {}
    if fit == "means":
        for h in names:
            Oh = onehots[h]
            comps[h] = (Oh.T @ Xc) / Oh.sum(dim=0)[:, None]
        Xhat = torch.zeros_like(Xc)
        for h in names:
            Xhat += comps[h][inv[h]]
    else:
        blocks = [onehots[h] - onehots[h].mean(dim=0, keepdim=True) for h in names]
        D = torch.cat(blocks, dim=1)
        B = torch.linalg.pinv(D) @ Xc
        Xhat = D @ B
        off = 0
        for h, blk in zip(names, blocks):
            c = blk.shape[1]
            freq = onehots[h].mean(dim=0, keepdim=True)
            comps[h] = (torch.eye(c, dtype=torch.float64) - freq) @ B[off : off + c]
            off += c
    r2 = 1.0 - float((Xc - Xhat).square().sum()) / sst

    # whitened R² (official: eigenbasis of the centered covariance, 1/sqrt(λ + 1e-9) in the caller's units;
    # in our unit-max-abs units the regulariser is 1e-9 / scale², and a common factor cancels in the ratio)
    _, S, Vh = torch.linalg.svd(Xc, full_matrices=False)
    lam = S.square() / max(n - 1, 1)
    reg_w = (math.sqrt(1e-9) / scale) ** 2 if scale > 1e-150 else math.inf
    if math.isinf(reg_w):  # the regulariser dominates every eigenvalue: whitening is the identity
        w = torch.ones_like(lam)
    else:
        w = torch.rsqrt((lam + reg_w).clamp_min(torch.finfo(torch.float64).tiny))
    W = Vh.T * w[None, :] @ Vh
    Xw, Xhw = Xc @ W, Xhat @ W
    sstw = float(Xw.square().sum())
    r2w = 1.0 - float((Xw - Xhw).square().sum()) / sstw if sstw > 0 else float("nan")

    bases, ranks, k95s = {}, {}, {}
    for h in names:
        bases[h], ranks[h], k95s[h] = _subspace(comps[h], rank, tol)
    null = tuple(h for h in names if ranks[h] == 0)
    live = [h for h in names if ranks[h] > 0]

    angles: dict[tuple[str, str], Tensor] = {}
    overlaps: list[float] = []
    cross: list[Tensor] = []
    within: list[Tensor] = []
    for i, a in enumerate(names):
        na = _norm_rows(comps[a])
        if ranks[a]:
            sims = (na @ na.T).abs()
            within.append(sims[~torch.eye(len(na), dtype=torch.bool)])
        for b in names[i + 1 :]:
            if ranks[a] and ranks[b]:
                cross.append((na @ _norm_rows(comps[b]).T).abs().flatten())
                th = principal_angles(bases[a], bases[b])
                angles[(a, b)] = th
                overlaps.append(float(torch.cos(th).square().mean()))
            else:
                angles[(a, b)] = torch.zeros(0, dtype=torch.float64)
    cross_abs = float(torch.cat(cross).mean()) if cross else float("nan")
    within_abs = float(torch.cat(within).mean()) if within and torch.cat(within).numel() else float("nan")
    orth = 1.0 - (sum(overlaps) / len(overlaps)) if len(live) >= 2 else float("nan")
    comps = {h: c * scale for h, c in comps.items()}
    return FactorReport(
        concepts=names,
        values=values,
        components=comps,
        bases=bases,
        ranks=ranks,
        k95=k95s,
        angles=angles,
        null_concepts=null,
        r2=r2,
        r2_whitened=r2w,
        cross_abs_cos=cross_abs,
        within_abs_cos=within_abs,
        orthogonality=orth,
        score=r2 * orth,
        fit=fit,
        n=int(n),
        d=int(d),
    )
