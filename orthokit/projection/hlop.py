"""HLOP — Hebbian Learning based Orthogonal Projection (Xiao et al., ICLR 2024), streaming subspace memory.

Instead of storing activations and taking an SVD (GPM), each layer keeps *lateral* weights
``H ∈ R^{k×n}`` learned online with Oja's subspace rule (Hebbian / anti-Hebbian):

.. math::

    y = H x,\\qquad ΔH = \\frac{η}{B} \\sum_b y_b (x_b - H^\\top y_b)^\\top ,

whose stable fixed points are orthonormal bases (``HHᵀ = I``) of the top-``k`` principal subspace of the
input second moment ``E[xxᵀ]`` (Oja 1989). For continual learning, ``out_numbers`` new lateral neurons
are added per task (orthogonally initialised against the old ones), the old rows are frozen, and all rows
take part in the recurrent reconstruction ``Hᵀ y`` so the new rows learn the residual principal subspace.
Gradients of the layer weight are then projected ``G ← G − G QQᵀ`` where ``Q`` is an orthonormal basis of
``span(Hᵀ)`` (``HᵀH`` itself is used by HLOP; orthonormalising first makes the projection exact when the
rule has not fully converged). Nothing but ``H`` is stored: no activations, no per-sample gradients.

Defaults from the HLOP code (``modules/hlop_module.py``): lr 0.01, momentum 0.9, 5 Hebbian iterations per
batch, coefficient clamp ±10 (used here as a gradient-explosion guard on ``ΔH``).

Reference: M. Xiao, Q. Meng, Z. Zhang, D. He, Z. Lin, "Hebbian Learning based Orthogonal Projection for
Continual Learning of Spiking Neural Networks", ICLR 2024 (arXiv 2402.11984); E. Oja, "Neural networks,
principal components, and subspaces", Int. J. Neural Systems 1 (1989).

Example:
    >>> hl = HebbianSubspace(n=20, k_new=3, lr=0.05)
    >>> for x in torch.randn(200, 64, 20).unbind(0):
    ...     hl.update(x)
    >>> Q = hl.basis()                                   # [20, 3] orthonormal
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from orthokit.projection.memory import SubspaceMemory
from orthokit.projection.registry import ProjectionMethod, register_projection

__all__ = ["HebbianSubspace", "HLOPMemory", "HLOP"]


class HebbianSubspace:
    """Oja-subspace lateral weights of one layer, grown per task.

    Args:
        n: input dimension (layer fan-in).
        k_new: lateral neurons added by :meth:`add_neurons` calls without an explicit count (and at init).
        lr: Hebbian learning rate ``η``.
        momentum: heavy-ball momentum on ``ΔH`` (HLOP uses 0.9).
        iters: Hebbian iterations per :meth:`update` call (HLOP uses 5).
        clamp: elementwise clamp of ``ΔH`` (HLOP's ±10 guard).
        generator: RNG for the orthogonal initialisation of new neurons.
        dtype: storage dtype of ``H``.
        normalize: divide each batch by its RMS norm before the update (a scalar rescaling of the input
            covariance: same principal subspace, but the step size becomes scale-free — Oja's rule is only
            stable for ``η λ_max < 1``). HLOP's raw rule is ``normalize=False``.
    """

    def __init__(
        self,
        n: int,
        k_new: int,
        lr: float = 0.01,
        momentum: float = 0.9,
        iters: int = 5,
        clamp: float = 10.0,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        normalize: bool = True,
    ) -> None:
        if n <= 0 or k_new < 0 or k_new > n:
            raise ValueError(f"need n > 0 and 0 <= k_new <= n, got n={n}, k_new={k_new}")
        if lr <= 0 or not 0 <= momentum < 1 or iters < 1:
            raise ValueError(f"invalid lr={lr}, momentum={momentum}, iters={iters}")
        self.n, self.k_new, self.lr, self.momentum, self.iters, self.clamp = (
            n,
            k_new,
            lr,
            momentum,
            iters,
            clamp,
        )
        self.generator = generator
        self.normalize = normalize
        self.H = torch.zeros(0, n, dtype=dtype)
        self.n_frozen = 0
        self._buf: torch.Tensor | None = None
        self._basis: torch.Tensor | None = None
        if k_new:
            self.add_neurons(k_new)

    @property
    def k(self) -> int:
        """Total number of lateral neurons (rows of ``H``)."""
        return self.H.shape[0]

    def add_neurons(self, count: int | None = None) -> None:
        """Freeze the current rows and append ``count`` new rows, orthonormal and orthogonal to the old ones."""
        count = self.k_new if count is None else count
        count = min(count, self.n - self.k)
        self.n_frozen = self.k
        if count <= 0:
            return
        R = torch.randn(self.n, count, generator=self.generator, dtype=torch.float64)
        if self.k:
            Q_old = torch.linalg.qr(self.H.double().T).Q
            R = R - Q_old @ (Q_old.T @ R)
        Q = torch.linalg.qr(R).Q
        self.H = torch.cat([self.H, Q.T.to(self.H.dtype)], 0)
        self._buf = None
        self._basis = None

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Hebbian update of the trainable (non-frozen) rows from a batch ``x`` ``[B, n]``."""
        if x.dim() != 2 or x.shape[1] != self.n:
            raise ValueError(f"x must be [B, {self.n}], got shape {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("x contains non-finite values")
        if self.k == self.n_frozen:
            return
        x = x.to(self.H.dtype)
        if self.normalize:  # x / rms-norm: same principal subspace, eigenvalues of E[xxᵀ] sum to 1
            x = x / x.pow(2).sum(1).mean().sqrt().clamp_min(1e-12)
        B = x.shape[0]
        for _ in range(self.iters):
            y = x @ self.H.T  # [B, k]
            resid = x - y @ self.H  # x − Hᵀy
            dH = (y[:, self.n_frozen :].T @ resid) / B  # only new rows learn
            dH = dH.clamp(-self.clamp, self.clamp)
            if self.momentum:
                self._buf = dH if self._buf is None else self.momentum * self._buf + dH
                dH = self._buf
            self.H[self.n_frozen :] += self.lr * dH
        self._basis = None

    def basis(self) -> torch.Tensor:
        """Orthonormal basis ``[n, k]`` of ``span(Hᵀ)`` (QR in float64, cached until ``H`` changes)."""
        if self.k == 0:
            return self.H.new_zeros(self.n, 0)
        if self._basis is None:
            self._basis = torch.linalg.qr(self.H.double().T).Q.to(self.H.dtype)
        return self._basis

    def project(self, G: torch.Tensor) -> torch.Tensor:
        """Right projection ``G − G QQᵀ`` of a weight gradient ``[out, n]``."""
        if G.shape[-1] != self.n:
            raise ValueError(f"gradient last dim must be {self.n}, got {tuple(G.shape)}")
        Q = self.basis().to(G.dtype)
        return G - (G @ Q) @ Q.T

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        """Lateral weights and the frozen-row count."""
        return {"H": self.H.clone(), "n_frozen": self.n_frozen}

    def load_state_dict(self, state: dict[str, torch.Tensor | int]) -> None:
        """Inverse of :meth:`state_dict`."""
        H = state["H"]
        assert isinstance(H, torch.Tensor)
        if H.dim() != 2 or H.shape[1] != self.n:
            raise ValueError(f"H must be [k, {self.n}], got {tuple(H.shape)}")
        self.H = H.clone()
        self.n_frozen = int(state["n_frozen"])
        self._buf = None
        self._basis = None


class HLOPMemory:
    """HLOP for the ``nn.Linear`` layers of a model: streaming input subspaces and projected gradients.

    Forward hooks feed each layer's input to its :class:`HebbianSubspace` while :attr:`observing` is on, so the
    subspace is learned from the stream of a task's data without storing it. Call :meth:`begin_task` before
    observing a task (adds ``k_new[l]`` neurons per layer after the first task), :meth:`project_grads` after
    ``backward()`` (for tasks > the first one).

    Args:
        model: the network.
        layers: names of the ``nn.Linear`` modules to protect.
        k_new: new lateral neurons per task, one int or one per layer.
        **kw: forwarded to :class:`HebbianSubspace` (lr, momentum, iters, ...).

    Example:
        >>> mem = HLOPMemory(model, ["layers.0", "layers.1"], k_new=[40, 10], lr=0.01)
        >>> mem.begin_task(); mem.observe(model, loader_batches)   # after training task 1
        >>> loss.backward(); mem.project_grads(); opt.step()       # during task 2
    """

    def __init__(self, model: nn.Module, layers: Iterable[str], k_new: int | list[int], **kw: float) -> None:
        self.layers = list(layers)
        ks = [k_new] * len(self.layers) if isinstance(k_new, int) else list(k_new)
        if len(ks) != len(self.layers):
            raise ValueError("k_new must be an int or have one entry per layer")
        self.modules: dict[str, nn.Linear] = {}
        self.subspaces: dict[str, HebbianSubspace] = {}
        for name, k in zip(self.layers, ks):
            mod = model.get_submodule(name)
            if not isinstance(mod, nn.Linear):
                raise TypeError(f"HLOPMemory supports nn.Linear layers; {name!r} is {type(mod).__name__}")
            self.modules[name] = mod
            sub = HebbianSubspace(mod.in_features, 0, **kw)  # type: ignore[arg-type]
            sub.k_new = min(k, mod.in_features)
            self.subspaces[name] = sub
        self.tasks = 0

    def begin_task(self) -> None:
        """Freeze the learned neurons and add a fresh set of ``k_new`` per layer."""
        for sub in self.subspaces.values():
            sub.add_neurons()
        self.tasks += 1

    @torch.no_grad()
    def observe(self, model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
        """Stream ``batches`` (model inputs) through ``model`` and update every layer's lateral weights."""
        handles = []
        for name, mod in self.modules.items():
            sub = self.subspaces[name]
            handles.append(
                mod.register_forward_hook(lambda m, inp, out, s=sub: s.update(inp[0].reshape(-1, s.n)))
            )
        try:
            for xb in batches:
                model(xb)
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def project_grads(self) -> None:
        """Project each protected layer's weight gradient onto the complement of its learned subspace."""
        for name, mod in self.modules.items():
            sub = self.subspaces[name]
            if mod.weight.grad is not None and sub.k > 0:
                mod.weight.grad.copy_(sub.project(mod.weight.grad))

    def dims(self) -> dict[str, int]:
        """Lateral neurons per layer."""
        return {n: s.k for n, s in self.subspaces.items()}

    def memory_floats(self) -> int:
        """Floats stored (the lateral weights)."""
        return sum(s.H.numel() for s in self.subspaces.values())


@register_projection(
    "hlop",
    aliases=("hebbian",),
    subspace="activation",
    optimizer_agnostic=True,
    guarantee="exact",
    paper="Xiao et al., Hebbian Learning based Orthogonal Projection for Continual Learning of Spiking "
    "Neural Networks, ICLR 2024 (arXiv 2402.11984)",
)
class HLOP(ProjectionMethod):
    """HLOP as a registered projection method: streaming Oja subspaces feed a :class:`SubspaceMemory`.

    ``after_task(batches)`` adds ``k_new`` lateral neurons per protected layer, streams the batches through the
    model ``passes`` times updating them with the Hebbian rule from the layer-input rows (bias-augmented like
    GPM), and stores the orthonormalised span as the layer's activation basis; ``wrap(optimizer)`` projects
    the applied update off it (exact orthogonality to the learned subspace). Only the lateral weights are kept.

    Args:
        model: the network.
        layers: protected layers (as for :class:`SubspaceMemory`).
        k_new: new lateral neurons per task: an int, a per-layer list or ``{name: k}``.
        lr, momentum, iters: Hebbian rule settings (:class:`HebbianSubspace`).
        passes: passes over the task batches per ``after_task``.
        seed: seed of the orthogonal initialisation of new neurons.
        bias: bias policy of the memory (``"augment"`` default).

    Example:
        >>> hlop = HLOP(model, k_new=8)
        >>> hlop.after_task(task1_batches)                       # no activations are stored
        >>> opt = hlop.wrap(torch.optim.SGD(model.parameters(), lr=0.01))
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Any = None,
        *,
        k_new: int | list[int] | dict[str, int] = 8,
        lr: float = 0.1,
        momentum: float = 0.9,
        iters: int = 5,
        passes: int = 3,
        seed: int = 0,
        bias: str = "augment",
    ) -> None:
        if passes < 1:
            raise ValueError(f"passes must be >= 1, got {passes}")
        self.model = model
        self.memory = SubspaceMemory(model, layers, bias=bias)
        names = self.memory.layer_names
        if isinstance(k_new, int):
            ks = dict.fromkeys(names, k_new)
        elif isinstance(k_new, dict):
            ks = {n: int(k_new.get(n, 0)) for n in names}
        else:
            if len(k_new) != len(names):
                raise ValueError(f"k_new has {len(k_new)} entries for {len(names)} protected layers")
            ks = dict(zip(names, k_new))
        self.passes = passes
        self.hebb: dict[str, HebbianSubspace] = {}
        for i, n in enumerate(names):
            dim = self.memory.layer(n).dim
            h = HebbianSubspace(
                dim,
                0,
                lr=lr,
                momentum=momentum,
                iters=iters,
                generator=torch.Generator().manual_seed(seed + i),
            )
            h.k_new = min(ks[n], dim)
            self.hebb[n] = h

    @torch.no_grad()
    def after_task(self, batches: Iterable[Any], **kwargs: Any) -> dict[str, int]:
        """Grow and train the lateral neurons on ``batches`` (tensors or ``(x, y)`` tuples); update the memory."""
        from orthokit.projection.memory import default_forward

        batches = list(batches)
        if not batches:
            raise ValueError("after_task got no batches")
        before = {n: h.k for n, h in self.hebb.items()}
        for h in self.hebb.values():
            h.add_neurons()
        handles = []
        for n, h in self.hebb.items():
            lay = self.memory.layer(n)

            def hook(_m: nn.Module, args: tuple[Any, ...], lay: Any = lay, h: HebbianSubspace = h) -> None:
                h.update(lay.rows(args[0].detach()).to(h.H.dtype))

            handles.append(lay.module.register_forward_pre_hook(hook))
        was = self.model.training
        self.model.eval()
        try:
            for _ in range(self.passes):
                for b in batches:
                    default_forward(self.model, b)
        finally:
            for hd in handles:
                hd.remove()
            self.model.train(was)
        for n, h in self.hebb.items():
            if h.k:
                self.memory.set_basis(n, h.basis().double(), kind="activation")
        self.memory.task_count += 1
        return {n: h.k - before[n] for n, h in self.hebb.items()}

    def state_dict(self) -> dict[str, Any]:
        """Memory plus the lateral weights of every layer."""
        return {
            "memory": self.memory.state_dict(),
            "hebbian": {n: h.state_dict() for n, h in self.hebb.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        super().load_state_dict(state)
        for n, st in state.get("hebbian", {}).items():
            self.hebb[n].load_state_dict(st)
