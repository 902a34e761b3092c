"""Lightning: record a run from ``Trainer.fit`` without touching the training loop.

    from stepsize_lens.integrations.lightning import StepSizeLensCallback
    trainer = lightning.pytorch.Trainer(callbacks=[StepSizeLensCallback("run.pt")])

At train start the callback attaches one lens per optimizer of the trainer (the first writes
``path``, optimizer i > 0 writes ``<stem>.opt<i><suffix>``); at fit end (or on an exception) it
closes them, which writes the final run file. A trainer resumed from a checkpoint
(``fit(..., ckpt_path=...)``) has restored its global step by then: the lens continues the run
file from that step (`integrations.resume_options`; ``resume=False`` starts a new file, still
counting steps from there). With one optimizer the trainer's global step is the optimizer's;
with several, each resumed run continues from its optimizer's own step count (the Adam
family's ``state["step"]``), and an optimizer without one (SGD) raises asking for ``step=``
(pass it in the callback's options). A fit that does not continue the file (a fresh start, or
``resume=False``) raises where ``path`` already holds a run, rather than replace it, unless
the callback was given ``overwrite=True``. Under DDP or FSDP2
strategies the lens's own rules apply: rank 0 writes, sharded parameters are reduced exactly
(`stepsize_lens.recording.distributed`).

Lightning runs forward and backward *inside* ``optimizer.step(closure)``, after the optimizer's
step pre-hooks; the lens sees the closure and reads the gradients after the step, so the
recorded g is the one the update used (after clipping and AMP unscaling).

With ``log_scalars=True`` the key scalars of each new record (`integrations.key_scalars`: per
set of tensors, the mean angular update, weight norm and η/‖w‖², and the share of tensors
passing the paper's test) go to every logger of the trainer at ``trainer.global_step``; the
training loss of each recorded step goes into the run's scalars.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from stepsize_lens.integrations import key_scalars, resume_options, unwrap_optimizer
from stepsize_lens.recording.lens import Lens, attach


def optimizer_path(path: str | os.PathLike[str] | None, index: int) -> str | None:
    """The run file of the trainer's optimizer ``index``: ``path`` itself for the first one,
    ``<stem>.opt<index><suffix>`` for the others."""
    if path is None or index == 0:
        return None if path is None else os.fspath(path)
    target = Path(path)
    return str(target.with_name(f"{target.stem}.opt{index}{target.suffix}"))


class StepSizeLensCallback(pl.Callback):
    """Attach a stepsize_lens lens to the trainer's optimizer(s) for the length of a fit.

    ``path``, ``schedule`` and ``label`` are those of `stepsize_lens.attach`, as are ``options``
    (``delta``, ``flush_every``, ``write``, ``on_record``...). ``log_scalars``: send the key
    scalars of each record to the trainer's loggers. ``resume``: when the trainer resumes from
    a checkpoint, continue the run file (default) rather than start a new one. ``overwrite``:
    a fit that does not continue the file replaces a run already at ``path`` (without it the
    fit raises there). After the fit, ``callback.lenses`` holds the closed lenses.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = "run.pt",
        schedule: Any = None,
        label: str | None = None,
        log_scalars: bool = True,
        resume: bool = True,
        overwrite: bool = False,
        **options: Any,
    ) -> None:
        super().__init__()
        self.path = path
        self.schedule = schedule
        self.label = label
        self.log_scalars = log_scalars
        self.resume = resume
        self.overwrite = overwrite
        self.options = options
        self.lenses: list[Lens] = []
        self._by_optimizer: dict[int, Lens] = {}
        self._logged_records: dict[int, int] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()
        self.lenses, self._by_optimizer, self._logged_records = [], {}, {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # here, unlike at fit start, a checkpoint's global step has been restored
        self._close()
        self.lenses, self._by_optimizer, self._logged_records = [], {}, {}
        single = len(trainer.optimizers) == 1
        for index, wrapped in enumerate(trainer.optimizers):
            optimizer = unwrap_optimizer(wrapped)
            path = optimizer_path(self.path, index)
            lens = attach(
                pl_module,
                optimizer,
                path=path,
                schedule=self.schedule,
                label=self.label,
                **{
                    **resume_options(
                        path, trainer.global_step, single, self.resume, self.overwrite
                    ),
                    **self.options,
                },
            )
            self.lenses.append(lens)
            self._by_optimizer[id(optimizer)] = lens
            self._logged_records[id(lens)] = lens.num_records  # a resumed run's are logged

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        for lens in self.lenses:
            if lens.num_records == self._logged_records[id(lens)]:
                continue  # nothing recorded this batch: costs nothing
            self._logged_records[id(lens)] = lens.num_records
            loss = _loss_of(outputs)
            if loss is not None:
                lens.log(loss=loss)
            if self.log_scalars and trainer.loggers:
                scalars = key_scalars(lens)
                if len(self.lenses) > 1:
                    index = self.lenses.index(lens)
                    scalars = {f"{name}/opt{index}": value for name, value in scalars.items()}
                for logger in trainer.loggers:
                    logger.log_metrics(scalars, step=trainer.global_step)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._close()  # keep what was recorded up to the failure

    def _close(self) -> None:
        for lens in self.lenses:
            lens.close()


def _loss_of(outputs: Any) -> float | None:
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        return float(loss.detach())
    return None
