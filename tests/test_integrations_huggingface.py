"""The Hugging Face callback: a real ``Trainer`` on a tiny GPT-2 built from a config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import stepsize_lens
from stepsize_lens.recording.schedules import every

transformers = pytest.importorskip("transformers")

from stepsize_lens.integrations.huggingface import (  # noqa: E402
    StepSizeLensTrainerCallback,
    install,
)

STEPS = 4
ACCUMULATE = 2
LR = 1e-3


class _Recorder(transformers.TrainerCallback):
    """Keeps every logs dict it is shown (it runs after the lens's callback)."""

    def __init__(self) -> None:
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def _trainer(
    tmp_path: Path, callbacks: list, steps: int = STEPS, save_steps: int | None = None
) -> transformers.Trainer:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=40,
        n_positions=12,
        n_embd=16,
        n_layer=2,
        n_head=2,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(config)
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 40, (steps * ACCUMULATE * 2, 12), generator=generator)
    dataset = [{"input_ids": row, "labels": row} for row in tokens]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=steps,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=ACCUMULATE,
        learning_rate=LR,
        lr_scheduler_type="constant",
        max_grad_norm=1e9,  # no clipping: the logged grad_norm is the raw one
        logging_steps=1,
        save_strategy="no" if save_steps is None else "steps",
        save_steps=save_steps or 500,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    return transformers.Trainer(model=model, args=args, train_dataset=dataset, callbacks=callbacks)


def test_trainer_records_a_run(tmp_path: Path) -> None:
    recorder = _Recorder()
    trainer = _trainer(tmp_path, [recorder])
    callback = install(trainer, path=tmp_path / "run.pt", schedule=every(1), label="gpt2")
    trainer.train()

    run = stepsize_lens.load(tmp_path / "run.pt")
    assert run.meta["closed"] and run.label == "gpt2"
    # one record per optimizer update, none for the accumulation micro-steps
    assert list(run.steps) == list(range(1, STEPS + 1))
    model_params = dict(trainer.model.named_parameters())  # tied weights appear once
    assert sorted(run.tensor_names) == sorted(model_params)
    assert "lm_head.weight" in sum(run.params["aliases"], [])  # tied to transformer.wte
    np.testing.assert_allclose(run.group_field("lr"), LR)

    # the lens saw the gradients the Trainer clipped: the total norm matches its grad_norm log
    scalars = run.scalars
    logged = scalars[scalars["name"] == "grad_norm"].set_index("step")["value"]
    assert list(logged.index) == list(range(1, STEPS + 1))
    total = np.sqrt(np.nansum(run.metric("grad_norm").astype(np.float64) ** 2, axis=1))
    np.testing.assert_allclose(total, logged.to_numpy(), rtol=1e-4)
    assert set(scalars["name"]) >= {"loss", "grad_norm", "learning_rate"}

    # the callbacks after it (and the reporters, since installed first) see the key scalars
    seen = [logs for logs in recorder.logs if "stepsize_lens/invariant_fraction" in logs]
    assert len(seen) == STEPS
    assert all("stepsize_lens/weight_norm/group_0" in logs for logs in seen)
    assert all(0 <= logs["stepsize_lens/invariant_fraction"] <= 1 for logs in seen)
    assert callback.lens is not None and not callback.lens._handles


def test_callback_is_a_trainer_callback() -> None:
    callback = StepSizeLensTrainerCallback(path=None, log_scalars=False)
    assert isinstance(callback, transformers.TrainerCallback)
    assert callback.lens is None


@pytest.mark.usefixtures("one_thread")
def test_a_trainer_resumed_from_a_checkpoint_continues_the_run(tmp_path: Path) -> None:
    """``train(resume_from_checkpoint=...)`` restores the global step before ``on_train_begin``:
    the lens continues the run file from there, the schedule keeping its place."""
    stop, end = 20, 40
    first = _trainer(tmp_path, [], steps=stop, save_steps=stop)
    install(first, path=tmp_path / "run.pt", schedule=every(7), label="gpt2")
    first.train()
    assert list(stepsize_lens.load(tmp_path / "run.pt").steps) == [7, 14]

    second = _trainer(tmp_path, [], steps=end)  # a new process, from the step-20 checkpoint
    callback = install(second, path=tmp_path / "run.pt", schedule=every(7), label="gpt2")
    second.train(resume_from_checkpoint=str(tmp_path / "out" / f"checkpoint-{stop}"))
    assert second.state.global_step == end
    run = stepsize_lens.load(tmp_path / "run.pt")
    assert list(run.steps) == [7, 14, 21, 28, 35]
    assert [event["step"] for event in run.events if event["kind"] == "resumed"] == [stop]
    losses, _ = run.scalar("loss")
    assert list(losses) == list(range(1, end + 1))  # the Trainer's logs of both halves
    assert callback.lens is not None and not callback.lens._handles  # closed
