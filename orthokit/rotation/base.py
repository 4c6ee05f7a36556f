r"""The :class:`Rotation` abstraction: an orthogonal ``n × n`` map stored as its defining data.

Convention (row vectors, shared by the whole :mod:`orthokit.rotation` family): a rotation ``Q`` acts on
activations as ``x ↦ x @ Q`` over the last dimension. :meth:`Rotation.apply` computes ``x @ Q``,
:meth:`Rotation.apply_T` computes ``x @ Qᵀ = x @ Q⁻¹``, :meth:`Rotation.inverse` returns the rotation of ``Qᵀ``.

A rotation stores *what defines it* — Rademacher signs (int8), block orders, a seed — never a
``torch.Generator`` state (nn.md pitfall 7: the inverse of a randomized Hadamard needs the same signs, and generator
state is neither portable nor inspectable). :meth:`Rotation.state_dict` holds only tensors, ints and strs, and
:meth:`Rotation.from_state_dict` rebuilds the identical rotation after validating every field (wrong shapes, signs
that are not ±1, unsupported orders, unknown names raise one-line ``ValueError``/``TypeError``).

Concrete rotations: ``identity`` (here), :class:`DenseRotation` (an explicit validated matrix, here),
``hadamard`` (:mod:`orthokit.rotation.hadamard`), ``haar`` (:mod:`orthokit.rotation.haar`), ``two_block_hadamard``
(:mod:`orthokit.rotation.two_block`). :func:`orthokit.rotation.registry.make_rotation` builds any of them.

Example:
    >>> import torch
    >>> from orthokit.rotation.base import DenseRotation, IdentityRotation, Rotation
    >>> Q = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))[0]
    >>> r = DenseRotation(Q)
    >>> x = torch.randn(3, 4, dtype=torch.float64)
    >>> bool(torch.allclose(r.apply(x), x @ Q)), bool(torch.allclose(r.inverse().apply(r.apply(x)), x))
    (True, True)
    >>> r2 = Rotation.from_state_dict(r.state_dict())
    >>> bool(torch.equal(r2.matrix(), r.matrix())), IdentityRotation(4).apply(x).equal(x)
    (True, True)
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from orthokit.linalg._checks import compute_dtype

__all__ = ["Rotation", "IdentityRotation", "DenseRotation", "check_orthogonal", "orthogonality_error"]

#: every concrete Rotation subclass by its ``name`` (filled by ``__init_subclass__``; used by from_state_dict)
_STATE_CLASSES: dict[str, type[Rotation]] = {}


def _check_n(n: object, what: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{what} must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"{what} must be >= 1, got {n}")
    return n


def _check_seed(seed: object) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    return seed


def check_orthogonal(
    q: Tensor, n: int | None = None, *, name: str = "rotation", atol: float | None = None
) -> Tensor:
    """Validate that ``q`` is a real ``(n, n)`` orthogonal matrix; return it as a float64 CPU copy.

    The check ``max |QᵀQ − I| ≤ atol`` runs in float64; the default tolerance is ``1e-6`` for a float64 input and
    ``1e-4`` otherwise (a float32 orthogonal matrix is only orthogonal to ~1e-6 per entry, accumulated over ``n``).
    A matrix that passes but is off by more than ``1e-12`` is replaced by its polar factor ``UVᵀ`` (the nearest
    orthogonal matrix in Frobenius norm, within the tolerance of the input), so that the stored float64 rotation
    is orthogonal to rounding and ``apply_T`` inverts ``apply`` exactly.

    Raises:
        TypeError: ``q`` is not a tensor.
        ValueError: wrong shape, not real floating, non-finite, or not orthogonal (the message gives the error).

    Example:
        >>> check_orthogonal(torch.eye(3)).dtype
        torch.float64
    """
    if not isinstance(q, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(q).__name__}")
    if q.is_complex() or not q.is_floating_point():
        raise ValueError(f"{name} must be a real floating tensor, got dtype {q.dtype}")
    if q.dim() != 2 or q.shape[0] != q.shape[1] or (n is not None and q.shape[0] != n):
        want = f"({n}, {n})" if n is not None else "square (n, n)"
        raise ValueError(f"{name} must have shape {want}, got {tuple(q.shape)}")
    q64 = q.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(q64).all()):
        raise ValueError(f"{name} contains non-finite values")
    tol = atol if atol is not None else (1e-6 if q.dtype == torch.float64 else 1e-4)
    err = orthogonality_error(q64)
    if err > tol:
        raise ValueError(f"{name} is not orthogonal: max |QᵀQ - I| = {err:.3g} > {tol:g}")
    if err > 1e-12:  # the nearest orthogonal matrix (polar factor), so that apply_T is the exact inverse
        u, _, vh = torch.linalg.svd(q64)
        return u @ vh
    return q64.clone()


def orthogonality_error(q: Tensor) -> float:
    """``max |QᵀQ − I|`` computed in float64.

    Example:
        >>> orthogonality_error(torch.eye(3))
        0.0
    """
    q64 = q.detach().to(device="cpu", dtype=torch.float64)
    return float((q64.T @ q64 - torch.eye(q64.shape[0], dtype=torch.float64)).abs().max())


class Rotation:
    """Base class: an orthogonal ``(n, n)`` map ``x ↦ x @ Q``, defined by stored data (signs, seed), not RNG state.

    Subclasses set a class attribute ``name`` and implement :meth:`_dense64` (``Q`` in float64 on CPU) and
    :meth:`_state` / :meth:`_from_state` (their defining data); they may override :meth:`_forward` with a fast
    path. Transposition is generic: :meth:`inverse` flips a ``transposed`` flag that is part of the state.

    Attributes:
        name: registry name of the family.
        n: size.
        seed: the seed the defining data was drawn from (``None`` if given explicitly).
    """

    name: ClassVar[str] = ""
    n: int
    seed: int | None
    transposed: bool

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            _STATE_CLASSES[cls.name] = cls

    def __init__(self, n: int, *, seed: int | None = None) -> None:
        self.n = _check_n(n)
        self.seed = _check_seed(seed)
        self.transposed = False
        self._cache: Tensor | None = None
        self._cast: dict[tuple[str, torch.dtype, str], Tensor] = {}  # casts of Q / signs for apply

    # ---- to implement -------------------------------------------------------------------------------------
    def _dense64(self) -> Tensor:
        """``Q`` (not transposed) as a float64 CPU tensor. Called once; the result is cached."""
        raise NotImplementedError

    def _forward(self, x: Tensor, transpose: bool) -> Tensor:
        """``x @ Q`` (or ``x @ Qᵀ``) over the last dim for a float32/float64 ``x``; default: dense matmul."""
        q = self._cast_like("Q", self._q64(), x)
        return x @ (q.T if transpose else q)

    def _cast_like(self, key: str, t: Tensor, x: Tensor) -> Tensor:
        """``t`` in ``x``'s dtype and device, cached per (key, dtype, device) — defining data never changes."""
        k = (key, x.dtype, str(x.device))
        out = self._cast.get(k)
        if out is None:
            out = self._cast[k] = t.to(device=x.device, dtype=x.dtype)
        return out

    def _state(self) -> dict[str, Any]:
        return {}

    @classmethod
    def _from_state(cls, n: int, seed: int | None, d: dict[str, Any]) -> Rotation:
        return cls(n, seed=seed)

    # ---- public API ---------------------------------------------------------------------------------------
    def _q64(self) -> Tensor:
        if self._cache is None:
            self._cache = self._dense64()
        return self._cache

    def matrix(self, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> Tensor:
        """``Q`` as a new ``(n, n)`` tensor (built in float64, then cast); ``Qᵀ`` for an inverted rotation."""
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a real floating torch.dtype, got {dtype!r}")
        q = self._q64()
        q = q.T if self.transposed else q
        return q.to(dtype=dtype, device=device, copy=True).contiguous()

    def orthogonality_error(self) -> float:
        """``max |QᵀQ − I|`` of the float64 matrix (≈1e-15 for every built-in family)."""
        return orthogonality_error(self._q64())

    def _check_x(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.is_complex() or not x.is_floating_point():
            raise ValueError(f"x must be a real floating tensor, got dtype {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.n:
            raise ValueError(
                f"x must have last dim {self.n} for this {self.name} rotation, got shape {tuple(x.shape)}"
            )

    def apply(self, x: Tensor) -> Tensor:
        """``x @ Q`` over the last dim, any leading dims; computed in ≥ float32, returned in ``x.dtype``."""
        self._check_x(x)
        cd = compute_dtype(x.dtype)
        return self._forward(x.to(cd), self.transposed).to(x.dtype)

    def apply_T(self, x: Tensor) -> Tensor:  # noqa: N802 - contract name
        """``x @ Qᵀ`` (= ``x @ Q⁻¹``) over the last dim; dtype handling as :meth:`apply`."""
        self._check_x(x)
        cd = compute_dtype(x.dtype)
        return self._forward(x.to(cd), not self.transposed).to(x.dtype)

    def inverse(self) -> Rotation:
        """The exact inverse ``Qᵀ`` (same defining data, ``transposed`` flipped; shares the matrix cache)."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.transposed = not self.transposed
        return other

    def state_dict(self) -> dict[str, Any]:
        """Defining data: ``name``, ``n``, ``transposed`` (0/1), ``seed`` (if any) and family fields (tensors, ints, strs)."""
        d: dict[str, Any] = {"name": self.name, "n": self.n, "transposed": int(self.transposed)}
        if self.seed is not None:
            d["seed"] = self.seed
        d.update(self._state())
        return d

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> Rotation:
        """Rebuild a rotation from :meth:`state_dict` output, validating every field.

        Called on :class:`Rotation` it dispatches on ``d["name"]``; called on a subclass the name must match.
        """
        if not isinstance(d, dict):
            raise TypeError(f"rotation state must be a dict, got {type(d).__name__}")
        name = d.get("name")
        if not isinstance(name, str) or name not in _STATE_CLASSES:
            raise ValueError(
                f"rotation state has unknown name {name!r}; known: {', '.join(sorted(_STATE_CLASSES))}"
            )
        target = _STATE_CLASSES[name]
        if cls is not Rotation and target is not cls:
            raise ValueError(f"rotation state is for {name!r}, not {cls.name!r}")
        n = _check_n(d.get("n"), "rotation state 'n'")
        seed = _check_seed(d.get("seed"))
        t = d.get("transposed", 0)
        if t not in (0, 1) or isinstance(t, float):
            raise ValueError(f"rotation state 'transposed' must be 0 or 1, got {t!r}")
        rot = target._from_state(n, seed, d)
        rot.transposed = bool(t)
        return rot

    def __repr__(self) -> str:
        t = ", transposed" if self.transposed else ""
        return f"{type(self).__name__}(n={self.n}, seed={self.seed}{t})"


class IdentityRotation(Rotation):
    """``Q = I``: the no-rotation baseline (``apply`` returns a copy of ``x``)."""

    name = "identity"

    def __init__(self, n: int, *, seed: int | None = 0) -> None:
        super().__init__(n, seed=seed)

    def _dense64(self) -> Tensor:
        return torch.eye(self.n, dtype=torch.float64)

    def _forward(self, x: Tensor, transpose: bool) -> Tensor:
        return x.clone()


class DenseRotation(Rotation):
    """An explicit orthogonal matrix (validated by :func:`check_orthogonal`), stored in float64.

    Args:
        q: ``(n, n)`` orthogonal tensor.
        atol: orthogonality tolerance (default ``1e-6`` for float64 input, ``1e-4`` otherwise).
    """

    name = "dense"

    def __init__(self, q: Tensor, *, atol: float | None = None, seed: int | None = None) -> None:
        q64 = check_orthogonal(q, atol=atol)
        super().__init__(q64.shape[0], seed=seed)
        self._q = q64

    def _dense64(self) -> Tensor:
        return self._q

    def _state(self) -> dict[str, Any]:
        return {"matrix": self._q.clone()}

    @classmethod
    def _from_state(cls, n: int, seed: int | None, d: dict[str, Any]) -> Rotation:
        q = d.get("matrix")
        if not isinstance(q, Tensor):
            raise ValueError("dense rotation state needs a 'matrix' tensor")
        return cls(check_orthogonal(q, n, name="dense rotation state 'matrix'"), seed=seed)
