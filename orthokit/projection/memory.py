"""``SubspaceMemory``: per-layer orthonormal bases of what must not change, and the projections they induce.

A memory is attached to a model and a set of *protected layers* (``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` and
Hugging Face's GPT-2 style ``Conv1D``). For every protected layer it stores one of three kinds of subspace:

* ``"activation"`` — an orthonormal basis ``M ∈ R^{n×k}`` of the layer's **input representations**
  (GPM/SGP/NSGP/FOT family). For ``W ∈ R^{out×n}`` (``nn.Linear`` layout) the update is right-projected,
  ``ΔW ← ΔW (I − M Mᵀ)`` (hard) or ``ΔW ← ΔW (I − M Λ Mᵀ)`` (scaled, SGP), so ``ΔW x = 0`` for every old input
  ``x ∈ span(M)``. Convolutions use im2col columns of size ``C_in·k_h·k_w`` in ``weight.view(C_out, −1)`` order
  (built with :func:`torch.nn.functional.unfold`, honouring stride, padding, padding mode and dilation).
  With ``bias="augment"`` (default) the input is extended by a constant 1, the basis lives in ``R^{n+1}`` and the
  projection acts on ``[W | b]`` — the bias is then covered exactly as well (reference §12.3).
* ``"gradient"`` — an orthonormal basis of flattened parameter gradients (OGD / PCA-OGD, OGPSA, GU), either one
  basis over all protected parameters (``scope="model"``, OGD) or one per layer (``scope="layer"``):
  ``Δθ ← Δθ − S (Sᵀ Δθ)``.
* ``"weight"`` — the top singular directions ``(U_k, V_k)`` of the weight itself (OSFT): the update is kept in
  the orthogonal complement on both sides, ``ΔW ← (I − U Uᵀ) ΔW (I − V Vᵀ)``.

Embedding tables (``nn.Embedding``, passed as ``embeddings=``) are protected by **rows**: during collection the
memory records the ids the old tasks' examples looked up, and the update of those rows is zeroed (old-token and
old-position vectors never move; rows of ids never seen stay trainable). This is the embedding analogue of the
activation basis: an embedding is a linear layer fed one-hot inputs, whose old inputs span exactly the coordinate
directions of the ids seen, so ``ΔE`` restricted to those rows is what ``ΔW(I − MMᵀ)`` removes.

Activation bases are estimated with GPM's energy criterion from the float64 second-moment matrix
``C = R Rᵀ = Σ x xᵀ`` (``R = [x_1 … x_N]``): the singular values of ``R`` are ``√eig(C)``, the residual after the
existing basis is ``R̂ = (I − MMᵀ)R`` with ``R̂R̂ᵀ = P⊥ C P⊥``. Working on ``C`` keeps memory at ``n×n`` per
layer regardless of the number of samples / conv positions and makes the distributed reduction a single
all-reduce of ``C`` (every rank then derives the same basis, which is also broadcast from rank 0).

Reference: Saha, Garg & Roy, "Gradient Projection Memory for Continual Learning", ICLR 2021 (Eq. 5, 8, 9);
Saha & Roy, "Continual Learning with Scaled Gradient Projection", AAAI 2023 (importance, Eq. 2);
Farajtabar et al., "Orthogonal Gradient Descent for Continual Learning", AISTATS 2020 (arXiv 1910.07104).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from orthokit.projection import SubspaceMemory
    >>> model = nn.Sequential(nn.Linear(8, 16, bias=False), nn.ReLU(), nn.Linear(16, 4, bias=False))
    >>> mem = SubspaceMemory(model, layers=nn.Linear)
    >>> x = torch.randn(32, 3) @ torch.randn(3, 8)            # old inputs span 3 of 8 dimensions
    >>> mem.collect_activations(model, [x], threshold=0.999)["0"]
    3
    >>> [(s.name, s.k, s.n) for s in mem.summary()][0]
    ('0', 3, 8)
"""

from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SubspaceMemory",
    "LayerSummary",
    "Threshold",
    "energy_rank",
    "sgp_importance",
    "check_criterion",
    "CRITERIA",
    "SampleBudget",
    "default_forward",
    "warn_uncovered",
]

Threshold = float | Sequence[float] | Mapping[str, float] | Callable[[int, str], float]
SampleBudget = int | Sequence[int] | Mapping[str, int] | None
CRITERIA = ("minimal", "gpm_code")
Kind = Literal["activation", "gradient", "weight"]
_KINDS = ("activation", "gradient", "weight")
_MODEL_SCOPE = "__model__"


# ---------------------------------------------------------------------------------------------------------------
# small numerical helpers (public ones are used by the method files and by the tests)
# ---------------------------------------------------------------------------------------------------------------
def energy_rank(
    ratios: torch.Tensor, threshold: float, explained: float = 0.0, criterion: str = "minimal"
) -> int:
    """Number of new directions GPM's energy criterion keeps.

    ``ratios`` are the residual energies ``σ̂_i² / ‖R‖_F²`` in descending order and ``explained`` the fraction of
    ``‖R‖_F²`` already captured by the existing basis. ``criterion="minimal"`` returns the smallest ``r`` with
    ``explained + Σ_{i≤r} ratio_i ≥ threshold`` (GPM Eq. 9, the loop used for tasks t > 1).
    ``criterion="gpm_first"`` reproduces GPM's first-task code ``r = #{i : cumsum(ratio)_i < threshold}``
    (strict ``<``, the ``+1`` commented out), which is one fewer than minimal unless the threshold is hit exactly.

    Args:
        ratios: 1-D non-negative tensor, descending.
        threshold: ε in [0, 1].
        explained: already-captured energy fraction in [0, 1].
        criterion: ``"minimal"`` or ``"gpm_first"``.

    Example:
        >>> energy_rank(torch.tensor([0.5, 0.3, 0.2]), 0.75)
        2
        >>> energy_rank(torch.tensor([0.5, 0.3, 0.2]), 0.75, criterion="gpm_first")
        1
    """
    r64 = ratios.detach().to(torch.float64).cpu()
    if criterion == "gpm_first":
        return int((torch.cumsum(r64, 0) + explained < threshold).sum())
    if criterion != "minimal":
        raise ValueError(f"criterion must be 'minimal' or 'gpm_first', got {criterion!r}")
    acc = float(explained)
    r = 0
    for v in r64.tolist():
        if acc < threshold:
            acc += v
            r += 1
        else:
            break
    return r


def check_criterion(criterion: str) -> None:
    """``ValueError`` unless ``criterion`` is ``"minimal"`` or ``"gpm_code"`` (``"gpm"`` was renamed)."""
    if criterion == "gpm":
        raise ValueError(
            "criterion='gpm' was renamed: use criterion='gpm_code' for the reference code's first-task count "
            "(one direction fewer than the threshold asks for) or 'minimal' (default, the paper's criterion)"
        )
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be 'minimal' or 'gpm_code', got {criterion!r}")


def sgp_importance(s: torch.Tensor, alpha: float) -> torch.Tensor:
    """SGP importance ``λ_i = (α+1) s_i / (α s_i + max_j s_j)`` (Saha & Roy, AAAI 2023, Eq. 2).

    The largest singular value gets ``λ = 1``; weak directions tend to 0. ``alpha`` is SGP's ``scale_coff``
    (10 in their CIFAR-100 runs, 5 in the RL code).

    Example:
        >>> sgp_importance(torch.tensor([4.0, 1.0]), alpha=10.0)
        tensor([1.0000, 0.7857])
    """
    if alpha < 0:
        raise ValueError(f"SGP alpha (scale coefficient) must be >= 0, got {alpha}")
    if s.numel() == 0:
        return s.clone()
    m = s.max()
    if float(m) <= 0:
        return torch.zeros_like(s)
    return (alpha + 1.0) * s / (alpha * s + m)


def _orthonormal_extension(base: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    """Re-orthogonalise ``new`` against ``base`` (two Gram–Schmidt passes) and normalise its columns."""
    if base is not None and base.shape[1] > 0:
        for _ in range(2):
            new = new - base @ (base.T @ new)
    q, r = torch.linalg.qr(new)
    # keep the orientation of ``new`` (positive diagonal)
    sign = torch.sign(torch.diagonal(r))
    sign[sign == 0] = 1
    return q * sign


def warn_uncovered(names: Sequence[str], who: str, stacklevel: int = 3) -> None:
    """Warn (``UserWarning``) that the trainable parameters ``names`` are neither protected nor frozen.

    Called once when training starts by :class:`~orthokit.projection.Projected` and
    :class:`~orthokit.integrations.hf.ProjectionCallback`; names the first 10 and the count.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as w:
        ...     warnings.simplefilter("always")
        ...     warn_uncovered(["model.norm.weight"], "Projected")
        >>> str(w[0].message).split(" — ")[0]
        'Projected: 1 trainable parameter is neither protected by the memory nor frozen: model.norm.weight'
    """
    if not names:
        return
    n = len(names)
    shown = ", ".join(names[:10]) + (f", ... ({n - 10} more)" if n > 10 else "")
    warnings.warn(
        f"{who}: {n} trainable parameter{'s are' if n > 1 else ' is'} neither protected by the memory nor frozen: "
        f"{shown} — old-task outputs can drift through them; protect them (GPM embeddings='rows', "
        "freeze_1d='all', more layers), freeze them (requires_grad=False) or pass warn_uncovered=False",
        UserWarning,
        stacklevel=stacklevel,
    )


def default_forward(model: nn.Module, batch: Any) -> Any:
    """How a batch is fed to the model during collection.

    ``Tensor`` → ``model(batch)``; ``(x, y, ...)`` tuple/list → ``model(x)``; ``Mapping`` (Hugging Face style) →
    ``model(**batch)`` without ``labels``.

    Example:
        >>> default_forward(nn.Linear(3, 2), (torch.randn(4, 3), torch.zeros(4))).shape
        torch.Size([4, 2])
    """
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("empty batch tuple")
        return model(batch[0])
    if isinstance(batch, Mapping):
        return model(**{k: v for k, v in batch.items() if k != "labels"})
    raise TypeError(
        f"don't know how to feed a batch of type {type(batch).__name__}; pass forward=callable(model, batch)"
    )


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, (tuple, list)) and batch:
        return _batch_size(batch[0])
    if isinstance(batch, Mapping):
        for v in batch.values():
            if isinstance(v, torch.Tensor) and v.dim():
                return int(v.shape[0])
    raise TypeError(f"cannot infer the batch size of a {type(batch).__name__}")


def _truncate(batch: Any, n: int) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch[:n] if batch.dim() else batch
    if isinstance(batch, tuple):
        return tuple(_truncate(b, n) for b in batch)
    if isinstance(batch, list):
        return [_truncate(b, n) for b in batch]
    if isinstance(batch, Mapping):
        return {k: _truncate(v, n) for k, v in batch.items()}
    return batch


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _unwrap(model: nn.Module) -> nn.Module:
    # DistributedDataParallel / DataParallel keep the real network in ``.module``
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def _is_hf_conv1d(module: nn.Module) -> bool:
    # transformers.pytorch_utils.Conv1D (GPT-2): y = x @ W + b with W stored (in, out)
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


def _supported(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) or _is_hf_conv1d(module)


# ---------------------------------------------------------------------------------------------------------------
# per-layer record
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class LayerSummary:
    """One row of :meth:`SubspaceMemory.summary`: protected dimension ``k`` out of ``n`` (``free = n − k``).

    Example:
        >>> s = LayerSummary("fc1", "activation", 542, 784)
        >>> s.free, round(s.fraction, 3)
        (242, 0.691)
    """

    name: str
    kind: str
    k: int
    n: int

    @property
    def free(self) -> int:
        return self.n - self.k

    @property
    def fraction(self) -> float:
        return self.k / self.n if self.n else 0.0

    def __str__(self) -> str:
        return f"{self.name:<30} {self.kind:<10} {self.k:>6}/{self.n:<6} free {self.free}"


class _Layer:
    """A protected layer: how to turn its weight into an ``out × n`` matrix and its input into rows."""

    def __init__(self, name: str, module: nn.Module, bias_mode: str) -> None:
        self.name = name
        self.module = module
        w = module.weight
        if isinstance(module, nn.Linear):
            self.layout, self.fan_in = "linear", module.in_features
        elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
            if module.groups != 1:
                raise ValueError(
                    f"layer {name!r}: grouped convolutions (groups={module.groups}) are not supported; "
                    "protect the layer with a gradient-kind memory instead"
                )
            if isinstance(module.padding, str) and module.padding not in ("valid", "same"):
                raise ValueError(f"layer {name!r}: unsupported padding {module.padding!r}")
            self.layout, self.fan_in = "conv", int(w[0].numel())
        elif _is_hf_conv1d(module):
            self.layout, self.fan_in = "hf_conv1d", int(w.shape[0])
        else:  # pragma: no cover - filtered before
            raise TypeError(f"layer {name!r}: unsupported module type {type(module).__name__}")
        b = getattr(module, "bias", None)
        self.has_bias = isinstance(b, torch.Tensor)
        if bias_mode not in ("augment", "freeze", "ignore"):
            raise ValueError(f"bias must be 'augment', 'freeze' or 'ignore', got {bias_mode!r}")
        self.bias_mode = bias_mode if self.has_bias else "none"
        self.dim = self.fan_in + (1 if self.bias_mode == "augment" else 0)
        # number of dimensions of one unbatched input (Linear: [n]; Conv1d: [C, L]; Conv2d: [C, H, W])
        self.unbatched_dim = 1 if self.layout != "conv" else (2 if isinstance(module, nn.Conv1d) else 3)
        self.warned_empty = False
        self.out = int(w.shape[1] if self.layout == "hf_conv1d" else w.shape[0])
        # stored subspace
        self.kind: str | None = None
        self._basis: torch.Tensor | None = None  # activation: [dim, k]; gradient (layer scope): [D, k]
        self._wob: torch.Tensor | None = None  # cache of weight_only_basis()
        self.sigma: torch.Tensor | None = None  # activation: singular value at insertion [k]
        self.importance: torch.Tensor | None = None  # SGP λ [k]
        self.u: torch.Tensor | None = None  # weight kind: left basis [out, k]
        self.collections = 0

    @property
    def basis(self) -> torch.Tensor | None:
        return self._basis

    @basis.setter
    def basis(self, value: torch.Tensor | None) -> None:
        self._basis = value
        self._wob = None

    # -- parameters -------------------------------------------------------------------------------------------
    @property
    def params(self) -> list[nn.Parameter]:
        ps = [self.module.weight]
        if self.has_bias:
            ps.append(self.module.bias)
        return ps

    @property
    def k(self) -> int:
        return 0 if self.basis is None else int(self.basis.shape[1])

    @property
    def n(self) -> int:
        if self.kind == "gradient":
            return sum(p.numel() for p in self.params)
        if self.kind == "weight":
            return min(self.out, self.fan_in)
        return self.dim

    # -- input rows -------------------------------------------------------------------------------------------
    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """Layer input → ``[N, dim]`` rows (im2col for convs, constant 1 appended for ``bias="augment"``)."""
        m = self.module
        if self.layout in ("linear", "hf_conv1d"):
            r = x.reshape(-1, x.shape[-1])
        else:
            pad = m._reversed_padding_repeated_twice  # set by torch for int / 'same' / 'valid' padding
            mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
            if any(pad):
                x = F.pad(x, pad, mode=mode)
            if isinstance(m, nn.Conv1d):
                if x.dim() == 2:  # unbatched
                    x = x.unsqueeze(0)
                cols = F.unfold(
                    x.unsqueeze(2),
                    kernel_size=(1, m.kernel_size[0]),
                    dilation=(1, m.dilation[0]),
                    stride=(1, m.stride[0]),
                )
            else:
                if x.dim() == 3:
                    x = x.unsqueeze(0)
                cols = F.unfold(x, kernel_size=m.kernel_size, dilation=m.dilation, stride=m.stride)
            r = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        if self.bias_mode == "augment":
            r = torch.cat([r, r.new_ones(r.shape[0], 1)], dim=1)
        return r

    # -- weight as out × n matrix -----------------------------------------------------------------------------
    def to_mat(self, dw: torch.Tensor, db: torch.Tensor | None) -> torch.Tensor:
        if self.layout == "hf_conv1d":
            mat = dw.T
        else:
            mat = dw.reshape(dw.shape[0], -1)
        if self.bias_mode == "augment" and self.kind == "activation":
            if db is None:
                db = mat.new_zeros(mat.shape[0])
            mat = torch.cat([mat, db.reshape(-1, 1).to(mat.dtype)], dim=1)
        return mat

    def from_mat(self, mat: torch.Tensor, w_shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor | None]:
        db = None
        if self.bias_mode == "augment" and self.kind == "activation":
            mat, db = mat[:, :-1], mat[:, -1]
        if self.layout == "hf_conv1d":
            return mat.T.reshape(w_shape), db
        return mat.reshape(w_shape), db

    def weight_only_basis(self) -> torch.Tensor:
        """Orthonormal basis of ``span(M[:n])`` — the input parts of the augmented basis ``M`` — used when the
        bias receives no update: ``ΔW x = 0`` for every old ``x`` then needs exactly ``ΔW ⟂ span(M[:n])``."""
        if self._wob is None:
            top = self.basis[: self.fan_in].to(torch.float64)  # type: ignore[index]
            u, s, _ = torch.linalg.svd(top, full_matrices=False)
            tol = max(top.shape) * torch.finfo(self.basis.dtype).eps * (float(s[0]) if s.numel() else 0.0)  # type: ignore[union-attr]
            self._wob = u[:, : int((s > tol).sum())].to(self.basis.dtype)  # type: ignore[union-attr]
        return self._wob

    def state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "basis": self.basis,
            "sigma": self.sigma,
            "importance": self.importance,
            "u": self.u,
            "collections": self.collections,
            "dim": self.dim,
            "bias_mode": self.bias_mode,
        }


class _EmbeddingRows:
    """A protected embedding table: the set of row ids (tokens / positions) the old tasks looked up."""

    def __init__(self, name: str, module: nn.Embedding) -> None:
        self.name = name
        self.module = module
        self.num = int(module.num_embeddings)
        self.used = torch.zeros(self.num, dtype=torch.bool)  # CPU mask of protected rows

    @property
    def count(self) -> int:
        return int(self.used.sum())

    def ids(self) -> torch.Tensor:
        return self.used.nonzero().flatten()


# ---------------------------------------------------------------------------------------------------------------
# the memory
# ---------------------------------------------------------------------------------------------------------------
class SubspaceMemory:
    """Per-layer orthonormal bases of protected subspaces (activation, gradient or weight kind).

    Args:
        model: the network (``DistributedDataParallel``/``DataParallel`` wrappers are unwrapped).
        layers: which layers to protect — ``None`` (every supported layer), a module name, a module object, a
            module type (e.g. ``nn.Linear``) or a sequence mixing them. Unknown names or modules that are not
            part of ``model`` raise ``ValueError``; unsupported module types raise ``TypeError``.
        bias: ``"augment"`` (default: append a constant 1 to the input so ``[W | b]`` is projected and the bias is
            protected exactly), ``"freeze"`` (a protected layer's bias never changes once it has a basis) or
            ``"ignore"`` (bias updates pass through untouched — old outputs then shift by ``Δb``).
        importance_alpha: SGP's ``α`` used to maintain per-direction importances during collection.
        dtype: storage dtype of the bases (float32 default; estimation always runs in float64).
        embeddings: ``nn.Embedding`` tables protected by rows (``None`` default: none; ``nn.Embedding`` for every
            table; or names / modules): :meth:`collect_activations` records the ids looked up and
            :meth:`project_` zeroes the update of those rows (see :meth:`protect_embeddings`).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        >>> mem = SubspaceMemory(model, layers=["0", "2"])          # by name
        >>> mem = SubspaceMemory(model, layers=nn.Linear)           # by type
        >>> added = mem.collect_activations(model, [torch.randn(32, 8)], threshold=[0.95, 0.99])
        >>> mem.layer_names
        ['0', '2']

    Reference: GPM (Saha et al., ICLR 2021); SGP (Saha & Roy, AAAI 2023); OGD (Farajtabar et al., 2019).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Any = None,
        *,
        bias: str = "augment",
        importance_alpha: float = 10.0,
        dtype: torch.dtype = torch.float32,
        embeddings: Any = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating dtype, got {dtype}")
        self.model = _unwrap(model)
        self.importance_alpha = float(importance_alpha)
        self.dtype = dtype
        self.task_count = 0
        self._layers: dict[str, _Layer] = {}
        for name, module in self._resolve_layers(layers):
            self._layers[name] = _Layer(name, module, bias)
        if not self._layers:
            raise ValueError("no layers to protect: `layers` matched nothing in the model")
        # model-scope flattened gradient basis (OGD)
        self.flat_basis: torch.Tensor | None = None
        self._param_names = {id(p): n for n, p in self.model.named_parameters()}
        self._embeddings: dict[str, _EmbeddingRows] = {}
        if embeddings is not None:
            self.protect_embeddings(embeddings)

    # -- embedding rows ---------------------------------------------------------------------------------------
    def protect_embeddings(self, embeddings: Any) -> list[str]:
        """Protect ``nn.Embedding`` tables by rows: names, modules, the type ``nn.Embedding`` (every table of the
        model; none is fine) or a sequence of them. Returns the names now protected (idempotent).

        Example:
            >>> import torch
            >>> from torch import nn
            >>> net = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3))
            >>> mem = SubspaceMemory(net, layers="1")
            >>> mem.protect_embeddings(nn.Embedding)
            ['0']
            >>> mem.protect_embeddings("1")
            Traceback (most recent call last):
            ...
            TypeError: embedding '1' is a Linear, not an nn.Embedding
        """
        named = dict(self.model.named_modules())
        by_id = {id(m): n for n, m in named.items()}
        specs = [embeddings] if isinstance(embeddings, (str, nn.Module, type)) else embeddings
        if not isinstance(specs, Iterable):
            raise TypeError(
                f"embeddings must be names, modules or nn.Embedding, got {type(embeddings).__name__}"
            )
        chosen: list[tuple[str, nn.Module]] = []
        for spec in specs:
            if isinstance(spec, type):
                if not issubclass(spec, nn.Embedding):
                    raise TypeError(
                        f"embeddings type must be nn.Embedding (or a subclass), got {spec.__name__}"
                    )
                chosen += [(n, m) for n, m in named.items() if isinstance(m, spec)]
                continue
            if isinstance(spec, str):
                if spec not in named:
                    close = difflib.get_close_matches(spec, [n for n in named if n], n=3)
                    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
                    raise ValueError(f"embedding {spec!r} is not in the model.{hint}")
                chosen.append((spec, named[spec]))
            elif isinstance(spec, nn.Module):
                if id(spec) not in by_id:
                    raise ValueError(
                        f"embedding module {type(spec).__name__} object is not part of the model"
                    )
                chosen.append((by_id[id(spec)], spec))
            else:
                raise TypeError(
                    f"embeddings entries must be str, nn.Module or a type, got {type(spec).__name__}"
                )
        for n, m in chosen:
            if not isinstance(m, nn.Embedding):
                raise TypeError(f"embedding {n!r} is a {type(m).__name__}, not an nn.Embedding")
        for n, m in chosen:
            if n not in self._embeddings:
                self._embeddings[n] = _EmbeddingRows(n, m)  # type: ignore[arg-type]
        return list(self._embeddings)

    @property
    def embedding_names(self) -> list[str]:
        """Names of the embedding tables protected by rows."""
        return list(self._embeddings)

    def embedding_rows(self, name: str) -> torch.Tensor:
        """Sorted ids of the protected rows of embedding ``name`` (``int64``)."""
        if name not in self._embeddings:
            raise ValueError(
                f"embedding {name!r} is not protected by this memory; protected: {self.embedding_names}"
            )
        return self._embeddings[name].ids()

    def protect_rows(self, name: str, ids: torch.Tensor | Iterable[int]) -> int:
        """Add row ids (e.g. every token id of the old task's whole dataset) to embedding ``name``'s protected
        set; returns the number of newly protected rows. Out-of-range ids raise ``ValueError`` (nothing added).

        Example:
            >>> import torch
            >>> from torch import nn
            >>> net = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3))
            >>> mem = SubspaceMemory(net, embeddings=nn.Embedding)
            >>> mem.protect_rows("0", [1, 2, 2, 7])
            3
            >>> mem.embedding_rows("0").tolist()
            [1, 2, 7]
        """
        if name not in self._embeddings:
            raise ValueError(
                f"embedding {name!r} is not protected by this memory; protected: {self.embedding_names}"
            )
        rec = self._embeddings[name]
        t = (
            torch.as_tensor(ids if isinstance(ids, torch.Tensor) else list(ids), dtype=torch.long)
            .flatten()
            .cpu()
        )
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= rec.num):
            raise ValueError(
                f"embedding {name!r}: row ids must be in [0, {rec.num}), got [{int(t.min())}, {int(t.max())}]"
            )
        before = rec.count
        rec.used[t] = True
        return rec.count - before

    # -- layer resolution -------------------------------------------------------------------------------------
    def _resolve_layers(self, layers: Any) -> list[tuple[str, nn.Module]]:
        named = dict(self.model.named_modules())
        by_id = {id(m): n for n, m in named.items()}
        if layers is None:
            out = [(n, m) for n, m in named.items() if _supported(m)]
            return out
        if isinstance(layers, (str, nn.Module, type)):
            layers = [layers]
        if not isinstance(layers, Iterable):
            raise TypeError(f"layers must be names, modules or module types, got {type(layers).__name__}")
        chosen: dict[str, nn.Module] = {}
        for spec in layers:
            if isinstance(spec, str):
                key = spec[len("module.") :] if spec.startswith("module.") and spec not in named else spec
                if key not in named:
                    close = difflib.get_close_matches(key, [n for n in named if n], n=3)
                    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
                    raise ValueError(f"layer {spec!r} is not in the model.{hint}")
                mods = [(key, named[key])]
            elif isinstance(spec, type) and issubclass(spec, nn.Module):
                mods = [(n, m) for n, m in named.items() if isinstance(m, spec)]
                if not mods:
                    raise ValueError(f"the model has no layer of type {spec.__name__}")
            elif isinstance(spec, nn.Module):
                if id(spec) not in by_id:
                    raise ValueError(f"module {type(spec).__name__} object is not part of the model")
                mods = [(by_id[id(spec)], spec)]
            else:
                raise TypeError(
                    f"layers entries must be str, nn.Module or a module type, got {type(spec).__name__}"
                )
            for n, m in mods:
                if not _supported(m):
                    raise TypeError(
                        f"layer {n!r} is a {type(m).__name__}; supported: nn.Linear, nn.Conv1d, nn.Conv2d, "
                        "transformers Conv1D"
                    )
                chosen[n] = m
        order = list(named)
        return sorted(chosen.items(), key=lambda kv: order.index(kv[0]))

    # -- introspection ----------------------------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        """Names of the protected layers, in model order."""
        return list(self._layers)

    def layer(self, name: str) -> _Layer:
        """The internal record of protected layer ``name`` (``ValueError`` if not protected)."""
        if name not in self._layers:
            raise ValueError(f"layer {name!r} is not protected by this memory; protected: {self.layer_names}")
        return self._layers[name]

    def basis(self, name: str) -> torch.Tensor | None:
        """The stored basis of layer ``name`` (``[n, k]`` orthonormal columns) or ``None``."""
        return self.layer(name).basis

    def importance(self, name: str) -> torch.Tensor | None:
        """SGP importances ``λ`` of layer ``name`` (one per basis column) or ``None``."""
        return self.layer(name).importance

    def subspace(self, name: str) -> Any:
        """Layer ``name``'s activation basis as an :class:`orthokit.linalg.Subspace`."""
        from orthokit.linalg import Subspace

        b = self.layer(name).basis
        if b is None:
            return Subspace.empty(self.layer(name).dim, dtype=self.dtype)
        return Subspace(b)

    @property
    def is_empty(self) -> bool:
        """``True`` when no layer holds a basis: projection is then an exact no-op."""
        return (
            self.flat_basis is None
            and all(lay.k == 0 for lay in self._layers.values())
            and all(e.count == 0 for e in self._embeddings.values())
        )

    def summary(self) -> list[LayerSummary]:
        """Per-layer protected dimension ``k`` of ``n`` (and ``free = n − k``); the model-scope gradient
        basis (OGD) appears as ``"__model__"``."""
        rows = [LayerSummary(n, lay.kind or "-", lay.k, lay.n) for n, lay in self._layers.items()]
        if self.flat_basis is not None:
            rows.append(
                LayerSummary(_MODEL_SCOPE, "gradient", int(self.flat_basis.shape[1]), self._flat_dim())
            )
        return rows

    def __repr__(self) -> str:
        lines = [f"SubspaceMemory(tasks={self.task_count})"]
        lines += ["  " + str(s) for s in self.summary()]
        return "\n".join(lines)

    def num_floats(self) -> int:
        """Persistent memory of the stored bases/importances, in number of scalars."""
        total = 0 if self.flat_basis is None else self.flat_basis.numel()
        for lay in self._layers.values():
            for t in (lay.basis, lay.u, lay.importance, lay.sigma):
                total += 0 if t is None else t.numel()
        return total

    def _set_kind(self, lay: _Layer, kind: str) -> None:
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        if lay.kind is not None and lay.kind != kind and lay.k > 0:
            raise ValueError(
                f"layer {lay.name!r} already holds a {lay.kind!r} basis; a layer holds one kind "
                f"(call memory.reset({lay.name!r}) first)"
            )
        lay.kind = kind

    def _check_saturation(self, lay: _Layer) -> None:
        if lay.k >= lay.n and lay.n > 0:
            warnings.warn(
                f"layer {lay.name!r} is fully protected ({lay.k}/{lay.n}): hard projection freezes it "
                "(use mode='scaled' or a lower threshold to keep it plastic)",
                RuntimeWarning,
                stacklevel=3,
            )

    def reset(self, name: str | None = None) -> None:
        """Forget the basis of layer ``name`` (or of everything, including the model-scope basis)."""
        lays = self._layers.values() if name is None else [self.layer(name)]
        for lay in lays:
            lay.kind = lay.basis = lay.sigma = lay.importance = lay.u = None
            lay.collections = 0
        if name is None:
            self.flat_basis = None
            self.task_count = 0
            for rec in self._embeddings.values():
                rec.used.zero_()

    # -- module tracking / budgets ------------------------------------------------------------------------------
    def _sync_modules(self) -> None:
        """Follow protected layers that were replaced in the model after the memory was built.

        A replacement with the same type and parameter shapes (e.g. ``model.fc = nn.Linear(...)`` with the same
        sizes) is re-attached: the stored basis describes the layer's *inputs*, which the replacement does not
        change, so the new module is protected from now on (``UserWarning``). Anything else raises ``ValueError``
        naming the layer: the memory never silently stops protecting a layer.
        """
        for name, lay in self._layers.items():
            if name == "":
                current: nn.Module | None = self.model
            else:
                try:
                    current = self.model.get_submodule(name)
                except AttributeError:
                    current = None
            if current is lay.module:
                continue
            if current is None:
                raise ValueError(
                    f"protected layer {name!r} is no longer part of the model; rebuild the memory (or reset it) "
                    "— its update would otherwise be silently unprotected"
                )
            old = lay.module
            same = (
                type(current) is type(old)
                and getattr(current, "weight", None) is not None
                and tuple(current.weight.shape) == tuple(old.weight.shape)
                and isinstance(getattr(current, "bias", None), torch.Tensor) == lay.has_bias
                and (not lay.has_bias or tuple(current.bias.shape) == tuple(old.bias.shape))
            )
            if not same:
                raise ValueError(
                    f"protected layer {name!r} was replaced by an incompatible {type(current).__name__} after "
                    "collection (type, weight shape or bias differ); rebuild the memory for the new model"
                )
            warnings.warn(
                f"protected layer {name!r} was replaced after collection; the memory now protects the new "
                "module (the stored basis describes the layer's inputs, which are unchanged)",
                UserWarning,
                stacklevel=3,
            )
            lay.module = current
            self._param_names = {id(p): n for n, p in self.model.named_parameters()}

    def _budgets(self, max_samples: SampleBudget) -> int | None | dict[str, int]:
        """Validate ``max_samples``: ``None``/int as is, a list (layer order) or dict → ``{layer: budget}``."""
        if max_samples is None:
            return None
        if isinstance(max_samples, bool):
            raise TypeError("max_samples must be an int, a per-layer list/dict of ints or None, got bool")
        if isinstance(max_samples, int):
            if max_samples < 1:
                raise ValueError(f"max_samples must be >= 1, got {max_samples}")
            return max_samples
        if isinstance(max_samples, Mapping):
            unknown = sorted(set(max_samples) - set(self._layers))
            if unknown:
                raise ValueError(f"max_samples has entries for unprotected layers {unknown}")
            missing = sorted(set(self._layers) - set(max_samples))
            if missing:
                raise ValueError(f"max_samples dict lacks protected layers {missing}")
            out = dict(max_samples)
        elif isinstance(max_samples, Sequence) and not isinstance(max_samples, (str, bytes)):
            if len(max_samples) != len(self._layers):
                raise ValueError(
                    f"max_samples list has {len(max_samples)} entries but {len(self._layers)} layers are "
                    f"protected ({self.layer_names})"
                )
            out = dict(zip(self._layers, max_samples))
        else:
            raise TypeError(
                f"max_samples must be an int, a per-layer list/dict of ints or None, got {type(max_samples).__name__}"
            )
        for n, v in out.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"max_samples for layer {n!r} must be an int >= 1, got {v!r}")
        return out

    def _warn_unprotected(self, lay: _Layer, eps: float, criterion: str) -> None:
        if lay.warned_empty:
            return
        lay.warned_empty = True
        hint = (
            " (criterion='gpm_code' keeps one direction fewer than ε asks for)"
            if criterion == "gpm_code"
            else ""
        )
        warnings.warn(
            f"layer {lay.name!r} received non-zero inputs but got 0 basis directions at threshold {eps}{hint}: "
            "it is not protected",
            RuntimeWarning,
            stacklevel=3,
        )

    # -- threshold handling -----------------------------------------------------------------------------------
    def _threshold_for(self, threshold: Threshold, index: int, name: str, task: int) -> float:
        if isinstance(threshold, (str, bytes)):
            raise TypeError(
                f"threshold must be a float, list, dict or callable, got {type(threshold).__name__}"
            )
        if callable(threshold):
            eps = threshold(task, name)
        elif isinstance(threshold, Mapping):
            if name not in threshold:
                raise ValueError(
                    f"threshold dict has no entry for layer {name!r}; layers: {self.layer_names}"
                )
            eps = threshold[name]
        elif isinstance(threshold, (int, float)):
            eps = threshold
        elif isinstance(threshold, Sequence):
            if len(threshold) != len(self._layers):
                raise ValueError(
                    f"threshold list has {len(threshold)} entries but {len(self._layers)} layers are protected "
                    f"({self.layer_names})"
                )
            eps = threshold[index]
        else:
            raise TypeError(
                f"threshold must be a float, list, dict or callable, got {type(threshold).__name__}"
            )
        eps = float(eps)
        if not (0.0 <= eps <= 1.0) or math.isnan(eps):
            raise ValueError(f"threshold for layer {name!r} must be in [0, 1], got {eps}")
        return eps

    # -- collection: activations ------------------------------------------------------------------------------
    @torch.no_grad()
    def activation_covariances(
        self,
        model: nn.Module | None,
        batches: Iterable[Any],
        *,
        max_samples: SampleBudget = None,
        forward: Callable[[nn.Module, Any], Any] | None = None,
        layers: Sequence[str] | None = None,
        reduce: bool = True,
        rows: dict[str, torch.Tensor] | None = None,
    ) -> tuple[dict[str, torch.Tensor], int]:
        """Float64 second moments ``C_l = Σ x xᵀ`` of the protected layers' inputs (im2col/bias-augmented rows).

        Runs ``forward(model, batch)`` (default :func:`default_forward`) in eval mode under ``no_grad`` over at
        most ``max_samples`` examples (an int, or per-layer budgets as in :meth:`collect_activations`: the
        batches run up to the largest budget, layer ``l`` uses the rows of its first ``budget_l`` examples), and — when ``torch.distributed`` is initialised and ``reduce`` — sums the
        matrices over ranks. Returns ``({layer: C}, n_examples)``; ``n_examples`` is this rank's count. When a dict
        ``rows`` is given, the ids looked up in each protected embedding table are recorded into it as boolean
        masks ``{embedding: [num_embeddings]}`` (OR-reduced over ranks); the memory itself is not modified.
        """
        model = self.model if model is None else _unwrap(model)
        forward = forward or default_forward
        names = list(self._layers) if layers is None else list(layers)
        self._sync_modules()
        covs: dict[str, torch.Tensor] = {}
        handles = []
        budgets = self._budgets(max_samples)
        per_layer = isinstance(budgets, dict)
        used: dict[str, int] = {n: 0 for n in names}

        def make_hook(lay: _Layer) -> Callable[..., None]:
            def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> None:
                x = args[0] if args else next(iter((kwargs or {}).values()))
                x = x.detach()
                if per_layer:
                    left = budgets[lay.name] - used[lay.name]  # type: ignore[index]
                    batched = x.dim() > lay.unbatched_dim
                    if left <= 0:
                        return
                    if batched:
                        x = x[:left]
                    used[lay.name] += x.shape[0] if batched else 1
                r = lay.rows(x).to(torch.float64)
                c = r.T @ r
                covs[lay.name] = c if lay.name not in covs else covs[lay.name] + c

            return hook

        def make_row_hook(rec: _EmbeddingRows) -> Callable[..., None]:
            def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
                if args and isinstance(args[0], torch.Tensor):
                    mask = rows.setdefault(rec.name, torch.zeros(rec.num, dtype=torch.bool))  # type: ignore[union-attr]
                    mask[args[0].detach().reshape(-1).cpu().long()] = True

            return hook

        for n in names:
            lay = self.layer(n)
            handles.append(lay.module.register_forward_pre_hook(make_hook(lay)))
        if rows is not None:
            for rec in self._embeddings.values():
                handles.append(rec.module.register_forward_pre_hook(make_row_hook(rec)))
        max_samples = max(budgets.values()) if per_layer else budgets  # type: ignore[union-attr]
        was_training = model.training
        model.eval()
        seen = 0
        try:
            for batch in batches:
                if max_samples is not None:
                    if seen >= max_samples:
                        break
                    bs = _batch_size(batch)
                    if seen + bs > max_samples:
                        batch = _truncate(batch, max_samples - seen)
                        bs = max_samples - seen
                else:
                    bs = _batch_size(batch)
                forward(model, batch)
                seen += bs
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        for n in names:
            if n not in covs:
                lay = self.layer(n)
                dev = lay.module.weight.device
                covs[n] = torch.zeros(lay.dim, lay.dim, dtype=torch.float64, device=dev)
        if reduce and _dist_ready():
            for n in names:
                torch.distributed.all_reduce(covs[n])
            if rows is not None:
                for rec in self._embeddings.values():
                    dev = rec.module.weight.device
                    m = rows.get(rec.name, torch.zeros(rec.num, dtype=torch.bool)).to(
                        device=dev, dtype=torch.int32
                    )
                    torch.distributed.all_reduce(m, op=torch.distributed.ReduceOp.MAX)
                    rows[rec.name] = m.bool().cpu()
        return covs, seen

    def collect_activations(
        self,
        model: nn.Module | None,
        batches: Iterable[Any],
        threshold: Threshold = 0.97,
        *,
        max_samples: SampleBudget = None,
        criterion: str = "minimal",
        forward: Callable[[nn.Module, Any], Any] | None = None,
        task_index: int | None = None,
    ) -> dict[str, int]:
        """Extend every protected layer's activation basis with GPM's energy criterion (one call per task).

        For each layer with input second moment ``C`` (``‖R‖² = tr C``) and current basis ``M``: the residual
        moment ``Ĉ = P⊥ C P⊥`` (``P⊥ = I − MMᵀ``) has eigenpairs ``(σ̂_i², û_i)``; with
        ``explained = (tr C − tr Ĉ)/tr C`` the layer appends the first ``r`` directions ``û_i`` where ``r`` is
        given by :func:`energy_rank` (GPM Eq. 9). ``criterion="minimal"`` (default) keeps, on every collection,
        the smallest basis holding at least ``ε`` of the energy (the paper's Eq. 5/Eq. 8–9 criterion), so
        ``threshold`` means what it says. ``criterion="gpm_code"`` reproduces the reference code (sahagobinda/GPM)
        for paper reproduction: its first collection counts ``#{i : cumsum(ratio)_i < ε}`` (strict ``<``, the
        ``+1`` commented out), one direction fewer than Eq. 5 unless ε is hit exactly, and the minimal count
        afterwards. A layer that receives non-zero inputs but gets 0 directions triggers a ``RuntimeWarning``
        (once per layer): it is not protected at all. Embedding tables protected by rows (``embeddings=``) add
        the ids looked up by the same examples (``max_samples``) to their protected rows.
        The basis is capped at ``n`` columns (a warning reports a fully frozen layer); SGP importances are
        maintained alongside (:func:`sgp_importance` with ``importance_alpha``; old directions re-scored by
        ``‖m_iᵀR‖`` and accumulated with clipping to [0, 1], as in SGP's ``update_SGP``).

        Args:
            model: the network to run (``None`` → the memory's model; may be the DDP wrapper).
            batches: iterable of batches (tensors, ``(x, y)`` tuples or HF dicts).
            threshold: ε as a float, a per-layer list (layer order) / dict, or ``callable(task_index, name)``.
            max_samples: number of examples to use (GPM: 300 for pMNIST, 125 for CIFAR); ``None`` = all; a
                per-layer list (layer order) or dict gives each layer its own example budget, as GPM's CNN code
                does (AlexNet ``[24, 100, 100, 125, 125]``): the batches are run up to the largest budget and
                layer ``l`` sees the rows of its first ``budget_l`` examples only.
            criterion: ``"minimal"`` (default, the paper's criterion) or ``"gpm_code"`` (reference code's
                first-task count).
            forward: ``callable(model, batch)`` running the model (default :func:`default_forward`).
            task_index: task number passed to a callable threshold (default: number of previous collections).

        Returns:
            ``{layer: number of directions added}``.

        Distributed: the ``C`` matrices are all-reduced (summed) and the resulting bases broadcast from rank 0,
        so every rank holds bit-identical bases.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> torch.manual_seed(0) and None
            >>> model = nn.Sequential(nn.Linear(10, 6, bias=False), nn.ReLU(), nn.Linear(6, 3, bias=False))
            >>> x = torch.randn(40, 4) @ torch.randn(4, 10)         # inputs spanning a 4-dim subspace
            >>> mem = SubspaceMemory(model)
            >>> mem.collect_activations(model, [x], threshold=0.999, max_samples=[40, 20])["0"]
            4
        """
        check_criterion(criterion)
        task = self.task_count if task_index is None else int(task_index)
        eps = {n: self._threshold_for(threshold, i, n, task) for i, n in enumerate(self._layers)}
        budgets = self._budgets(max_samples)
        for lay in self._layers.values():
            if lay.kind not in (None, "activation") and lay.k > 0:
                raise ValueError(f"layer {lay.name!r} holds a {lay.kind!r} basis, cannot add activations")
        new_rows: dict[str, torch.Tensor] = {}
        covs, seen = self.activation_covariances(
            model, batches, max_samples=budgets, forward=forward, rows=new_rows
        )
        if seen == 0 and not _dist_ready():
            raise ValueError("collect_activations got no batches")
        added = {}
        for name, lay in self._layers.items():
            added[name] = self._update_activation_basis(lay, covs[name], eps[name], criterion)
            if added[name] == 0 and lay.k == 0 and float(torch.trace(covs[name])) > 0.0:
                self._warn_unprotected(lay, eps[name], criterion)
        for name, mask in new_rows.items():
            self._embeddings[name].used |= mask
        if _dist_ready():
            self._broadcast_layers()
        self.task_count += 1
        return added

    def _update_activation_basis(self, lay: _Layer, cov: torch.Tensor, eps: float, criterion: str) -> int:
        self._set_kind(lay, "activation")
        cov = 0.5 * (cov + cov.T)
        total = float(torch.trace(cov))
        first = lay.collections == 0
        lay.collections += 1
        if not math.isfinite(total):
            raise ValueError(f"layer {lay.name!r}: non-finite activations during collection")
        if total <= 0.0:
            return 0
        dev = cov.device
        m = None if lay.basis is None or lay.k == 0 else lay.basis.to(device=dev, dtype=torch.float64)
        if m is None:
            c_hat = cov
            explained = 0.0
        else:
            pc = cov - m @ (m.T @ cov)
            c_hat = pc - (pc @ m) @ m.T
            c_hat = 0.5 * (c_hat + c_hat.T)
            explained = (total - float(torch.trace(c_hat))) / total
        evals, evecs = torch.linalg.eigh(c_hat)
        evals = evals.flip(0).clamp_min(0.0)
        evecs = evecs.flip(1)
        rule = "gpm_first" if (criterion == "gpm_code" and first) else "minimal"
        r = energy_rank(evals / total, eps, explained=explained, criterion=rule)
        r = min(r, lay.dim - lay.k)
        # directions with (numerically) zero residual energy carry no information: never add them
        tol = evals[0].item() * lay.dim * torch.finfo(torch.float64).eps if evals.numel() else 0.0
        r = min(r, int((evals > max(tol, 0.0)).sum()))
        alpha = self.importance_alpha
        s_new = evals[:r].sqrt()
        if m is not None:
            s_old = torch.einsum("ik,ij,jk->k", m, cov, m).clamp_min(0.0).sqrt()
            imp = sgp_importance(torch.cat([s_old, s_new]), alpha)
            prev = lay.importance.to(device=dev, dtype=torch.float64)
            imp[: m.shape[1]] = (imp[: m.shape[1]] + prev).clamp(0.0, 1.0)
        else:
            imp = sgp_importance(s_new, alpha)
        if r == 0:
            if m is not None:
                lay.importance = imp.to(self.dtype)
            return 0
        new = _orthonormal_extension(m, evecs[:, :r])
        basis = new if m is None else torch.cat([m, new], dim=1)
        sigma = s_new if m is None else torch.cat([lay.sigma.to(device=dev, dtype=torch.float64), s_new])
        lay.basis = basis.to(self.dtype)
        lay.sigma = sigma.to(self.dtype)
        lay.importance = imp.to(self.dtype)
        self._check_saturation(lay)
        return r

    # -- collection: gradients --------------------------------------------------------------------------------
    def _scope_params(self, scope: str, name: str | None = None) -> list[nn.Parameter]:
        if scope == "model":
            return [p for lay in self._layers.values() for p in lay.params]
        return self.layer(name).params  # type: ignore[arg-type]

    def _flat_dim(self) -> int:
        return sum(p.numel() for p in self._scope_params("model"))

    def collect_gradients(
        self,
        model: nn.Module | None,
        loss_fn: Callable[[nn.Module, Any], torch.Tensor],
        batches: Iterable[Any],
        *,
        rank: int | None = None,
        threshold: float | None = None,
        scope: str = "model",
        max_samples: int | None = None,
        tol: float = 1e-10,
    ) -> dict[str, int]:
        """Extend a flattened gradient basis with new gradient directions (OGD / PCA-OGD; OGPSA/GU style).

        ``loss_fn(model, batch)`` returns either a scalar or a 1-D tensor of per-sample scalars (OGD-GTL: the
        ground-truth logit of every sample); each scalar contributes one gradient vector ``g`` over the
        protected parameters (weights, then biases, in layer order). The vectors ``G = [g_1 … g_s]`` are
        orthogonalised against the stored basis ``S`` twice (``Ĝ = G − S(SᵀG)``), and the left singular vectors
        of ``Ĝ`` with ``σ > tol·max_j‖g_j‖`` are appended — all of them (OGD), the top ``rank`` (PCA-OGD) or as
        many as GPM's energy criterion with ``threshold`` needs.

        Args:
            model: network to differentiate (``None`` → the memory's model).
            loss_fn: ``callable(model, batch) -> Tensor`` (scalar or ``[B]``).
            batches: iterable of batches.
            rank: cap on new directions per call.
            threshold: optional energy threshold on ``‖G‖_F²``.
            scope: ``"model"`` (one basis over all protected parameters, OGD) or ``"layer"`` (one per layer).
            max_samples: maximum number of gradient vectors.
            tol: relative tolerance below which a residual direction is dropped (infty uses 1e-12 absolute).

        Returns:
            ``{scope name: number of directions added}``.

        Distributed: gradient vectors of all ranks are all-gathered, so every rank builds the same basis.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> model = nn.Sequential(nn.Linear(4, 3))
            >>> mem = SubspaceMemory(model, bias="ignore")
            >>> x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
            >>> gtl = lambda m, b: m(b[0]).gather(1, b[1][:, None]).squeeze(1)   # OGD ground-truth logits
            >>> mem.collect_gradients(model, gtl, [(x, y)], scope="model")
            {'__model__': 5}
        """
        if scope not in ("model", "layer"):
            raise ValueError(f"scope must be 'model' or 'layer', got {scope!r}")
        if rank is not None and rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        if scope == "model":
            for lay in self._layers.values():
                if lay.k > 0:
                    raise ValueError("a model-scope gradient basis cannot be mixed with per-layer bases")
        else:
            if self.flat_basis is not None:
                raise ValueError("this memory holds a model-scope gradient basis; use scope='model'")
            for lay in self._layers.values():
                if lay.kind not in (None, "gradient") and lay.k > 0:
                    raise ValueError(f"layer {lay.name!r} holds a {lay.kind!r} basis, cannot add gradients")
        model = self.model if model is None else model
        params = self._scope_params("model")
        cols: list[torch.Tensor] = []
        was_training = model.training
        model.eval()
        try:
            for batch in batches:
                if max_samples is not None and len(cols) >= max_samples:
                    break
                out = loss_fn(model, batch)
                if not isinstance(out, torch.Tensor):
                    raise TypeError(f"loss_fn must return a Tensor, got {type(out).__name__}")
                scalars = out.reshape(-1)
                for i in range(scalars.shape[0]):
                    if max_samples is not None and len(cols) >= max_samples:
                        break
                    grads = torch.autograd.grad(
                        scalars[i], params, retain_graph=i < scalars.shape[0] - 1, allow_unused=True
                    )
                    cols.append(
                        torch.cat(
                            [
                                (torch.zeros_like(p) if g is None else g).reshape(-1).to(torch.float64)
                                for g, p in zip(grads, params)
                            ]
                        )
                    )
        finally:
            model.train(was_training)
        dev = params[0].device
        g = (
            torch.stack(cols, dim=1)
            if cols
            else torch.zeros(self._flat_dim(), 0, dtype=torch.float64, device=dev)
        )
        if _dist_ready():
            g = _all_gather_columns(g)
        if g.shape[1] == 0:
            raise ValueError("collect_gradients got no gradient vectors")
        if not bool(torch.isfinite(g).all()):
            raise ValueError("collect_gradients: non-finite gradients")
        added: dict[str, int] = {}
        if scope == "model":
            self.flat_basis, added[_MODEL_SCOPE] = self._extend_flat(self.flat_basis, g, rank, threshold, tol)
        else:
            off = 0
            for name, lay in self._layers.items():
                d = sum(p.numel() for p in lay.params)
                self._set_kind(lay, "gradient")
                lay.basis, added[name] = self._extend_flat(lay.basis, g[off : off + d], rank, threshold, tol)
                lay.collections += 1
                if lay.k >= lay.n:
                    self._check_saturation(lay)
                off += d
        if _dist_ready():
            self._broadcast_layers()
        self.task_count += 1
        return added

    def _extend_flat(
        self,
        basis: torch.Tensor | None,
        g: torch.Tensor,
        rank: int | None,
        threshold: float | None,
        tol: float,
    ) -> tuple[torch.Tensor | None, int]:
        s = None if basis is None else basis.to(device=g.device, dtype=torch.float64)
        total = float((g * g).sum())
        scale = float(g.norm(dim=0).max()) if g.numel() else 0.0
        if total == 0.0:
            return basis, 0
        res = g
        if s is not None:
            for _ in range(2):
                res = res - s @ (s.T @ res)
        u, sv, _ = torch.linalg.svd(res, full_matrices=False)
        keep = int((sv > tol * scale).sum())
        if threshold is not None:
            explained = (total - float((res * res).sum())) / total
            keep = min(keep, energy_rank(sv[:keep] ** 2 / total, threshold, explained=explained))
        if rank is not None:
            keep = min(keep, rank)
        cap = g.shape[0] - (0 if s is None else s.shape[1])
        keep = min(keep, cap)
        if keep == 0:
            return basis, 0
        new = _orthonormal_extension(s, u[:, :keep])
        out = new if s is None else torch.cat([s, new], dim=1)
        return out.to(self.dtype), keep

    # -- collection: weight spectrum (OSFT) -------------------------------------------------------------------
    @torch.no_grad()
    def collect_weights(self, *, rank: int | None = None, rank_ratio: float | None = None) -> dict[str, int]:
        """Store the top singular directions ``(U_k, V_k)`` of every protected weight (OSFT's frozen part).

        Exactly one of ``rank`` (per layer, capped at ``min(out, n)``) or ``rank_ratio`` (fraction of
        ``min(out, n)``, rounded down) must be given. Subsequent projection keeps updates in
        ``(I − U Uᵀ) ΔW (I − V Vᵀ)``, i.e. the top-k spectrum of ``W`` is untouched to first order.
        """
        if (rank is None) == (rank_ratio is None):
            raise ValueError("give exactly one of rank or rank_ratio")
        if rank_ratio is not None and not 0.0 <= rank_ratio <= 1.0:
            raise ValueError(f"rank_ratio must be in [0, 1], got {rank_ratio}")
        if rank is not None and rank < 0:
            raise ValueError(f"rank must be >= 0, got {rank}")
        added = {}
        for name, lay in self._layers.items():
            self._set_kind(lay, "weight")
            w = lay.module.weight.detach()
            mat = (w.T if lay.layout == "hf_conv1d" else w.reshape(w.shape[0], -1)).to(torch.float64)
            full = min(mat.shape)
            k = min(full, rank if rank is not None else int(math.floor(rank_ratio * full)))  # type: ignore[operator]
            u, s, vh = torch.linalg.svd(mat, full_matrices=False)
            lay.u = u[:, :k].to(self.dtype).contiguous()
            lay.basis = vh[:k].T.to(self.dtype).contiguous()
            lay.sigma = s[:k].to(self.dtype)
            lay.importance = None
            lay.collections += 1
            added[name] = k
            self._check_saturation(lay)
        self.task_count += 1
        return added

    # -- direct basis manipulation (for custom estimators: HLOP, FOT, ...) ---------------------------------------
    def set_basis(
        self,
        name: str,
        basis: torch.Tensor | None,
        *,
        kind: str = "activation",
        importance: torch.Tensor | None = None,
        u: torch.Tensor | None = None,
        orthonormalize: bool = True,
    ) -> None:
        """Replace layer ``name``'s basis (``[n, k]`` columns; ``None`` clears). ``orthonormalize=True`` runs QR
        so any full-column-rank spanning set is accepted; otherwise ``MᵀM = I`` is checked (1e-4).

        For ``kind="weight"`` pass the right basis as ``basis`` (``[n, k]``) and the left one as ``u`` (``[out, k]``);
        for ``name == "__model__"`` the model-scope gradient basis is set.
        """
        if name == _MODEL_SCOPE:
            if basis is None:
                self.flat_basis = None
                return
            self._check_basis(basis, self._flat_dim(), name, orthonormalize)
            self.flat_basis = (
                _orthonormal_extension(None, basis.to(torch.float64)) if orthonormalize else basis
            ).to(self.dtype)
            return
        lay = self.layer(name)
        if basis is None:
            self.reset(name)
            return
        self._set_kind(lay, kind)
        n = {"activation": lay.dim, "gradient": sum(p.numel() for p in lay.params), "weight": lay.fan_in}[
            kind
        ]
        self._check_basis(basis, n, name, orthonormalize)
        b = basis.detach().to(torch.float64)
        lay.basis = (_orthonormal_extension(None, b) if orthonormalize else b).to(self.dtype)
        if kind == "weight":
            if u is None or u.shape != (lay.out, basis.shape[1]):
                raise ValueError(
                    f"layer {name!r}: weight kind needs u of shape ({lay.out}, {basis.shape[1]})"
                )
            ud = u.detach().to(torch.float64)
            lay.u = (_orthonormal_extension(None, ud) if orthonormalize else ud).to(self.dtype)
        if importance is not None:
            if importance.shape != (basis.shape[1],):
                raise ValueError(
                    f"importance must have shape ({basis.shape[1]},), got {tuple(importance.shape)}"
                )
            if bool((importance < 0).any()) or bool((importance > 1).any()):
                raise ValueError("importance values must lie in [0, 1]")
            lay.importance = importance.detach().to(self.dtype)
        else:
            lay.importance = None
        lay.sigma = None
        self._check_saturation(lay)

    @staticmethod
    def _check_basis(basis: torch.Tensor, n: int, name: str, orthonormalize: bool) -> None:
        if not isinstance(basis, torch.Tensor) or basis.dim() != 2:
            raise ValueError(f"basis for {name!r} must be a 2-D tensor [n, k]")
        if basis.shape[0] != n:
            raise ValueError(f"basis for {name!r} must have {n} rows (layer dimension), got {basis.shape[0]}")
        if basis.shape[1] > n:
            raise ValueError(f"basis for {name!r} has more columns ({basis.shape[1]}) than dimensions ({n})")
        if not bool(torch.isfinite(basis).all()):
            raise ValueError(f"basis for {name!r} contains non-finite values")
        if not orthonormalize:
            b = basis.to(torch.float64)
            err = (b.T @ b - torch.eye(b.shape[1], dtype=torch.float64, device=b.device)).abs().max()
            if float(err) > 1e-4:
                raise ValueError(f"basis for {name!r} is not orthonormal (max |MᵀM − I| = {float(err):.2e})")

    # -- projection -------------------------------------------------------------------------------------------
    def protected_parameters(self) -> list[nn.Parameter]:
        """Parameters whose updates are projected (weights, and biases of layers holding a basis).

        Protected layers replaced in the model since collection are re-attached or refused (``ValueError``),
        see :meth:`_sync_modules`."""
        self._sync_modules()
        if self.flat_basis is not None:
            out = self._scope_params("model")
        else:
            out = [p for lay in self._layers.values() if lay.k > 0 for p in lay.params]
        seen = {id(p) for p in out}
        for rec in self._embeddings.values():
            w = rec.module.weight
            if rec.count and id(w) not in seen:  # tied weights (lm_head = embedding) appear once
                seen.add(id(w))
                out.append(w)
        return out

    def uncovered_parameters(
        self, frozen: Iterable[nn.Parameter] = (), model: nn.Module | None = None
    ) -> list[str]:
        """Names of the trainable parameters of ``model`` (default: the memory's) that are neither protected
        (:meth:`protected_parameters`) nor in ``frozen``: old-task outputs can drift through them freely.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> net = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4), nn.Linear(4, 3))
            >>> mem = SubspaceMemory(net, layers="2")
            >>> added = mem.collect_activations(net, [torch.tensor([[1, 2, 3]])], threshold=0.99)
            >>> mem.uncovered_parameters()
            ['0.weight', '1.weight', '1.bias']
        """
        model = self.model if model is None else _unwrap(model)
        covered = {id(p) for p in self.protected_parameters()} | {id(p) for p in frozen}
        return [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in covered]

    def project_(
        self,
        updates: Mapping[nn.Parameter, torch.Tensor],
        *,
        mode: str = "hard",
        scale_alpha: float | None = None,
    ) -> None:
        """Project update (or gradient) tensors **in place**, keyed by parameter: the layers' subspaces (see
        :meth:`_project_subspaces_` for the formulas), then the protected embedding rows — their update is zeroed
        in both modes (an old token's vector is fully protected; a tied LM head gets both projections, which
        commute: rows on the left, the hidden-state basis on the right).

        Example:
            >>> import torch
            >>> from torch import nn
            >>> net = nn.Sequential(nn.Embedding(6, 3), nn.Linear(3, 2))
            >>> mem = SubspaceMemory(net, layers="1", embeddings=nn.Embedding)
            >>> added = mem.collect_activations(net, [torch.tensor([[0, 2]])], threshold=0.99)
            >>> d = torch.ones(6, 3)
            >>> mem.project_({net[0].weight: d})
            >>> d[:, 0].tolist()      # rows of ids 0 and 2 (seen by the old task) are zeroed
            [0.0, 1.0, 0.0, 1.0, 1.0, 1.0]
        """
        self._project_subspaces_(updates, mode=mode, scale_alpha=scale_alpha)
        for rec in self._embeddings.values():
            d = updates.get(rec.module.weight)
            if d is None or not rec.count:
                continue
            if d.is_sparse:
                raise ValueError(
                    f"embedding {rec.name!r}: sparse gradients are not supported by row protection"
                )
            d[rec.used.to(d.device)] = 0

    def _project_subspaces_(
        self,
        updates: Mapping[nn.Parameter, torch.Tensor],
        *,
        mode: str = "hard",
        scale_alpha: float | None = None,
    ) -> None:
        """Project update (or gradient) tensors **in place**, keyed by parameter (layers' subspaces only).

        Hard: ``Δ ← Δ (I − MMᵀ)`` (activation), ``Δθ ← Δθ − S Sᵀ Δθ`` (gradient), ``Δ ← (I − UUᵀ) Δ (I − VVᵀ)``
        (weight). Scaled (SGP): ``Δ ← Δ (I − M Λ Mᵀ)`` with ``Λ`` the stored importances, or — when
        ``scale_alpha`` is given — ``λ = (α+1)σ/(ασ + max σ)`` recomputed from the stored singular values.
        Parameters of protected layers missing from ``updates`` are treated as not being updated. For an
        activation layer with ``bias="augment"`` whose bias is not updated (e.g. Muon on 2-D parameters only),
        hard mode projects ``ΔW`` off ``span(M[:n])`` (the old inputs' ``x``-parts), which is again exact;
        scaled mode then drops the bias part of ``[ΔW | 0](I − MΛMᵀ)``. ``freeze`` bias mode zeroes the bias
        update of a layer holding a basis.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> model = nn.Sequential(nn.Linear(6, 2, bias=False))
            >>> mem = SubspaceMemory(model)
            >>> x_old = torch.randn(10, 2) @ torch.randn(2, 6)
            >>> mem.collect_activations(model, [x_old], threshold=0.9999)
            {'0': 2}
            >>> g = torch.randn(2, 6)
            >>> mem.project_({model[0].weight: g})    # in place: now g @ x_old.T ≈ 0
            >>> bool((g @ x_old.T).abs().max() < 1e-4)
            True
        """
        if mode not in ("hard", "scaled"):
            raise ValueError(f"mode must be 'hard' or 'scaled', got {mode!r}")
        if self.flat_basis is not None:
            params = self._scope_params("model")
            present = [p for p in params if p in updates]
            if not present:
                return
            ref = updates[present[0]]
            s = self.flat_basis.to(
                device=ref.device, dtype=torch.float32 if ref.dtype != torch.float64 else ref.dtype
            )
            vec = torch.cat(
                [
                    updates[p].reshape(-1).to(s.dtype) if p in updates else s.new_zeros(p.numel())
                    for p in params
                ]
            )
            coeff = s.T @ vec
            if mode == "scaled":
                raise ValueError("mode='scaled' needs an activation-kind memory with importances")
            vec = vec - s @ coeff
            off = 0
            for p in params:
                if p in updates:
                    t = updates[p]
                    t.copy_(vec[off : off + p.numel()].reshape(t.shape).to(t.dtype))
                off += p.numel()
            return
        for lay in self._layers.values():
            if lay.k == 0:
                continue
            w = lay.module.weight
            b = lay.module.bias if lay.has_bias else None
            dw = updates.get(w)
            db = updates.get(b) if b is not None else None
            if dw is None and db is None:
                continue
            if lay.kind == "gradient":
                self._project_layer_flat(lay, dw, db, mode)
                continue
            if dw is None:
                dw_t = torch.zeros_like(w)
            else:
                dw_t = dw
            cdt = torch.float64 if dw_t.dtype == torch.float64 else torch.float32
            if lay.kind == "activation" and lay.bias_mode == "augment" and db is None and mode == "hard":
                # the bias is not being updated: protect the old inputs' x-parts exactly instead
                v = lay.weight_only_basis().to(device=dw_t.device, dtype=cdt)
                mat = dw_t.to(cdt).T if lay.layout == "hf_conv1d" else dw_t.to(cdt).reshape(dw_t.shape[0], -1)
                mat = mat - (mat @ v) @ v.T
                new_w = mat.T if lay.layout == "hf_conv1d" else mat.reshape(w.shape)
                dw.copy_(new_w.reshape(w.shape).to(dw.dtype))  # type: ignore[union-attr]
                continue
            mat = lay.to_mat(dw_t.to(cdt), None if db is None else db.to(cdt))
            v = lay.basis.to(device=mat.device, dtype=cdt)
            if lay.kind == "weight":
                if mode == "scaled":
                    raise ValueError("mode='scaled' is defined for activation-kind memories only")
                u = lay.u.to(device=mat.device, dtype=cdt)
                mat = mat - u @ (u.T @ mat)
                mat = mat - (mat @ v) @ v.T
            else:
                coeff = mat @ v
                if mode == "scaled":
                    lam = self._scaled_lambda(lay, scale_alpha)
                    coeff = coeff * lam.to(device=mat.device, dtype=cdt)
                mat = mat - coeff @ v.T
            new_w, new_b = lay.from_mat(mat, w.shape)
            if dw is not None:
                dw.copy_(new_w.to(dw.dtype))
            if db is not None:
                if lay.bias_mode == "freeze":
                    db.zero_()
                elif new_b is not None:
                    db.copy_(new_b.to(db.dtype))

    @torch.no_grad()
    def interference(self, updates: Mapping[nn.Parameter, torch.Tensor] | None = None) -> dict[str, float]:
        """Per-layer interference ratio ``‖P(Δ)‖_F / ‖Δ‖_F`` — the fraction of an update (default: the current
        ``.grad`` of the protected parameters) that lies inside the protected subspace, i.e. what hard projection
        removes (0 = no conflict with old tasks, 1 = the update would only move protected directions).

        Example:
            >>> import torch
            >>> from torch import nn
            >>> model = nn.Sequential(nn.Linear(4, 2, bias=False))
            >>> mem = SubspaceMemory(model)
            >>> mem.collect_activations(model, [torch.eye(4)[:2]], threshold=0.9999)
            {'0': 2}
            >>> model(torch.eye(4)[:1]).sum().backward()   # gradient entirely inside the remembered span
            >>> round(mem.interference()["0"], 4)
            1.0
        """
        out: dict[str, float] = {}
        if updates is None:
            updates = {p: p.grad for p in self.protected_parameters() if p.grad is not None}
        if self.flat_basis is not None:
            params = self._scope_params("model")
            vec = torch.cat(
                [
                    (updates[p] if p in updates else torch.zeros_like(p)).reshape(-1).to(torch.float64)
                    for p in params
                ]
            )
            s = self.flat_basis.to(device=vec.device, dtype=torch.float64)
            norm = float(vec.norm())
            out[_MODEL_SCOPE] = float((s.T @ vec).norm()) / norm if norm > 0 else 0.0
            return out
        for name, lay in self._layers.items():
            if lay.k == 0 or lay.module.weight not in updates:
                continue
            ts = {p: updates[p].detach().clone() for p in lay.params if p in updates}
            before = torch.cat([t.reshape(-1).to(torch.float64) for t in ts.values()])
            self.project_(ts)
            after = torch.cat([t.reshape(-1).to(torch.float64) for t in ts.values()])
            norm = float(before.norm())
            out[name] = float((before - after).norm()) / norm if norm > 0 else 0.0
        return out

    def _scaled_lambda(self, lay: _Layer, scale_alpha: float | None) -> torch.Tensor:
        if scale_alpha is not None:
            if lay.sigma is None:
                raise ValueError(
                    f"layer {lay.name!r} has no stored singular values to compute importances from"
                )
            return sgp_importance(lay.sigma.to(torch.float64), float(scale_alpha))
        if lay.importance is None:
            raise ValueError(
                f"layer {lay.name!r} has no importances; pass scale_alpha=... or use mode='hard'"
            )
        return lay.importance

    def _project_layer_flat(
        self, lay: _Layer, dw: torch.Tensor | None, db: torch.Tensor | None, mode: str
    ) -> None:
        if mode == "scaled":
            raise ValueError("mode='scaled' is defined for activation-kind memories only")
        params = lay.params
        ts = [dw, db][: len(params)]
        ref = next(t for t in ts if t is not None)
        cdt = torch.float64 if ref.dtype == torch.float64 else torch.float32
        vec = torch.cat(
            [
                t.reshape(-1).to(cdt) if t is not None else ref.new_zeros(p.numel(), dtype=cdt)
                for t, p in zip(ts, params)
            ]
        )
        s = lay.basis.to(device=vec.device, dtype=cdt)
        vec = vec - s @ (s.T @ vec)
        off = 0
        for t, p in zip(ts, params):
            if t is not None:
                t.copy_(vec[off : off + p.numel()].reshape(t.shape).to(t.dtype))
            off += p.numel()

    # -- state ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: bases, singular values, importances, counters (tensors on CPU)."""

        def cpu(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach().cpu().clone()

        return {
            "version": 1,
            "task_count": self.task_count,
            "importance_alpha": self.importance_alpha,
            "flat_basis": cpu(self.flat_basis),
            "flat_dim": self._flat_dim(),
            "layers": {
                n: {k: (cpu(v) if isinstance(v, torch.Tensor) else v) for k, v in lay.state().items()}
                for n, lay in self._layers.items()
            },
            "embeddings": {n: {"num": rec.num, "rows": rec.ids()} for n, rec in self._embeddings.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; layer names and dimensions must match (``ValueError`` otherwise).
        Validation happens before anything is modified."""
        if not isinstance(state, Mapping) or "layers" not in state:
            raise ValueError("not a SubspaceMemory state dict (missing 'layers')")
        if state.get("version") != 1:
            raise ValueError(f"unsupported SubspaceMemory state version {state.get('version')!r}")
        layers = state["layers"]
        unknown = sorted(set(layers) - set(self._layers))
        if unknown:
            raise ValueError(f"state dict has layers not protected by this memory: {unknown}")
        missing = sorted(set(self._layers) - set(layers))
        if missing:
            raise ValueError(f"state dict lacks protected layers: {missing}")
        for n, st in layers.items():
            lay = self._layers[n]
            if st["dim"] != lay.dim or st["bias_mode"] != lay.bias_mode:
                raise ValueError(
                    f"layer {n!r}: state has dim {st['dim']} (bias {st['bias_mode']}), "
                    f"this model has dim {lay.dim} (bias {lay.bias_mode})"
                )
            if st["kind"] is not None and st["kind"] not in _KINDS:
                raise ValueError(f"layer {n!r}: unknown kind {st['kind']!r}")
            b = st["basis"]
            if b is not None:
                expect = {
                    "activation": lay.dim,
                    "gradient": sum(p.numel() for p in lay.params),
                    "weight": lay.fan_in,
                }[st["kind"]]
                if b.dim() != 2 or b.shape[0] != expect:
                    raise ValueError(
                        f"layer {n!r}: basis shape {tuple(b.shape)} does not match dimension {expect}"
                    )
        emb = state.get("embeddings", {})
        if emb is None or not isinstance(emb, Mapping):
            raise ValueError(f"state dict 'embeddings' must be a dict, got {type(emb).__name__}")
        if sorted(emb) != sorted(self._embeddings):
            raise ValueError(
                f"state dict protects embedding rows of {sorted(emb)}, this memory of {sorted(self._embeddings)} "
                "(build the memory / method with the same embeddings option)"
            )
        for n, st in emb.items():
            rec = self._embeddings[n]
            ids = st.get("rows") if isinstance(st, Mapping) else None
            if not isinstance(ids, torch.Tensor) or st.get("num") != rec.num:
                raise ValueError(
                    f"embedding {n!r}: state has {st.get('num') if isinstance(st, Mapping) else st!r} rows, the model {rec.num}"
                )
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= rec.num):
                raise ValueError(f"embedding {n!r}: stored row ids out of range [0, {rec.num})")
        fb = state.get("flat_basis")
        if fb is not None and (fb.dim() != 2 or fb.shape[0] != self._flat_dim()):
            raise ValueError(
                f"model-scope basis has {fb.shape[0]} rows, the model has {self._flat_dim()} parameters"
            )
        dev = next(iter(self._layers.values())).module.weight.device

        def to(t: Any) -> Any:
            return t.to(device=dev, dtype=self.dtype) if isinstance(t, torch.Tensor) else t

        for n, st in layers.items():
            lay = self._layers[n]
            lay.kind = st["kind"]
            lay.basis, lay.sigma, lay.importance, lay.u = (
                to(st[k]) for k in ("basis", "sigma", "importance", "u")
            )
            lay.collections = int(st["collections"])
        self.flat_basis = to(fb)
        for n, st in emb.items():
            rec = self._embeddings[n]
            rec.used = torch.zeros(rec.num, dtype=torch.bool)
            rec.used[st["rows"].long()] = True
        self.task_count = int(state["task_count"])
        self.importance_alpha = float(state["importance_alpha"])

    def _broadcast_layers(self) -> None:
        """Make rank 0's bases authoritative on every rank (after identical reductions they already agree to
        rounding; broadcasting makes them bit-identical)."""
        dist = torch.distributed
        for lay in self._layers.values():
            for attr in ("basis", "sigma", "importance", "u"):
                t = getattr(lay, attr)
                if t is not None:
                    t = t.contiguous()
                    dist.broadcast(t, src=0)
                    setattr(lay, attr, t)
        if self.flat_basis is not None:
            t = self.flat_basis.contiguous()
            dist.broadcast(t, src=0)
            self.flat_basis = t


def _all_gather_columns(g: torch.Tensor) -> torch.Tensor:
    """All-gather ``[D, s_rank]`` column blocks of possibly different widths into ``[D, Σ s]`` (rank order)."""
    dist = torch.distributed
    world = dist.get_world_size()
    width = torch.tensor([g.shape[1]], device=g.device)
    widths = [torch.zeros_like(width) for _ in range(world)]
    dist.all_gather(widths, width)
    wmax = int(max(int(w) for w in widths))
    padded = torch.zeros(g.shape[0], wmax, dtype=g.dtype, device=g.device)
    padded[:, : g.shape[1]] = g
    blocks = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(blocks, padded.contiguous())
    return torch.cat([b[:, : int(w)] for b, w in zip(blocks, widths)], dim=1)
