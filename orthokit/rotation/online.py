r"""Online input rotations of ``nn.Linear`` layers: ``y = (xQ)(WQ)ᵀ + b = xWᵀ + b``, exact for any orthogonal ``Q``.

Where a rotation cannot be folded into the previous layer (post-LN encoders such as BERT/MiniLM, where the
LayerNorm gain, bias and mean do not commute with ``Q``; or the input of Llama's ``down_proj``, which follows
an elementwise ``SiLU(gate)·up``), the activation is rotated *at run time* and the linear's weight is replaced
once, offline, by ``W·Q`` (computed in float64, cast back). Since ``Q Qᵀ = I``,

.. math::  (xQ)(WQ)^\top = x\,Q Q^\top W^\top = x W^\top,

so the layer computes the same function, while both the activation ``xQ`` and the weight ``WQ`` that a quantizer
sees have their outliers spread over all coordinates (QuaRot: Ashkboos et al. 2024, arXiv 2404.00456, "online
Hadamard" R4; SpinQuant: Liu et al. 2024, arXiv 2405.16406). The cost is one extra ``x ↦ xQ`` per token: an FWHT
(``O(n log n)``) for Hadamard rotations, a dense matmul otherwise (see ``Rotation.apply``).

Row-vector convention throughout: rotating activations is ``x ↦ x @ Q`` and a linear *reading* rotated inputs gets
``W ← W Q`` (``W`` is ``(out, in)``). Quantizers (``orthokit.rotation.quantize_model``) quantize the *inner*
``nn.Linear``, so their activation hooks see the rotated input ``xQ``.

The rotation's defining data (signs, seed; never generator state) is saved in the module's ``state_dict`` as
extra state, so ``model.state_dict()`` → a freshly wrapped model (any rotation of the same size) →
``load_state_dict`` reproduces the outputs.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from orthokit.rotation.online import OnlineRotatedLinear, unwrap_all, wrap_linear
    >>> from orthokit.rotation.registry import make_rotation
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> net = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 4))
    >>> x = torch.randn(5, 8)
    >>> y = net(x)
    >>> w = wrap_linear(net, "2", make_rotation("hadamard", 12, seed=3))
    >>> isinstance(net[2], OnlineRotatedLinear), torch.allclose(net(x), y, atol=1e-6)
    (True, True)
    >>> unwrap_all(net)
    ['2']
    >>> type(net[2]).__name__, torch.allclose(net(x), y, atol=1e-6)
    ('Linear', True)
"""

from __future__ import annotations

import copy
import importlib
import io
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from orthokit.rotation.base import Rotation

__all__ = ["OnlineRotatedLinear", "wrap_linear", "unwrap_all", "online_rotated_linears"]

_STATE_VERSION = 1


def _check_rotation(rotation: object, what: str = "rotation") -> None:
    """Raise TypeError unless ``rotation`` behaves like :class:`orthokit.rotation.base.Rotation`."""
    missing = [a for a in ("n", "matrix", "apply", "state_dict") if not hasattr(rotation, a)]
    if missing or isinstance(rotation, (torch.Tensor, str)):
        raise TypeError(
            f"{what}: expected an orthokit.rotation Rotation (make_rotation(spec, n, seed=...)), "
            f"got {type(rotation).__name__}"
        )


def _rotation_label(rotation: Rotation) -> str:
    name = getattr(rotation, "name", type(rotation).__name__)
    seed = getattr(rotation, "seed", None)
    return f"{name}(n={rotation.n}" + (f", seed={seed})" if seed is not None else ")")


def _fused_weight(weight: torch.Tensor, rotation: Rotation, *, transpose: bool) -> torch.Tensor:
    """``W·Q`` (or ``W·Qᵀ`` when ``transpose``) computed in float64 on ``weight``'s device, cast back."""
    q = rotation.matrix(dtype=torch.float64, device=weight.device)
    w64 = weight.detach().to(torch.float64)
    out = w64 @ (q.T if transpose else q)
    return out.to(weight.dtype)


def _class_path(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def _resolve_rotation_class(path: str, current: object) -> type:
    """The Rotation class named ``module:qualname``; only ``orthokit`` modules are imported."""
    if path == _class_path(current):
        return type(current)
    module, _, qualname = path.partition(":")
    if not (module == "orthokit" or module.startswith("orthokit.")) or not qualname:
        raise ValueError(
            f"state_dict: rotation class {path!r} is not an orthokit rotation; refusing to import it"
        )
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"state_dict: rotation class {path!r} cannot be found ({exc})") from None
    from orthokit.rotation.base import Rotation

    # checked before anything of the class is called: only Rotation subclasses' from_state_dict may run
    if not isinstance(obj, type) or not issubclass(obj, Rotation):
        raise ValueError(f"state_dict: {path!r} is not a Rotation subclass; refusing to use it")
    return obj


def _check_pair(linear: object, rotation: object) -> None:
    """Validate a (linear, rotation) pair for :class:`OnlineRotatedLinear`."""
    if isinstance(linear, OnlineRotatedLinear):
        raise TypeError("linear: already an OnlineRotatedLinear (double wrapping is not supported)")
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
    _check_rotation(rotation)
    if int(rotation.n) != linear.in_features:  # type: ignore[attr-defined]
        raise ValueError(
            f"rotation: size {rotation.n} does not match linear.in_features {linear.in_features}"  # type: ignore[attr-defined]
        )


class OnlineRotatedLinear(nn.Module):
    r"""An ``nn.Linear`` whose input is rotated online: ``forward(x) = linear(rotation.apply(x))``.

    ``self.linear`` holds ``W·Q`` (and the original bias), so the module computes exactly the original
    ``x Wᵀ + b`` up to floating-point rounding. Build it with :meth:`wrap` (fuses ``Q`` into a *copy* of the
    linear in float64; the argument is not modified); :meth:`unwrap` gives back an ``nn.Linear`` with
    ``W = (WQ)Qᵀ`` (float64, cast back). The constructor itself takes a linear that *already* reads rotated
    inputs (e.g. when rebuilding from parts).

    Args:
        linear: the inner ``nn.Linear`` (weight ``W·Q``).
        rotation: an :class:`orthokit.rotation.base.Rotation` with ``n == linear.in_features``.

    Raises:
        TypeError: ``linear`` is not an ``nn.Linear`` (an ``OnlineRotatedLinear`` is refused: no double
            wrapping), or ``rotation`` is not a Rotation.
        ValueError: ``rotation.n != linear.in_features``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from orthokit.rotation.online import OnlineRotatedLinear
        >>> from orthokit.rotation.registry import make_rotation
        >>> lin = nn.Linear(16, 3)
        >>> mod = OnlineRotatedLinear.wrap(lin, make_rotation("haar", 16, seed=1))
        >>> x = torch.randn(4, 16)
        >>> torch.allclose(mod(x), lin(x), atol=1e-6)
        True
        >>> torch.allclose(mod.unwrap().weight, lin.weight, atol=1e-6)
        True
    """

    def __init__(self, linear: nn.Linear, rotation: Rotation) -> None:
        super().__init__()
        _check_pair(linear, rotation)
        self.linear = linear
        self.rotation = rotation

    # ------------------------------------------------------------------ construction
    @classmethod
    def wrap(cls, linear: nn.Linear, rotation: Rotation) -> OnlineRotatedLinear:
        """Wrap a copy of ``linear`` whose weight is ``W·Q`` (float64, cast back); ``linear`` is untouched.

        Raises:
            TypeError: ``linear`` is not an ``nn.Linear`` (already wrapped, or another module), or
                ``rotation`` is not a Rotation.
            ValueError: ``rotation.n != linear.in_features``.
        """
        _check_pair(linear, rotation)
        new_w = _fused_weight(linear.weight, rotation, transpose=False)
        inner = copy.deepcopy(linear)
        with torch.no_grad():
            inner.weight.copy_(new_w)
        return cls(inner, rotation)

    def unwrap(self) -> nn.Linear:
        """A new ``nn.Linear`` computing the same map on *unrotated* inputs: weight ``(WQ)·Qᵀ`` in float64.

        The wrapper itself is left unchanged.
        """
        new_w = _fused_weight(self.linear.weight, self.rotation, transpose=True)
        out = copy.deepcopy(self.linear)
        with torch.no_grad():
            out.weight.copy_(new_w)
        return out

    # ------------------------------------------------------------------ nn.Module API
    @property
    def in_features(self) -> int:
        """``linear.in_features`` (the rotation size)."""
        return self.linear.in_features

    @property
    def out_features(self) -> int:
        """``linear.out_features``."""
        return self.linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``linear(x @ Q)`` (the rotation's fast path, e.g. an FWHT for Hadamard rotations)."""
        return self.linear(self.rotation.apply(x))

    def extra_repr(self) -> str:
        return f"rotation={_rotation_label(self.rotation)}"

    def rotation_state(self) -> dict[str, Any]:
        """The rotation's defining data (``Rotation.state_dict()``), its class and size, as a plain dict."""
        return {
            "version": _STATE_VERSION,
            "class": _class_path(self.rotation),
            "n": int(self.rotation.n),
            "rotation": self.rotation.state_dict(),
        }

    def get_extra_state(self) -> torch.Tensor:
        """:meth:`rotation_state` serialized to a 1-D ``uint8`` tensor.

        A tensor (not a dict) so that the model's ``state_dict`` holds only tensors and can be written by
        safetensors / ``save_pretrained``; it is decoded with ``torch.load(weights_only=True)``.
        """
        buf = io.BytesIO()
        torch.save(self.rotation_state(), buf)
        return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)

    def set_extra_state(self, state: Any) -> None:
        """Rebuild the rotation from :meth:`get_extra_state` (or :meth:`rotation_state`) output.

        Everything is validated before the rotation is replaced.
        """
        if isinstance(state, torch.Tensor):
            if state.dtype != torch.uint8 or state.dim() != 1:
                raise ValueError("state_dict: OnlineRotatedLinear extra state must be a 1-D uint8 tensor")
            try:
                state = torch.load(io.BytesIO(state.cpu().numpy().tobytes()), weights_only=True)
            except Exception as exc:  # any unpickling failure is a corrupt state
                raise ValueError(
                    f"state_dict: cannot decode OnlineRotatedLinear extra state ({exc})"
                ) from None
        if not isinstance(state, dict) or not {"class", "n", "rotation"} <= set(state):
            raise ValueError(
                "state_dict: OnlineRotatedLinear extra state must be a dict with 'class', 'n', 'rotation'"
            )
        n = state["n"]
        if isinstance(n, bool) or not isinstance(n, int):
            raise ValueError(f"state_dict: saved rotation size 'n' must be an int, got {n!r}")
        if n != self.linear.in_features:
            raise ValueError(
                f"state_dict: saved rotation size {state['n']} does not match in_features "
                f"{self.linear.in_features}"
            )
        cls = _resolve_rotation_class(str(state["class"]), self.rotation)
        rotation = cls.from_state_dict(state["rotation"])
        _check_rotation(rotation, "state_dict rotation")
        if int(rotation.n) != self.linear.in_features:
            raise ValueError(
                f"state_dict: restored rotation has size {rotation.n}, expected {self.linear.in_features}"
            )
        self.rotation = rotation


# ---------------------------------------------------------------------- module-tree helpers
def _get_child(parent: nn.Module, name: str) -> tuple[nn.Module, str, nn.Module]:
    """``(owner, attribute, child)`` for a (dotted) ``name`` under ``parent``."""
    if not isinstance(parent, nn.Module):
        raise TypeError(f"parent: expected an nn.Module, got {type(parent).__name__}")
    if not isinstance(name, str) or not name:
        raise TypeError(f"name: expected a non-empty module name, got {name!r}")
    *path, attr = name.split(".")
    owner = parent
    for part in path:
        nxt = owner._modules.get(part)
        if nxt is None:
            raise ValueError(f"name: {name!r} has no submodule {part!r} under {type(owner).__name__}")
        owner = nxt
    child = owner._modules.get(attr)
    if child is None:
        raise ValueError(f"name: {name!r} is not a child module of {type(owner).__name__}")
    return owner, attr, child


def wrap_linear(parent: nn.Module, name: str, rotation: Rotation) -> OnlineRotatedLinear:
    """Replace the ``nn.Linear`` child ``parent.<name>`` (dotted paths allowed) by its online-rotated wrap.

    Returns the new :class:`OnlineRotatedLinear`. On any error ``parent`` is left unchanged.

    Raises:
        TypeError: ``parent`` is not a module, or the child is not an ``nn.Linear``.
        ValueError: no such child, the child is already wrapped, or the rotation size does not match.

    Example:
        >>> from torch import nn
        >>> from orthokit.rotation.online import wrap_linear
        >>> from orthokit.rotation.registry import make_rotation
        >>> block = nn.Sequential(nn.Linear(4, 8))
        >>> wrap_linear(block, "0", make_rotation("hadamard", 4)).in_features
        4
    """
    owner, attr, child = _get_child(parent, name)
    if isinstance(child, OnlineRotatedLinear):
        raise ValueError(f"name: {name!r} is already an OnlineRotatedLinear (double wrapping)")
    if not isinstance(child, nn.Linear):
        raise TypeError(f"name: {name!r} is a {type(child).__name__}, not an nn.Linear")
    wrapped = OnlineRotatedLinear.wrap(child, rotation)
    setattr(owner, attr, wrapped)
    return wrapped


def online_rotated_linears(model: nn.Module) -> dict[str, OnlineRotatedLinear]:
    """Every :class:`OnlineRotatedLinear` under ``model`` by qualified name (outermost ones only)."""
    found: dict[str, OnlineRotatedLinear] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, OnlineRotatedLinear) and not any(
            name.startswith(prefix + ".") for prefix in found
        ):
            found[name] = mod
    return found


def unwrap_all(model: nn.Module) -> list[str]:
    """Replace every :class:`OnlineRotatedLinear` under ``model`` by :meth:`~OnlineRotatedLinear.unwrap`.

    Returns the qualified names replaced. All new linears are computed before any is swapped in.

    Raises:
        TypeError: ``model`` is not a module.
        ValueError: ``model`` itself is an ``OnlineRotatedLinear`` (call ``model.unwrap()`` instead).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if isinstance(model, OnlineRotatedLinear):
        raise ValueError("model: is itself an OnlineRotatedLinear; call model.unwrap() instead")
    targets = online_rotated_linears(model)
    replacements = {name: mod.unwrap() for name, mod in targets.items()}
    for name, lin in replacements.items():
        owner, attr, _ = _get_child(model, name)
        setattr(owner, attr, lin)
    return list(replacements)
