"""HF integration: a tiny GPT-2 built from a config (no downloads), a few Trainer steps, protected layers' outputs on
the remembered inputs do not change — via the callback and via the projected optimizer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments  # noqa: E402

from orthokit.integrations.hf import ProjectionCallback, projected_optimizer_for_trainer  # noqa: E402
from orthokit.projection import SubspaceMemory  # noqa: E402

PROTECTED = ["transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"]


def _model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=40,
        n_positions=16,
        n_embd=32,
        n_layer=1,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(cfg)


def _dataset(seed: int, n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 40, (n, 8), generator=g)
    return [{"input_ids": row, "labels": row.clone()} for row in ids]


def _record_inputs(model: GPT2LMHeadModel, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    mods = dict(model.named_modules())
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        mods[n].register_forward_pre_hook(lambda m, a, n=n: seen.__setitem__(n, a[0].detach().clone()))
        for n in PROTECTED
    ]
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    for h in hooks:
        h.remove()
    return seen


def _layer_outputs(model: GPT2LMHeadModel, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    mods = dict(model.named_modules())
    with torch.no_grad():
        return {n: mods[n](x).clone() for n, x in inputs.items()}


def _args(tmp: Path, **kw) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(tmp),
        max_steps=3,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        learning_rate=1e-2,
        weight_decay=0.1,
        max_grad_norm=1.0,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        **kw,
    )


def _memory(model: GPT2LMHeadModel, old_ids: torch.Tensor) -> SubspaceMemory:
    mem = SubspaceMemory(model, layers=PROTECTED)
    mem.collect_activations(model, [{"input_ids": old_ids}], threshold=1.0 - 1e-9, criterion="minimal")
    assert all(0 < s.k < s.n for s in mem.summary())
    return mem


def _check(
    model: GPT2LMHeadModel,
    inputs: dict[str, torch.Tensor],
    before: dict[str, torch.Tensor],
    weights_before: dict[str, torch.Tensor],
) -> None:
    after = _layer_outputs(model, inputs)
    for n in PROTECTED:
        rel = float((after[n] - before[n]).norm() / before[n].norm())
        assert rel < 1e-5, f"{n}: outputs on remembered inputs changed by {rel:.2e}"
    mods = dict(model.named_modules())
    for n in PROTECTED:
        assert float((mods[n].weight.detach() - weights_before[n]).norm()) > 1e-4, f"{n} did not train"


@pytest.mark.parametrize("path", ["callback", "optimizer", "callback_gpm", "optimizer_gpm"])
def test_trainer_keeps_protected_outputs(tmp_path: Path, path: str) -> None:
    model = _model()
    old_ids = torch.stack([d["input_ids"] for d in _dataset(1, 2)])
    inputs = _record_inputs(model, old_ids)
    before = _layer_outputs(model, inputs)
    mods = dict(model.named_modules())
    w0 = {n: mods[n].weight.detach().clone() for n in PROTECTED}
    ln0 = model.transformer.ln_f.weight.detach().clone()
    if path.endswith("_gpm"):  # a registered method object instead of its memory (frozen LayerNorms included)
        from orthokit.projection import GPM

        mem = GPM(model, layers=PROTECTED, threshold=1.0 - 1e-9, max_samples=None)
        mem.after_task([{"input_ids": old_ids}])
        path = path[: -len("_gpm")]
    else:
        mem = _memory(model, old_ids)
    model.train()
    if path == "callback":
        trainer = Trainer(
            model=model,
            args=_args(tmp_path),
            train_dataset=_dataset(2, 16),
            callbacks=[ProjectionCallback(mem)],
        )
    else:
        opt, sched = projected_optimizer_for_trainer(
            model, mem, lr=1e-2, weight_decay=0.1, num_training_steps=3
        )
        trainer = Trainer(
            model=model, args=_args(tmp_path), train_dataset=_dataset(2, 16), optimizers=(opt, sched)
        )
    trainer.train()
    assert trainer.state.global_step == 3
    _check(model, inputs, before, w0)
    if not isinstance(mem, SubspaceMemory):  # GPM freezes normalisation parameters after the first task
        assert torch.equal(model.transformer.ln_f.weight, ln0)


@pytest.mark.slow
def test_callback_without_memory_matches_plain_trainer(tmp_path: Path) -> None:
    model_a, model_b = _model(), _model()
    mem = SubspaceMemory(model_a, layers=PROTECTED)
    Trainer(
        model=model_a,
        args=_args(tmp_path / "a"),
        train_dataset=_dataset(2, 16),
        callbacks=[ProjectionCallback(mem)],
    ).train()
    Trainer(model=model_b, args=_args(tmp_path / "b"), train_dataset=_dataset(2, 16)).train()
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(a, b)


def test_helper_errors() -> None:
    model = _model()
    mem = SubspaceMemory(model, layers=PROTECTED)
    with pytest.raises(ValueError, match="num_training_steps"):
        projected_optimizer_for_trainer(model, mem)
    with pytest.raises(TypeError, match="SubspaceMemory"):
        ProjectionCallback("nope")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bogus"):
        ProjectionCallback(mem, bogus=1)  # type: ignore[call-arg]
