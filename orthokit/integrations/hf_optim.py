"""``optimizer_for_trainer``: an orthokit optimizer and its LR scheduler for ``transformers.Trainer(optimizers=...)``.

The optimizer is built by :func:`orthokit.optim.hybrid`, which routes by **structure**: hidden matrices (attention
and MLP weights) get the named orthogonalized rule, while embeddings, the LM head (``get_output_embeddings()``,
tied weights included), norm gains and biases get AdamW — inside ONE optimizer with one ``state_dict``, so Trainer's
checkpointing and resume work unchanged. This is what Muon's authors recommend for language models (Jordan et al.
2024; Liu et al. 2025, arXiv:2502.16982: embeddings and ``lm_head`` on AdamW). Passing an optimizer class through
``Trainer(optimizer_cls_and_kwargs=(Muon, {...}))`` also works (1-D parameters then take the shape-only AdamW
fallback), but embeddings and the LM head are orthogonalized that way.

Weight decay follows the Hugging Face convention: ``weight_decay`` applies to every ≥ 2-D parameter (hidden
matrices, embeddings, heads) and not to biases and norm weights. As in ``torch.optim.AdamW`` it is decoupled and
multiplied by each group's lr (``W ← W(1 − lr·λ)``), so one λ decays the orthogonalized matrices (lr 0.02) much
faster than the AdamW groups (lr 3e-4): Moonlight uses λ = 0.1 with RMS-matched updates (``scale="match_rms_adamw"``,
one lr for both).

Example:
    >>> import torch
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> cfg = GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0)
    >>> model = GPT2LMHeadModel(cfg)
    >>> opt, sched = optimizer_for_trainer(model, "muon", weight_decay=0.01, num_training_steps=100, warmup_steps=10)
    >>> sorted({g["role"] for g in opt.param_groups})
    ['adamw', 'adamw_no_decay', 'ortho']
    >>> [g["initial_lr"] for g in opt.param_groups if g["role"] == "ortho"]   # Muon's constructor default
    [0.02]
"""

from __future__ import annotations

from typing import Any

from torch import nn

from orthokit.optim import hybrid
from orthokit.optim.base import OrthogonalOptimizer
from orthokit.optim.registry import OPTIMIZERS, get_optimizer

__all__ = ["optimizer_for_trainer"]

_NO_TOTAL = ("constant", "constant_with_warmup", "reduce_lr_on_plateau")


def optimizer_for_trainer(
    model: nn.Module,
    name: str = "normuon",
    *,
    lr: float | None = None,
    weight_decay: float = 0.0,
    num_training_steps: int | None = None,
    warmup_steps: int = 0,
    scheduler: str = "linear",
    adamw_lr: float | None = None,
    **kwargs: Any,
) -> tuple[OrthogonalOptimizer, Any]:
    """Build ``(optimizer, lr_scheduler)`` for ``transformers.Trainer(optimizers=(optimizer, lr_scheduler))``.

    Args:
        model: the model Trainer trains (parameters with ``requires_grad=False`` are left out).
        name: registry name of the orthogonalized rule for hidden matrices (``orthokit.optim.OPTIMIZERS``:
            ``"muon"``, ``"normuon"``, ``"adamuon"``, ...).
        lr: lr of the orthogonalized groups (``None``: the optimizer constructor's default, e.g. Muon's 0.02 —
            the same as ``create_optimizer(name, params)``).
        weight_decay: decoupled λ for every ≥ 2-D parameter (orthogonalized matrices, embeddings, heads); biases
            and norm weights get none (Hugging Face convention). Default 0.0, ``TrainingArguments``' default.
        num_training_steps: total optimizer steps (required unless the scheduler is constant).
        warmup_steps: linear warmup steps of the scheduler.
        scheduler: a ``transformers.get_scheduler`` name (``"linear"``, ``"cosine"``, ``"constant"``, ...).
        adamw_lr: lr of the AdamW groups (``None``: :func:`~orthokit.optim.hybrid`'s rule — the orthogonalized lr
            for RMS-matched ``scale="match_rms_adamw"``, else 3e-4).
        **kwargs: passed to :func:`~orthokit.optim.hybrid` (routing: ``adamw=``, ``ortho=``, ``split_qkv=``,
            ``example_input=``, ``adamw_betas=``; or the optimizer's own flat kwargs such as ``momentum``).

    Returns:
        ``(optimizer, lr_scheduler)``; the optimizer's groups carry ``role`` ∈ {"ortho", "adamw",
        "adamw_no_decay"} and :func:`orthokit.optim.describe` prints the routing.

    Raises:
        ValueError: unknown ``name`` (the message lists the registered names), bad step counts, or a model without
            trainable parameters.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    get_optimizer("muon")  # importing orthokit.optim registers every shipped optimizer
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise ValueError(
            f"unknown optimizer {name!r}; registered optimizers: {', '.join(OPTIMIZERS.names())}"
        )
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not weight_decay >= 0:
        raise ValueError(f"weight_decay must be a float >= 0, got {weight_decay!r}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
    if num_training_steps is None:
        if scheduler not in _NO_TOTAL:
            raise ValueError(f"num_training_steps is required for scheduler={scheduler!r}")
    elif (
        isinstance(num_training_steps, bool)
        or not isinstance(num_training_steps, int)
        or num_training_steps < 1
    ):
        raise ValueError(f"num_training_steps must be a positive int, got {num_training_steps!r}")
    elif warmup_steps > num_training_steps:
        raise ValueError(f"warmup_steps={warmup_steps} exceeds num_training_steps={num_training_steps}")
    from transformers import get_scheduler

    kwargs.setdefault("adamw_wd", weight_decay)  # HF: embeddings and heads decay too; 1-D params never
    opt = hybrid(model, name, lr, adamw_lr=adamw_lr, weight_decay=weight_decay, **kwargs)
    try:
        sched = get_scheduler(
            scheduler, optimizer=opt, num_warmup_steps=warmup_steps, num_training_steps=num_training_steps
        )
    except (ValueError, KeyError) as e:
        raise ValueError(f"scheduler={scheduler!r}: {e}") from e
    return opt, sched
