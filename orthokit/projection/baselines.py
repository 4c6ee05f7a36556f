"""Continual-learning **baselines** used by orthokit's benchmark (not projection methods of the library proper).

They share one small strategy protocol with the benchmark harness (:class:`ContinualStrategy`):
``begin_task`` → per step ``penalty`` (added to the loss) and ``before_step`` (may edit ``.grad``) →
``end_task`` (consolidate with the task's data). Three baselines:

* :class:`FineTune` — plain sequential training (the forgetting upper bound).
* :class:`EWC` — Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017, arXiv 1612.00796): after task
  ``t`` the diagonal empirical Fisher ``F_t = E[(∇ log p(y|x))²]`` is estimated from single-sample gradients
  and the loss gets ``(λ/2) Σ_t Σ_i F_{t,i} (θ_i − θ*_{t,i})²``; accumulated exactly as
  ``(λ/2) Σ_i [A_i θ_i² − 2 B_i θ_i + C]`` with ``A = Σ_t F_t``, ``B = Σ_t F_t θ*_t``.
* :class:`AGEM` — Averaged GEM (Chaudhry et al., ICLR 2019, arXiv 1812.00420): an episodic memory of
  ``mem_per_task`` samples per task; each step a reference gradient ``g_ref`` on a memory batch; if
  ``⟨g, g_ref⟩ < 0`` then ``g ← g − (⟨g, g_ref⟩/‖g_ref‖²) g_ref`` (global, rank-1, conditional).

Example:
    >>> import torch
    >>> import torch.nn.functional as F
    >>> model = torch.nn.Linear(4, 3)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> x_task, y_task = torch.randn(16, 4), torch.randint(0, 3, (16,))
    >>> strat = EWC(lam=3.0, loss_fn=lambda m, x, y, t: F.cross_entropy(m(x), y))
    >>> strat.begin_task(model, 0)
    >>> penalty = strat.penalty(model)
    >>> loss = F.cross_entropy(model(x_task), y_task) + (0 if penalty is None else penalty)
    >>> loss.backward(); strat.before_step(model, 0); opt.step()
    >>> strat.end_task(model, 0, x_task, y_task)
    >>> float(strat.penalty(model))        # the parameters have not moved since task 0 ended
    0.0
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["ContinualStrategy", "FineTune", "EWC", "AGEM", "LossFn"]

# loss_fn(model, x, y, task) -> scalar mean loss (task selects the head in multi-head settings)
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor]


class ContinualStrategy:
    """Protocol of a continual-learning strategy driven by the benchmark loop (base = plain fine-tuning)."""

    name = "finetune"

    def begin_task(self, model: nn.Module, task: int) -> None:
        """Called before training on ``task``."""

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """Extra loss term (``None`` = none)."""
        return None

    def before_step(self, model: nn.Module, task: int) -> None:
        """Called after ``backward()`` and before ``optimizer.step()``; may edit ``.grad``."""

    def end_task(self, model: nn.Module, task: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """Called after training ``task`` with (a sample of) its training data."""

    def memory_floats(self) -> int:
        """Extra persistent floats the strategy stores."""
        return 0


class FineTune(ContinualStrategy):
    """Plain sequential fine-tuning: no protection at all (baseline)."""

    name = "finetune"


class EWC(ContinualStrategy):
    """Elastic Weight Consolidation with a diagonal empirical Fisher summed over all past tasks (baseline).

    Args:
        lam: penalty strength ``λ``.
        loss_fn: ``loss_fn(model, x, y, task)``; used per sample for the Fisher.
        fisher_samples: single-sample gradients per task (500 as in the measured reference run).
        params: parameter names to regularise (default all trainable ones).
    """

    name = "ewc"

    def __init__(
        self, lam: float, loss_fn: LossFn, fisher_samples: int = 500, params: list[str] | None = None
    ):
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        if fisher_samples < 1:
            raise ValueError(f"fisher_samples must be >= 1, got {fisher_samples}")
        self.lam, self.loss_fn, self.fisher_samples, self.param_names = lam, loss_fn, fisher_samples, params
        self.A: dict[str, torch.Tensor] = {}
        self.B: dict[str, torch.Tensor] = {}
        self.C = 0.0

    def _named(self, model: nn.Module) -> dict[str, nn.Parameter]:
        named = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if self.param_names is not None:
            named = {n: named[n] for n in self.param_names}
        return named

    def fisher(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: int
    ) -> dict[str, torch.Tensor]:
        """Diagonal empirical Fisher ``mean_b (∇_θ ℓ(x_b, y_b))²`` from single-sample gradients."""
        named = self._named(model)
        keys, params = list(named), list(named.values())
        n = min(self.fisher_samples, x.shape[0])
        acc = [torch.zeros_like(p) for p in params]
        for b in range(n):
            loss = self.loss_fn(model, x[b : b + 1], y[b : b + 1], task)
            gs = torch.autograd.grad(loss, params, allow_unused=True)
            for a, g in zip(acc, gs):
                if g is not None:
                    a += g.detach() ** 2
        return {k: a / n for k, a in zip(keys, acc)}

    def end_task(self, model: nn.Module, task: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add this task's Fisher and anchor ``θ*`` to the accumulated quadratic penalty."""
        F_t = self.fisher(model, x, y, task)
        for k, p in self._named(model).items():
            th = p.detach().clone()
            self.A[k] = self.A.get(k, torch.zeros_like(th)) + F_t[k]
            self.B[k] = self.B.get(k, torch.zeros_like(th)) + F_t[k] * th
            self.C += float((F_t[k] * th * th).sum())

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """``(λ/2) Σ_t Σ_i F_{t,i}(θ_i − θ*_{t,i})²``."""
        if not self.A:
            return None
        named = self._named(model)
        tot = sum(((self.A[k] * p * p) - 2 * self.B[k] * p).sum() for k, p in named.items())
        return 0.5 * self.lam * (tot + self.C)

    def memory_floats(self) -> int:
        return sum(a.numel() for a in self.A.values()) + sum(b.numel() for b in self.B.values())


class AGEM(ContinualStrategy):
    """Averaged Gradient Episodic Memory (baseline).

    Args:
        loss_fn: ``loss_fn(model, x, y, task)``.
        mem_per_task: samples stored per task (episodic memory).
        ref_batch: memory samples drawn for each reference gradient.
        generator: RNG for the memory sampling.
    """

    name = "agem"

    def __init__(
        self,
        loss_fn: LossFn,
        mem_per_task: int = 250,
        ref_batch: int = 256,
        generator: torch.Generator | None = None,
    ):
        if mem_per_task < 1 or ref_batch < 1:
            raise ValueError("mem_per_task and ref_batch must be >= 1")
        self.loss_fn, self.mem_per_task, self.ref_batch = loss_fn, mem_per_task, ref_batch
        self.generator = generator
        self.mem: list[tuple[torch.Tensor, torch.Tensor, int]] = []
        self.n_projected = 0
        self.n_steps = 0

    def end_task(self, model: nn.Module, task: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """Store ``mem_per_task`` random samples of the task."""
        idx = torch.randperm(x.shape[0], generator=self.generator)[: self.mem_per_task]
        self.mem.append((x[idx].clone(), y[idx].clone(), task))

    def _reference_grad(self, model: nn.Module, params: list[nn.Parameter]) -> list[torch.Tensor]:
        total = sum(m[0].shape[0] for m in self.mem)
        per = max(1, self.ref_batch // len(self.mem))
        loss = 0.0
        for xm, ym, t in self.mem:
            idx = torch.randint(xm.shape[0], (min(per, xm.shape[0]),), generator=self.generator)
            loss = loss + self.loss_fn(model, xm[idx], ym[idx], t) * (xm.shape[0] / total)
        gs = torch.autograd.grad(loss, params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for g, p in zip(gs, params)]

    def before_step(self, model: nn.Module, task: int) -> None:
        """Project the current gradient if it conflicts with the memory gradient."""
        if not self.mem:
            return
        params = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
        saved = [p.grad.clone() for p in params]
        with torch.enable_grad():
            gref = self._reference_grad(model, params)
        dot = sum(float((g * r).sum()) for g, r in zip(saved, gref))
        self.n_steps += 1
        if dot < 0:
            nr = sum(float((r * r).sum()) for r in gref)
            if nr > 0:
                self.n_projected += 1
                for p, g, r in zip(params, saved, gref):
                    p.grad.copy_(g - (dot / nr) * r)

    def memory_floats(self) -> int:
        return sum(m[0].numel() + m[1].numel() for m in self.mem)
