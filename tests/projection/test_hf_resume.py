"""ProjectionCallback in real Trainer runs: the memory is written next to each checkpoint and restored on resume
(a fresh process with an empty GPM ends bit-identical to the uninterrupted run); it accepts every registered method
whose optimizer is a plain ``Projected`` and refuses the others with a one-line pointer to
``projected_optimizer_for_trainer``, which accepts every registered method."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments  # noqa: E402

from orthokit.integrations.hf import PROJECTION_FILE, ProjectionCallback, projected_optimizer_for_trainer  # noqa: E402
from orthokit.projection import GPM, PROJECTIONS, ProjectionMethod, WrappedOptimizer  # noqa: E402

VOCAB = 32


def _llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(cfg)


def _old_batches() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 12, (4, 8), generator=g)} for _ in range(2)]


def _dataset() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, VOCAB, (16, 8), generator=g)
    return [{"input_ids": r, "labels": r.clone()} for r in ids]


def _args(out: Path) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(out),
        max_steps=4,
        save_steps=2,
        save_strategy="steps",
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        weight_decay=0.1,
        report_to=[],
        use_cpu=True,
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )


def _gpm(model: nn.Module) -> GPM:
    return GPM(model, threshold=0.99)


def test_resume_restores_memory_bit_identical(tmp_path: Path) -> None:
    model = _llama()
    gpm = _gpm(model)
    gpm.after_task(_old_batches())
    Trainer(
        model=model, args=_args(tmp_path / "a"), train_dataset=_dataset(), callbacks=[ProjectionCallback(gpm)]
    ).train()
    ckpt = tmp_path / "a" / "checkpoint-2"
    assert (ckpt / PROJECTION_FILE).is_file()

    # a fresh process: same initial model, a GPM that has NOT seen task A (empty memory), resume at step 2 from a
    # copy of the checkpoint in its own output_dir (the callback looks in output_dir/checkpoint-<global_step>)
    shutil.copytree(ckpt, tmp_path / "b" / "checkpoint-2")
    model2 = _llama()
    gpm2 = _gpm(model2)
    assert gpm2.memory.is_empty
    Trainer(
        model=model2,
        args=_args(tmp_path / "b"),
        train_dataset=_dataset(),
        callbacks=[ProjectionCallback(gpm2)],
    ).train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-2"))
    for name in gpm.memory.layer_names:
        assert torch.equal(gpm2.memory.basis(name), gpm.memory.basis(name)), name
    rows = gpm.memory.embedding_rows("model.embed_tokens")
    assert torch.equal(gpm2.memory.embedding_rows("model.embed_tokens"), rows)
    for (n, p), q in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(p, q), n
    # the protection was really active: old rows never moved from the initial model
    init = _llama().model.embed_tokens.weight
    assert torch.equal(model2.model.embed_tokens.weight[rows], init[rows])


def test_resume_from_a_checkpoint_outside_output_dir(tmp_path: Path) -> None:
    """``train(resume_from_checkpoint=<another run's folder>)``: transformers does not put the folder in ``args``;
    the callback still restores the memory from it (bit-identical run), and raises when the folder has none."""
    model = _llama()
    gpm = _gpm(model)
    gpm.after_task(_old_batches())
    Trainer(
        model=model, args=_args(tmp_path / "a"), train_dataset=_dataset(), callbacks=[ProjectionCallback(gpm)]
    ).train()
    model2 = _llama()
    gpm2 = _gpm(model2)
    Trainer(
        model=model2,
        args=_args(tmp_path / "b"),
        train_dataset=_dataset(),
        callbacks=[ProjectionCallback(gpm2)],
    ).train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    for (n, p), q in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(p, q), n
    # a checkpoint without the memory: a clear error, not a silently different run
    shutil.copytree(tmp_path / "a" / "checkpoint-2", tmp_path / "bare")
    (tmp_path / "bare" / PROJECTION_FILE).unlink()
    model3 = _llama()
    trainer = Trainer(
        model=model3,
        args=_args(tmp_path / "c"),
        train_dataset=_dataset(),
        callbacks=[ProjectionCallback(_gpm(model3))],
    )
    with pytest.raises(ValueError, match="no orthokit_projection.pt"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "bare"))


def test_resume_with_mismatched_memory_is_a_clear_error(tmp_path: Path) -> None:
    model = _llama()
    gpm = _gpm(model)
    gpm.after_task(_old_batches())
    cb = ProjectionCallback(gpm)
    cb.save_to(tmp_path)
    other = GPM(_llama(), layers=["lm_head"], threshold=0.99)
    with pytest.raises(
        ValueError, match=r"orthokit_projection.pt: the saved projection memory does not fit this GPM"
    ):
        ProjectionCallback(other).load_from(tmp_path)
    assert other.memory.is_empty  # nothing modified
    with pytest.raises(ValueError, match=r"saved by a GPM, this callback holds a SGP"):
        ProjectionCallback(PROJECTIONS.get("sgp")(_llama())).load_from(tmp_path)


def _seq() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5))


def _seq_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(24, 3, generator=g) @ torch.randn(3, 12, generator=g)
    return [
        (x[:12], torch.randint(0, 5, (12,), generator=g)),
        (x[12:], torch.randint(0, 5, (12,), generator=g)),
    ]


@pytest.mark.parametrize("name", PROJECTIONS.names())
def test_every_registered_method(name: str) -> None:
    model = _seq()
    method = PROJECTIONS.get(name)(model)
    if name != "hlop":  # HLOP's Hebbian after_task runs up to 1000 passes; wrap() does not need it
        method.after_task(_seq_batches())
    opt, _ = projected_optimizer_for_trainer(model, method, lr=1e-3, num_training_steps=4)
    assert isinstance(opt, WrappedOptimizer)
    if type(method).wrap is ProjectionMethod.wrap:
        cb = ProjectionCallback(method)
        assert cb.memory is method.memory
    else:  # HLOP / OGPSA: per-step logic in their wrap()
        with pytest.raises(TypeError, match=r"use projected_optimizer_for_trainer\(model, "):
            ProjectionCallback(method)


def test_callback_rejects_non_projection_objects() -> None:
    with pytest.raises(TypeError, match="projection must be a registered projection method object"):
        ProjectionCallback(torch.optim.SGD(_seq().parameters(), lr=0.1))  # type: ignore[arg-type]
