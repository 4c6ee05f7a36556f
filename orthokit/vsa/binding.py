r"""Binding matrices for MBAT vector-symbolic architectures: the shared base class.

MBAT (*Matrix Binding of Additive Terms*, Gallant & Okaywe, "Representing Objects, Relations, and Sequences",
Neural Computation 25(8), 2013) binds a vector ``x`` to a *role* by multiplying it with a random ``d × d``
matrix ``M_role``: ``bind(role, x) = M_role · x``; unbinding multiplies by the (approximate) inverse. Gallant
(arXiv 2202.04771, 2022) shows that repeated multiplication by Gaussian random matrices makes vector norms drift
and that **orthogonal** ``M`` fix this exactly: ``‖M x‖ = ‖x‖`` and ``unbind = Mᵀ = M⁻¹``.

Every binder here is *stateless apart from* ``(d, seed, options)``: the matrix of a role is a deterministic
function of ``(seed, role)`` (a hash of both seeds a fresh ``torch.Generator``), so :meth:`Binder.state_dict`
is a small JSON-able dict and :meth:`Binder.from_state_dict` rebuilds a binder that binds identically. Roles
are strings or non-negative integers. ``bind``/``unbind`` are batched over leading dims (``x: [..., d]``),
computed in the input's dtype (float16/bfloat16 are computed in float32 and returned in the input dtype) and on
the input's device (matrices are generated on the CPU from the seed, then copied once per device).

Example:
    >>> import torch
    >>> from orthokit.vsa.binding import Binder
    >>> from orthokit.vsa.haar import HaarBinder
    >>> b = HaarBinder(8, seed=0)
    >>> x = torch.randn(3, 8, dtype=torch.float64)
    >>> bool(torch.allclose(b.unbind("colour", b.bind("colour", x)), x))
    True
    >>> b2 = Binder.from_state_dict(b.state_dict())
    >>> bool(torch.equal(b2.bind("colour", x), b.bind("colour", x)))
    True
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, ClassVar

import torch
from torch import Tensor

__all__ = ["Binder", "Role", "role_seed", "check_role", "make_binder", "ensure_registered"]

#: a role name: a string (e.g. a JSON key) or a non-negative integer
Role = str | int


def check_role(role: object) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``role`` is a string or a non-negative int (not a bool)."""
    if isinstance(role, bool) or not isinstance(role, (str, int)):
        raise TypeError(f"role must be a str or a non-negative int, got {type(role).__name__}")
    if isinstance(role, int) and role < 0:
        raise ValueError(f"role must be a str or a non-negative int, got {role}")


def role_seed(seed: int, *parts: object) -> int:
    """A 63-bit generator seed derived from ``seed`` and ``parts`` by BLAKE2b (stable across runs/platforms).

    Example:
        >>> role_seed(0, "haar", "key:name") == role_seed(0, "haar", "key:name")
        True
        >>> role_seed(0, "haar", "a") != role_seed(1, "haar", "a")
        True
    """
    text = "\x1f".join([str(int(seed))] + [f"{type(p).__name__}:{p}" for p in parts])
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") >> 1


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return seed


class Binder:
    """Base class of the MBAT binding-matrix families (registered in :data:`orthokit.vsa.registry.BINDERS`).

    Subclasses implement :meth:`_apply` (multiply the rows of ``x`` by ``M_role`` or ``M_roleᵀ``) and
    :meth:`_options` (their constructor options, for :meth:`state_dict`).

    Args:
        d: vector dimension (positive int).
        seed: integer seed; with the role it determines every matrix.
    """

    #: registry name
    name: ClassVar[str] = "base"
    #: whether bind preserves norms and unbind is the exact inverse ``Mᵀ``
    orthogonal: ClassVar[bool] = False

    def __init__(self, d: int, *, seed: int = 0) -> None:
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"d must be a positive int, got {d!r}")
        self.d = d
        self.seed = _check_seed(seed)

    # -- subclass interface ------------------------------------------------------------------------------
    def _apply(self, role: Role, x: Tensor, transpose: bool) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _options(self) -> dict[str, Any]:
        return {}

    # -- public API -------------------------------------------------------------------------------------
    def _check_x(self, x: Tensor, what: str) -> tuple[Tensor, torch.dtype]:
        if not isinstance(x, Tensor):
            raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"{what} must be a real floating tensor, got dtype {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.d:
            raise ValueError(f"{what} must have last dimension d={self.d}, got shape {tuple(x.shape)}")
        if x.numel() and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{what} contains NaN or inf")
        cd = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        return x.to(cd), x.dtype

    @staticmethod
    def _check_power(power: object) -> int:
        if isinstance(power, bool) or not isinstance(power, int) or power < 0:
            raise ValueError(f"power must be a non-negative int, got {power!r}")
        return power

    def bind(self, role: Role, x: Tensor, *, power: int = 1) -> Tensor:
        """``M_role^power · x`` for every row of ``x`` (shape ``[..., d]``, same shape and dtype out)."""
        check_role(role)
        p = self._check_power(power)
        y, dt = self._check_x(x, "x")
        for _ in range(p):
            y = self._apply(role, y, False)
        return y.to(dt)

    def unbind(self, role: Role, y: Tensor, *, power: int = 1) -> Tensor:
        """The binder's inverse rule applied ``power`` times (``Mᵀ`` for orthogonal binders)."""
        check_role(role)
        p = self._check_power(power)
        x, dt = self._check_x(y, "y")
        for _ in range(p):
            x = self._apply(role, x, True)
        return x.to(dt)

    def matrix(self, role: Role, *, dtype: torch.dtype = torch.float64) -> Tensor:
        """The dense ``d × d`` matrix ``M_role`` (``bind(role, x) == x @ M.T`` row-wise)."""
        check_role(role)
        eye = torch.eye(self.d, dtype=dtype)
        return self._apply(role, eye, False).T.contiguous()

    def state_dict(self) -> dict[str, Any]:
        """JSON-able description ``{"name", "d", "seed", **options}`` from which the binder is rebuilt exactly."""
        return {"name": self.name, "d": self.d, "seed": self.seed, **self._options()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Binder:
        """Rebuild a binder from :meth:`state_dict` (looks the class up in ``BINDERS`` by ``state["name"]``)."""
        from orthokit.vsa.registry import BINDERS

        ensure_registered()
        if not isinstance(state, dict) or not {"name", "d", "seed"} <= set(state):
            raise ValueError(
                "state must be a dict with keys 'name', 'd' and 'seed' (from Binder.state_dict())"
            )
        kw = {k: v for k, v in state.items() if k not in ("name", "d", "seed")}
        klass = BINDERS.get(state["name"])
        return klass(state["d"], seed=state["seed"], **kw)

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self._options().items())
        return f"{type(self).__name__}(d={self.d}, seed={self.seed}{opts})"


def ensure_registered() -> None:
    """Import the built-in binder modules so that ``BINDERS`` lists them (``haar``, ``hadamard``, ``gaussian``)."""
    import orthokit.vsa.gaussian  # noqa: F401
    import orthokit.vsa.haar  # noqa: F401
    import orthokit.vsa.hadamard  # noqa: F401


def make_binder(binder: Binder | str, d: int, *, seed: int = 0, **options: Any) -> Binder:
    """A binder instance: ``binder`` itself (its ``d`` must match) or ``BINDERS[binder](d, seed=seed, **options)``.

    Example:
        >>> make_binder("hadamard", 16, seed=1, k=2)
        HadamardBinder(d=16, seed=1, k=2)
    """
    from orthokit.vsa.registry import BINDERS

    if isinstance(binder, Binder):
        if binder.d != d:
            raise ValueError(f"binder has d={binder.d} but d={d} was requested")
        if options:
            raise ValueError("binder options can only be given with a binder name, not an instance")
        return binder
    if not isinstance(binder, str):
        raise TypeError(f"binder must be a Binder or a registered name, got {type(binder).__name__}")
    ensure_registered()
    return BINDERS.get(binder)(d, seed=seed, **options)


def gaussian_std(d: int) -> float:
    """Standard deviation ``1/√d`` of the i.i.d. entries of a Gaussian MBAT matrix (``E[MᵀM] = I``)."""
    return 1.0 / math.sqrt(d)
