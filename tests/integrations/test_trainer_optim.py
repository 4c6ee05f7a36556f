"""orthokit optimizers inside ``transformers.Trainer`` (issue 10): ``optimizer_cls_and_kwargs``, the
``optimizer_for_trainer`` helper, bit-identical resume, the AdamW fallback, ``describe`` after warmup, unsafe NS
schedules. A tiny GPT-2 built from a config (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments  # noqa: E402

from orthokit.integrations.hf import projected_optimizer_for_trainer  # noqa: E402
from orthokit.integrations.hf_optim import optimizer_for_trainer  # noqa: E402
from orthokit.optim import Muon, NorMuon, describe  # noqa: E402
from orthokit.projection import SubspaceMemory  # noqa: E402

VOCAB = 64


def _model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=1, n_head=2, n_embd=16, vocab_size=VOCAB, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    return GPT2LMHeadModel(cfg)


def _dataset(n: int = 16, length: int = 16) -> list[dict[str, torch.Tensor]]:
    """Counting sequences ``s, s+1, ...`` (mod VOCAB): learnable, so the loss falls within a few steps."""
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(0, VOCAB, (n, 1), generator=g)
    ids = (starts + torch.arange(length)) % VOCAB
    return [{"input_ids": row, "labels": row.clone()} for row in ids]


def _args(out: Path, max_steps: int, **kw: Any) -> TrainingArguments:
    base: dict[str, Any] = dict(
        output_dir=str(out),
        per_device_train_batch_size=4,
        max_steps=max_steps,
        learning_rate=1e-3,
        seed=0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    base.update(kw)
    return TrainingArguments(**base)


def _losses(trainer: Trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


CLS_KW = {"lr": 0.02, "ns_dtype": torch.float32}


@pytest.mark.parametrize("cls", [Muon, NorMuon])
def test_optimizer_cls_and_kwargs_trains(tmp_path: Path, cls: type) -> None:
    model = _model()
    trainer = Trainer(
        model=model,
        args=_args(tmp_path, 8, weight_decay=0.01),
        train_dataset=_dataset(),
        optimizer_cls_and_kwargs=(cls, CLS_KW),
    )
    trainer.train()
    losses = _losses(trainer)
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.1, losses
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    roles = [(g["algorithm"], g.get("role"), g["weight_decay"]) for g in opt.param_groups]
    # Trainer's decay group is all ≥ 2-D (orthogonalized); its no-decay group (biases, LayerNorms) falls back
    assert roles == [("ortho", None, 0.01), ("adamw", "fallback", 0.0)]


def test_helper_trains_and_routes_by_structure(tmp_path: Path) -> None:
    model = _model()
    opt, sched = optimizer_for_trainer(
        model, "normuon", adamw_lr=1e-2, num_training_steps=8, warmup_steps=2, ns_dtype=torch.float32
    )
    trainer = Trainer(model=model, args=_args(tmp_path, 8), train_dataset=_dataset(), optimizers=(opt, sched))
    trainer.train()
    losses = _losses(trainer)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0] - 0.1, losses
    text = describe(opt)
    assert "embedding table" in text and "1-D parameter" in text


def _run(tmp_path: Path, how: str, resume: str | None) -> GPT2LMHeadModel:
    model = _model()
    args = _args(tmp_path, 4, save_strategy="steps", save_steps=2, weight_decay=0.01, warmup_steps=1)
    if how == "cls":
        kw: dict[str, Any] = dict(optimizer_cls_and_kwargs=(Muon, CLS_KW))
    else:
        kw = dict(
            optimizers=optimizer_for_trainer(
                model, "muon", weight_decay=0.01, num_training_steps=4, warmup_steps=1, ns_dtype=torch.float32
            )
        )
    Trainer(model=model, args=args, train_dataset=_dataset(), **kw).train(resume_from_checkpoint=resume)
    return model


@pytest.mark.parametrize("how", ["cls", "helper"])
def test_resume_is_bit_identical(tmp_path: Path, how: str) -> None:
    full = _run(tmp_path / "full", how, None)
    assert (tmp_path / "full" / "checkpoint-2" / "optimizer.pt").exists()
    resumed = _run(tmp_path / "resumed", how, str(tmp_path / "full" / "checkpoint-2"))
    for (n, a), b in zip(full.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), n
    assert not torch.equal(
        full.transformer.h[0].attn.c_attn.weight, _model().transformer.h[0].attn.c_attn.weight
    )


def test_fallback_error_keeps_the_old_error() -> None:
    with pytest.raises(
        ValueError, match=r"has shape \(16,\): orthogonalized updates need >= 2-D parameters; route"
    ):
        Muon(_model().parameters(), fallback="error")
    Muon(_model().parameters())  # the default falls back


def test_projected_optimizer_accepts_muon() -> None:
    model = _model()
    mem = SubspaceMemory(model, layers=["transformer.h.0.mlp.c_fc"])
    opt, _ = projected_optimizer_for_trainer(model, mem, optimizer_cls=Muon, lr=0.02, num_training_steps=4)
    model(input_ids=_dataset(2)[0]["input_ids"][None], labels=_dataset(2)[0]["labels"][None]).loss.backward()
    opt.step()


def test_describe_after_warmup_shows_the_scheduled_lr() -> None:
    model = _model()
    opt, sched = optimizer_for_trainer(model, "muon", num_training_steps=100, warmup_steps=10)
    lines = describe(opt).splitlines()

    def cell(line: str, col: str) -> float:  # columns are space-padded to the header's positions
        return float(line[lines[0].index(col) :].split()[0])

    first = lines[2]
    assert cell(first, " lr ") == 0.0 and cell(first, " base lr ") == 0.02  # current 0, base = Muon's 0.02
    assert lines[-1] == "lr = the current value; base lr = initial_lr, which the LR scheduler multiplies"
    sched.step()
    assert cell(describe(opt).splitlines()[2], " lr ") == pytest.approx(0.002)


def test_helper_errors_list_names() -> None:
    with pytest.raises(ValueError, match=r"unknown optimizer 'adam'; registered optimizers: adamuon, aro"):
        optimizer_for_trainer(_model(), "adam", num_training_steps=4)
    with pytest.raises(ValueError, match="num_training_steps is required"):
        optimizer_for_trainer(_model(), "muon")
    with pytest.raises(ValueError, match="warmup_steps=5 exceeds"):
        optimizer_for_trainer(_model(), "muon", num_training_steps=4, warmup_steps=5)


def test_cans_is_refused_in_trainer_kwargs(tmp_path: Path) -> None:
    trainer = Trainer(
        model=_model(),
        args=_args(tmp_path, 1),
        train_dataset=_dataset(),
        optimizer_cls_and_kwargs=(Muon, {"ns_method": "cans"}),
    )
    with pytest.raises(ValueError, match="ns_method='cans'.*unsafe in an optimizer.*use one of"):
        trainer.train()


def test_projected_optimizer_default_lr_follows_the_optimizer() -> None:
    """``lr`` unset: orthokit optimizers get their own default (Muon 0.02), others the Trainer's 5e-5."""
    from orthokit.integrations.hf import projected_optimizer_for_trainer
    from orthokit.projection import GPM

    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Linear(4, 3))
    gpm = GPM(model, threshold=0.9)
    gpm.after_task([torch.randn(20, 6)])
    opt, _ = projected_optimizer_for_trainer(model, gpm, optimizer_cls=Muon, scheduler="constant")
    assert opt.param_groups[0]["lr"] == 0.02
    opt, _ = projected_optimizer_for_trainer(model, gpm, scheduler="constant")
    assert {g["lr"] for g in opt.param_groups} == {5e-5}
