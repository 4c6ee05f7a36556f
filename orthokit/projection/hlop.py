"""HLOP — Hebbian Learning based Orthogonal Projection (Xiao et al., ICLR 2024), streaming subspace memory.

Instead of storing activations and taking an SVD (GPM), each layer keeps *lateral* weights
``H ∈ R^{k×n}`` learned online with Oja's subspace rule (Hebbian / anti-Hebbian). HLOP's update
(``modules/hlop_module.py::update_weights``), repeated ``iters`` times per batch:

.. math::

    y = H x,\\quad ΔH = \\operatorname{clamp}_{±10}\\Big(\\frac{1}{B} \\sum_b y_b (x_b - H^\\top y_b)^\\top\\Big),\\quad
    m \\leftarrow 0.9\\, m + 0.1\\, ΔH,\\quad H \\leftarrow H + η\\, m ,

only for the rows of the current task (earlier rows frozen; all rows take part in the reconstruction
``Hᵀy``, so the new rows learn the residual principal subspace). Its stable fixed points are orthonormal bases
(``HHᵀ = I``) of the top-``k`` principal subspace of ``E[xxᵀ]`` (Oja 1989). ``out_numbers`` new lateral neurons
are added per task with an orthogonal initialisation (``torch.nn.init.orthogonal_`` on the new block: orthonormal
among themselves, *not* orthogonalised against the old rows). The neurons learn **online**, from the layer inputs
of every training batch of the task (HLOP's ``update_hlop=True`` forward); the weight gradients of later tasks are
projected off the learned span. Nothing but ``H`` is stored: no activations, no per-sample gradients.

Defaults are HLOP's (``HLOP`` module defaults: lr 0.01, momentum 0.9 in the EMA form above, 5 iterations per
batch, clamp ±10, raw inputs). orthokit's earlier variant is available through options: ``momentum_form=
"heavy_ball"`` (``m ← 0.9m + ΔH``), ``init="orthogonal_to_old"``, ``normalize=True`` (divide each batch by its
RMS norm: same subspace, scale-free step), and — for :class:`HLOP` — ``schedule="after_task"`` (``passes``
passes over the end-of-task batches instead of online learning).

Reference: M. Xiao, Q. Meng, Z. Zhang, D. He, Z. Lin, "Hebbian Learning based Orthogonal Projection for
Continual Learning of Spiking Neural Networks", ICLR 2024 (arXiv 2402.11984); code github.com/pkuxmq/HLOP-SNN
(commit 530b89a: ``modules/hlop_module.py``, ``modules/proj_linear.py``, ``spiking_train_pmnist.py``);
E. Oja, "Neural networks, principal components, and subspaces", Int. J. Neural Systems 1 (1989).

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(400, 20, generator=g) * torch.cat([torch.full((3,), 3.0), torch.full((17,), 0.2)])
    >>> hl = HebbianSubspace(20, 3, lr=0.01, generator=g)
    >>> for xb in x.split(20):
    ...     hl.update(xb)
    >>> Q = hl.basis()                                   # [20, 3] orthonormal
    >>> bool(torch.linalg.svdvals(Q[:3]).min() > 0.99)   # ≈ the top-3 principal subspace (first 3 axes)
    True
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from orthokit.projection.memory import SubspaceMemory
from orthokit.projection.registry import ProjectionMethod, register_projection

__all__ = ["HebbianSubspace", "HLOPMemory", "HLOP", "MOMENTUM_FORMS", "INITS", "SCHEDULES"]

MOMENTUM_FORMS = ("ema", "heavy_ball")
INITS = ("orthogonal", "orthogonal_to_old")
SCHEDULES = ("online", "after_task")


class HebbianSubspace:
    """Oja-subspace lateral weights of one layer, grown per task (HLOP's ``HLOP`` module).

    Args:
        n: input dimension (layer fan-in).
        k_new: lateral neurons added by :meth:`add_neurons` calls without an explicit count (and at init).
        lr: Hebbian learning rate ``η`` (HLOP: 0.01).
        momentum: momentum coefficient ``μ`` (HLOP: 0.9; 0 disables it).
        momentum_form: ``"ema"`` — ``m ← μ m + (1 − μ) ΔH`` (HLOP); ``"heavy_ball"`` — ``m ← μ m + ΔH``
            (orthokit's earlier rule: a ``1/(1 − μ)`` = 10× larger effective step).
        iters: Hebbian iterations per :meth:`update` call (HLOP: 5).
        clamp: elementwise clamp of ``ΔH`` (HLOP: ±10).
        init: ``"orthogonal"`` — new rows orthonormal among themselves (HLOP's ``orthogonal_`` on the new block);
            ``"orthogonal_to_old"`` — also orthogonal to the existing rows (orthokit's earlier choice).
        generator: RNG of the initialisation of new neurons.
        dtype: storage dtype of ``H``.
        normalize: divide each batch by its RMS norm before the update (a scalar rescaling of the input
            covariance: same principal subspace, scale-free step; Oja's rule needs ``η λ_max ≲ 1``). HLOP's raw
            rule is ``normalize=False`` (default).
    """

    def __init__(
        self,
        n: int,
        k_new: int,
        *,
        lr: float = 0.01,
        momentum: float = 0.9,
        momentum_form: str = "ema",
        iters: int = 5,
        clamp: float = 10.0,
        init: str = "orthogonal",
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        normalize: bool = False,
    ) -> None:
        if n <= 0 or k_new < 0 or k_new > n:
            raise ValueError(f"need n > 0 and 0 <= k_new <= n, got n={n}, k_new={k_new}")
        if not lr > 0 or not 0 <= momentum < 1 or not isinstance(iters, int) or iters < 1 or not clamp > 0:
            raise ValueError(f"invalid lr={lr}, momentum={momentum}, iters={iters}, clamp={clamp}")
        if momentum_form not in MOMENTUM_FORMS:
            raise ValueError(f"momentum_form must be 'ema' or 'heavy_ball', got {momentum_form!r}")
        if init not in INITS:
            raise ValueError(f"init must be 'orthogonal' or 'orthogonal_to_old', got {init!r}")
        self.n, self.k_new, self.lr, self.momentum, self.iters, self.clamp = (
            n,
            k_new,
            lr,
            momentum,
            iters,
            clamp,
        )
        self.momentum_form, self.init = momentum_form, init
        self.generator = generator
        self.normalize = normalize
        self.H = torch.zeros(0, n, dtype=dtype)
        self.n_frozen = 0
        self.updates = 0  # update() calls since the last add_neurons()
        self._buf: torch.Tensor | None = None
        self._basis: torch.Tensor | None = None
        if k_new:
            self.add_neurons(k_new)

    @property
    def k(self) -> int:
        """Total number of lateral neurons (rows of ``H``)."""
        return self.H.shape[0]

    def add_neurons(self, count: int | None = None) -> None:
        """Freeze the current rows and append ``count`` new orthonormal rows (see ``init``)."""
        count = self.k_new if count is None else count
        count = min(count, self.n - self.k) if self.init == "orthogonal_to_old" else min(count, self.n)
        self.n_frozen = self.k
        self.updates = 0
        self._buf = None
        if count <= 0:
            return
        R = torch.randn(self.n, count, generator=self.generator, dtype=torch.float64)
        if self.k and self.init == "orthogonal_to_old":
            Q_old = torch.linalg.qr(self.H.double().T).Q
            R = R - Q_old @ (Q_old.T @ R)
        Q, Rr = torch.linalg.qr(R)
        Q = Q * torch.sign(torch.diagonal(Rr)).masked_fill(
            torch.diagonal(Rr) == 0, 1.0
        )  # as init.orthogonal_
        self.H = torch.cat([self.H, Q.T.to(self.H.dtype)], 0)
        self._basis = None

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Hebbian update of the trainable (non-frozen) rows from a batch ``x`` ``[B, n]``."""
        if x.dim() != 2 or x.shape[1] != self.n:
            raise ValueError(f"x must be [B, {self.n}], got shape {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("x contains non-finite values")
        if self.k == self.n_frozen or x.shape[0] == 0:
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
                if self._buf is None:
                    self._buf = torch.zeros_like(dH)
                damp = 1.0 - self.momentum if self.momentum_form == "ema" else 1.0
                self._buf = self.momentum * self._buf + damp * dH
                dH = self._buf
            self.H[self.n_frozen :] += self.lr * dH
        self.updates += 1
        self._basis = None

    def basis(self) -> torch.Tensor:
        """Orthonormal basis ``[n, r]`` of ``span(Hᵀ)`` (QR in float64, cached until ``H`` changes).

        ``r = k`` unless rows are linearly dependent (possible with ``init="orthogonal"`` when ``k > n``)."""
        if self.k == 0:
            return self.H.new_zeros(self.n, 0)
        if self._basis is None:
            Q, R = torch.linalg.qr(self.H.double().T)
            d = torch.diagonal(R).abs()
            keep = (
                d > 1e-10 * float(d.max())
                if self.k > self.n or bool((d < 1e-10 * float(d.max())).any())
                else None
            )
            if keep is not None:  # rank-deficient: an SVD gives the span exactly
                U, S, _ = torch.linalg.svd(self.H.double().T, full_matrices=False)
                Q = U[:, : int((S > 1e-10 * float(S[0])).sum())]
            self._basis = Q.to(self.H.dtype)
        return self._basis

    def project(self, G: torch.Tensor) -> torch.Tensor:
        """Right projection ``G − G QQᵀ`` of a weight gradient ``[out, n]``."""
        if G.shape[-1] != self.n:
            raise ValueError(f"gradient last dim must be {self.n}, got {tuple(G.shape)}")
        Q = self.basis().to(G.dtype)
        return G - (G @ Q) @ Q.T

    def state_dict(self) -> dict[str, Any]:
        """Lateral weights, momentum buffer and the frozen-row count."""
        return {
            "H": self.H.clone(),
            "n_frozen": self.n_frozen,
            "momentum_buffer": None if self._buf is None else self._buf.clone(),
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict` (validated before anything changes)."""
        H = state.get("H")
        if not isinstance(H, torch.Tensor) or H.dim() != 2 or H.shape[1] != self.n:
            raise ValueError(f"H must be a [k, {self.n}] tensor")
        nf = int(state.get("n_frozen", 0))
        if not 0 <= nf <= H.shape[0]:
            raise ValueError(f"n_frozen must be in [0, {H.shape[0]}], got {nf}")
        buf = state.get("momentum_buffer")
        if buf is not None and (not isinstance(buf, torch.Tensor) or buf.shape != (H.shape[0] - nf, self.n)):
            raise ValueError("momentum_buffer does not match the trainable rows of H")
        self.H = H.clone()
        self.n_frozen = nf
        self._buf = None if buf is None else buf.clone()
        self.updates = int(state.get("updates", 0))
        self._basis = None


class HLOPMemory:
    """HLOP for the ``nn.Linear`` layers of a model: streaming input subspaces and projected gradients.

    Forward hooks feed each layer's input to its :class:`HebbianSubspace` during :meth:`observe`. Call
    :meth:`begin_task` before observing a task (adds ``k_new[l]`` neurons per layer), :meth:`project_grads` after
    ``backward()`` (for tasks > the first one). The registered :class:`HLOP` is the full method (online schedule).

    Args:
        model: the network.
        layers: names of the ``nn.Linear`` modules to protect.
        k_new: new lateral neurons per task, one int or one per layer.
        **kw: forwarded to :class:`HebbianSubspace` (lr, momentum, iters, ...).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> mem = HLOPMemory(model, ["0", "2"], k_new=[2, 1], lr=0.01)
        >>> mem.begin_task(); mem.observe(model, [torch.randn(10, 6) for _ in range(5)])
        >>> model(torch.randn(3, 6)).sum().backward(); mem.project_grads()
        >>> mem.dims()
        {'0': 2, '2': 1}
    """

    def __init__(self, model: nn.Module, layers: Iterable[str], k_new: int | list[int], **kw: Any) -> None:
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
            sub = HebbianSubspace(mod.in_features, 0, **kw)
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


class _OnlineHook:
    """Forward pre-hook feeding a layer's training inputs to its lateral neurons (picklable, no closure)."""

    def __init__(self, method: HLOP, name: str) -> None:
        self.method, self.name = method, name

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not (module.training and torch.is_grad_enabled()) or not args:
            return
        h = self.method.hebb[self.name]
        lay = self.method.memory.layer(self.name)
        with torch.no_grad():
            h.update(lay.rows(args[0].detach()).to(h.H.dtype))


def _per_layer(value: Any, names: list[str], what: str, cast: type) -> dict[str, Any]:
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ValueError(f"{what} names unknown layers {unknown}; protected: {names}")
        return {n: value[n] for n in names if n in value}
    if isinstance(value, (list, tuple)):
        if len(value) != len(names):
            raise ValueError(f"{what} has {len(value)} entries for {len(names)} protected layers")
        return {n: cast(v) for n, v in zip(names, value)}
    return dict.fromkeys(names, cast(value))


@register_projection(
    "hlop",
    aliases=("hebbian",),
    subspace="activation",
    optimizer_agnostic=True,
    guarantee="soft",  # exact projection, but off an Oja *estimate* of the input subspace
    paper="Xiao et al., Hebbian Learning based Orthogonal Projection for Continual Learning of Spiking "
    "Neural Networks, ICLR 2024 (arXiv 2402.11984)",
)
class HLOP(ProjectionMethod):
    """HLOP as a registered projection method: Oja subspaces learned online feed a :class:`SubspaceMemory`.

    ``schedule="online"`` (default, HLOP's): each protected layer starts with ``k_new`` lateral neurons;
    ``wrap(optimizer)`` also attaches forward pre-hooks so that every *training* forward pass (module in train
    mode, autograd enabled) updates the current task's neurons from the layer-input rows (bias-augmented like
    GPM); ``after_task()`` stores the orthonormalised span of all neurons as the layer's activation basis,
    freezes them and adds ``k_new`` fresh neurons for the next task. The wrapped optimizer projects the applied
    update off the stored basis (exact orthogonality to the learned subspace — which only estimates the input
    subspace, hence the ``"soft"`` guarantee). If no training forward reached the neurons during a task (e.g.
    training ran without the hooks), ``after_task(batches)`` learns from the batches instead, until the learned
    span settles, and warns. Only the lateral weights are kept.

    ``schedule="after_task"`` (orthokit's earlier variant): neurons are added at ``after_task`` and learned from
    ``passes`` passes over its batches.

    Args:
        model: the network.
        layers: protected layers (as for :class:`SubspaceMemory`).
        k_new: new lateral neurons per task: an int, a per-layer list or ``{name: k}``.
        lr: Hebbian learning rate, one float or per layer (list / dict; HLOP's pMNIST uses 0.001 on the
            784-input layer and 0.01 elsewhere).
        momentum, momentum_form, iters, clamp, init, normalize: :class:`HebbianSubspace` settings (HLOP's by
            default).
        schedule: ``"online"`` or ``"after_task"``.
        passes: passes over ``after_task``'s batches when they are used; ``None`` (default): 3 with
            ``schedule="after_task"`` (orthokit's earlier setting), and in the online fallback as many as needed
            for the learned span to settle (it moves < 1e-6 in a pass; at most 1000).
        seed: seed of the orthogonal initialisation of new neurons.
        bias: bias policy of the memory (``"augment"`` default).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
        >>> hlop = HLOP(model, k_new=2)
        >>> opt = hlop.wrap(torch.optim.SGD(model.parameters(), lr=0.01))
        >>> for _ in range(3):                                  # task 1: neurons learn from training batches
        ...     opt.zero_grad(); model(torch.randn(8, 6)).sum().backward(); opt.step()
        >>> hlop.after_task()                                   # no activations are stored
        {'0': 2, '2': 2}
        >>> opt = hlop.wrap(torch.optim.SGD(model.parameters(), lr=0.01))   # task 2: projected
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Any = None,
        *,
        k_new: int | list[int] | dict[str, int] = 8,
        lr: float | list[float] | dict[str, float] = 0.01,
        momentum: float = 0.9,
        momentum_form: str = "ema",
        iters: int = 5,
        clamp: float = 10.0,
        init: str = "orthogonal",
        normalize: bool = False,
        schedule: str = "online",
        passes: int | None = None,
        seed: int = 0,
        bias: str = "augment",
    ) -> None:
        if passes is not None and (not isinstance(passes, int) or passes < 1):
            raise ValueError(f"passes must be None or an int >= 1, got {passes!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be 'online' or 'after_task', got {schedule!r}")
        self.model = model
        self.memory = SubspaceMemory(model, layers, bias=bias)
        names = self.memory.layer_names
        ks = _per_layer(k_new, names, "k_new", int)
        ks = {n: int(ks.get(n, 0)) for n in names}
        lrs = _per_layer(lr, names, "lr", float)
        self.passes, self.schedule = passes, schedule
        self.hebb: dict[str, HebbianSubspace] = {}
        for i, n in enumerate(names):
            dim = self.memory.layer(n).dim
            h = HebbianSubspace(
                dim,
                0,
                lr=float(lrs.get(n, 0.01)),
                momentum=momentum,
                momentum_form=momentum_form,
                iters=iters,
                clamp=clamp,
                init=init,
                normalize=normalize,
                generator=torch.Generator().manual_seed(seed + i),
            )
            h.k_new = min(max(ks[n], 0), dim)
            if schedule == "online":
                h.add_neurons()
            self.hebb[n] = h
        self._handles: list[Any] = []

    # -- online learning ----------------------------------------------------------------------------------------
    def attach(self) -> None:
        """Attach the online-learning hooks (done by :meth:`wrap`; idempotent)."""
        if self._handles or self.schedule != "online":
            return
        for n in self.hebb:
            self._handles.append(self.memory.layer(n).module.register_forward_pre_hook(_OnlineHook(self, n)))

    def detach(self) -> None:
        """Remove the online-learning hooks (done by :meth:`after_task`)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def wrap(self, optimizer: torch.optim.Optimizer, *, where: str = "update") -> torch.optim.Optimizer:
        """The projected optimizer for the next task; with ``schedule="online"`` also attaches the hooks."""
        opt = super().wrap(optimizer, where=where)
        self.attach()
        return opt

    @torch.no_grad()
    def _learn_from(self, batches: list[Any], layers: list[str], passes: int | None) -> int:
        """Stream ``batches`` ``passes`` times (``None``: until every layer's span moves < 1e-6, ≤ 1000)."""
        from orthokit.projection.memory import default_forward

        handles = []
        for n in layers:
            h, lay = self.hebb[n], self.memory.layer(n)

            def hook(_m: nn.Module, args: tuple[Any, ...], lay: Any = lay, h: HebbianSubspace = h) -> None:
                h.update(lay.rows(args[0].detach()).to(h.H.dtype))

            handles.append(lay.module.register_forward_pre_hook(hook))
        was = self.model.training
        self.model.eval()
        done = 0
        try:
            prev = {n: self.hebb[n].basis().double() for n in layers}
            while done < (passes or 1000):
                done += 1
                for b in batches:
                    default_forward(self.model, b)
                if passes is None:
                    cur = {n: self.hebb[n].basis().double() for n in layers}
                    moved = max(float((cur[n] @ cur[n].T - prev[n] @ prev[n].T).abs().max()) for n in layers)
                    prev = cur
                    if moved < 1e-6:
                        break
        finally:
            for hd in handles:
                hd.remove()
            self.model.train(was)
        return done

    def after_task(self, batches: Iterable[Any] = (), **kwargs: Any) -> dict[str, int]:
        """Store the learned neurons' span as each layer's basis; returns directions added per layer.

        Online schedule: ``batches`` are used only for layers whose current neurons saw no training forward.
        ``"after_task"`` schedule: new neurons are added and learned from ``passes`` passes over ``batches``.
        """
        if kwargs:
            raise TypeError(f"HLOP.after_task got unexpected keyword arguments {sorted(kwargs)}")
        self.detach()
        batches = list(batches)
        before = {n: self.memory.layer(n).k for n in self.hebb}
        if self.schedule == "after_task":
            if not batches:
                raise ValueError("after_task got no batches (schedule='after_task' learns from them)")
            for h in self.hebb.values():
                h.add_neurons()
            self._learn_from(batches, list(self.hebb), self.passes or 3)
        else:
            idle = [n for n, h in self.hebb.items() if h.k > h.n_frozen and h.updates == 0]
            if idle:
                if not batches:
                    raise ValueError(
                        f"HLOP (online): layers {idle} saw no training forward pass this task and after_task got "
                        "no batches to learn from — train through the optimizer returned by wrap()"
                    )
                done = self._learn_from(batches, idle, self.passes)
                warnings.warn(
                    f"HLOP (online): layers {idle} saw no training forward pass this task; their neurons were "
                    f"learned from after_task's batches instead ({done} passes)",
                    RuntimeWarning,
                    stacklevel=2,
                )
        for n, h in self.hebb.items():
            if h.k:
                self.memory.set_basis(n, h.basis().double(), kind="activation")
        if self.schedule == "online":
            for h in self.hebb.values():
                h.add_neurons()  # freeze this task's neurons, open the next task's
        self.memory.task_count += 1
        return {n: self.memory.layer(n).k - before[n] for n in self.hebb}

    def state_dict(self) -> dict[str, Any]:
        """Memory plus the lateral weights of every layer."""
        return {
            "memory": self.memory.state_dict(),
            "hebbian": {n: h.state_dict() for n, h in self.hebb.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        heb = state.get("hebbian", {})
        unknown = sorted(set(heb) - set(self.hebb))
        if unknown:
            raise ValueError(f"state has lateral weights for unknown layers {unknown}")
        super().load_state_dict(state)
        for n, st in heb.items():
            self.hebb[n].load_state_dict(st)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = []  # hooks are runtime-only
        return state
