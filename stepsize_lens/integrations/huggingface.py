"""Hugging Face ``transformers.Trainer``: record a run without touching the training loop.

    from stepsize_lens.integrations.huggingface import StepSizeLensTrainerCallback
    trainer = Trainer(model, args, train_dataset=..., callbacks=[StepSizeLensTrainerCallback()])

or ``install(trainer, ...)``, which puts the callback first so the Trainer's reporters
(TensorBoard, W&B, ...) see its scalars. At ``on_train_begin`` the callback attaches a lens to
the torch optimizer inside accelerate's wrapper; the Trainer calls that optimizer's ``step()``
after backward and gradient clipping, so the lens's hooks see the gradient the optimizer uses,
and only on real update steps (not on gradient-accumulation micro-steps). ``on_train_end``
closes the lens, which writes the final run file; under DDP/FSDP2 rank 0 writes. A Trainer
resumed from a checkpoint (``train(resume_from_checkpoint=...)``) starts at its restored
``state.global_step``: the lens continues the run file from there
(`integrations.resume_options`; ``resume=False`` starts a new file, still counting steps from
there). Training that does not continue the file (a fresh start, or ``resume=False``) raises
where ``path`` already holds a run, rather than replace it, unless the callback was given
``overwrite=True``.

``on_log``: the Trainer's numeric logs (loss, learning_rate, grad_norm, epoch...) are stored
in the run's scalars at ``state.global_step``; with ``log_scalars=True`` the key scalars of the
latest record (`integrations.key_scalars`), if it is new since the last log, are added to the
logs, where every callback after this one, and the reporters when installed first, see them.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from stepsize_lens.integrations import PREFIX, key_scalars, resume_options, unwrap_optimizer
from stepsize_lens.recording.lens import Lens, attach


class StepSizeLensTrainerCallback(TrainerCallback):
    """Attach a stepsize_lens lens to the Trainer's optimizer for the length of ``train()``.

    ``path``, ``schedule`` and ``label`` are those of `stepsize_lens.attach`, as are ``options``
    (``delta``, ``flush_every``, ``write``, ``on_record``...). ``record_logs``: copy the
    Trainer's numeric logs into the run; ``log_scalars``: add the lens's key scalars to the
    Trainer's logs; ``resume``: when the Trainer resumes from a checkpoint, continue the run file
    (default) rather than start a new one; ``overwrite``: training that does not continue the
    file replaces a run already at ``path`` (without it, training raises there). After
    training, ``callback.lens`` holds the closed lens.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = "run.pt",
        schedule: Any = None,
        label: str | None = None,
        log_scalars: bool = True,
        record_logs: bool = True,
        resume: bool = True,
        overwrite: bool = False,
        **options: Any,
    ) -> None:
        self.path = path
        self.schedule = schedule
        self.label = label
        self.log_scalars = log_scalars
        self.record_logs = record_logs
        self.resume = resume
        self.overwrite = overwrite
        self.options = options
        self.lens: Lens | None = None
        self._logged_records = 0

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        optimizer: Any = None,
        **kwargs: Any,
    ) -> None:
        if optimizer is None:
            raise RuntimeError("the Trainer passed no optimizer to on_train_begin")
        if self.lens is not None:
            self.lens.close()
        self._logged_records = 0
        self.lens = attach(
            model,
            unwrap_optimizer(optimizer),
            path=self.path,
            schedule=self.schedule,
            label=self.label,
            **{
                **resume_options(self.path, state.global_step, True, self.resume, self.overwrite),
                **self.options,
            },
        )
        self._logged_records = self.lens.num_records  # a resumed run's were logged before

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if self.lens is None or logs is None:
            return
        if self.record_logs:
            numeric = {
                name: float(value)
                for name, value in logs.items()
                if isinstance(value, numbers.Real)
                and not isinstance(value, bool)
                and not name.startswith(PREFIX)
                and math.isfinite(float(value))
            }
            if numeric:
                self.lens.log(step=state.global_step, **numeric)
        if self.log_scalars and self.lens.num_records > self._logged_records:
            self._logged_records = self.lens.num_records
            logs.update(key_scalars(self.lens))

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.lens is not None:
            self.lens.close()


def install(trainer: Trainer, **options: Any) -> StepSizeLensTrainerCallback:
    """Create a `StepSizeLensTrainerCallback` (``options`` as its constructor's) and make it
    the Trainer's first callback, so the reporters that log after it see its key scalars."""
    callback = StepSizeLensTrainerCallback(**options)
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback
