"""One Tune trial: resume from Tune's checkpoint → the foundation Trainer's epoch loop →
`tune.report(metrics, checkpoint=...)` every epoch. No second training loop lives here."""

from __future__ import annotations

import tempfile
from pathlib import Path

import psutil
import torch
from ray import tune

from .. import costs, env, ray_compat
from ..data.store import Dataset
from ..experiment.layout import CHECKPOINT_FILE
from ..spec import AUDIT_KEY, SearchSpec, trial_train_config
from ..trainer import Trainer

# tests: ";"-separated "<kind>:<epoch>:<marker file>", each fired once (by the first trial to get there):
# raise_once raises mid-epoch (Tune retries the trial), oom_once raises an out-of-memory error
FAULTS = {"raise_once": RuntimeError, "oom_once": torch.OutOfMemoryError}


def _fault_hook():
    specs = [(FAULTS[kind], epoch, marker) for kind, epoch, marker in env.faults()]  # $RAYDIGITS_INJECT_FAULT
    if not specs:
        return None

    def hook(ep: int, step: int) -> None:
        for error, epoch, marker in specs:
            if ep == epoch and step == 2 and not marker.exists():
                marker.write_text(tune.get_context().get_trial_name())
                raise error(f"injected fault in epoch {ep}, step {step}")

    return hook


def train_trial(
    config: dict, spec: SearchSpec, data: Dataset, threads: int, data_dir: str, starts: dict[str, str] | None = None
) -> None:
    """`data_dir`: where `data` came from (absolute), recorded in the trial's TrainConfig. `starts`:
    for an audit trial (its config names the stopped trial under AUDIT_KEY), the checkpoint it
    trains on from when Tune has none of its own yet."""
    ray_compat.quiet_checkpoint_lines()  # our epoch line already says a checkpoint was taken
    cfg = trial_train_config(spec, config, data_dir, where=f"trial {tune.get_context().get_trial_name()}")
    trainer = Trainer(cfg, data, default_threads=threads)  # runtime.setup_process: the trial's CPU share
    trainer.step_hook = _fault_hook()
    cost = costs.of_trainer(trainer)  # once per architecture and machine (cached): reported every epoch
    checkpoint = tune.get_checkpoint()
    start = (starts or {}).get(str(config.get(AUDIT_KEY)))
    if not checkpoint and start:
        trainer.resume(start)
        print(f"audit: trial {config[AUDIT_KEY]} continues from its epoch {trainer.epoch} to {cfg.epochs}", flush=True)
    if checkpoint:
        with checkpoint.as_directory() as d:
            trainer.resume(Path(d) / CHECKPOINT_FILE)
        changed = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in trainer.changed_knobs.items())
        print(f"resumed from epoch {trainer.epoch}" + (f" with {changed}" if changed else ""), flush=True)

    def report(metrics: dict, t: Trainer, say: bool = True) -> None:
        if say:
            print(
                f"[{tune.get_context().get_trial_name()}] epoch {metrics['epoch']} "
                f"val_acc {metrics['val_acc']:.4f} train_loss {metrics['train_loss']:.4f} "
                f"lr {metrics['lr']:.2e} {metrics['images_per_s']:.0f} img/s",
                flush=True,
            )
        clean = {k: (float(v) if isinstance(v, (bool, int, float)) and k != "epoch" else v) for k, v in metrics.items()}
        clean["stop_reason"] = t.stop_reason or ""
        clean.update(cost.metrics())  # params, size_mb, mflops, latency_ms (raydigits/costs.py)
        clean["device"] = str(t.device)  # what `launch.py reproduce` compares against (CPU: exactly)
        clean["uss_mb"] = psutil.Process().memory_full_info().uss / 2**20  # memory this trial alone holds
        clean["data_zero_copy"] = float(not data.images["train"].flags.writeable)  # a view of the object store
        if t.stop_reason == "oom":  # no checkpoint of a step that failed half-way
            tune.report(clean)
            return
        with tempfile.TemporaryDirectory() as d:
            t.save(Path(d) / CHECKPOINT_FILE)
            tune.report(clean, checkpoint=tune.Checkpoint.from_directory(d))

    if checkpoint and trainer.history and (trainer.epoch >= cfg.epochs or trainer.stop_reason):
        # It had ended when its driver died (killed after the last checkpoint, before Tune recorded
        # the end). Nothing is left to train, but Tune learns a trial's end only from a report, and
        # storage's result.json may lag the checkpoint by a sync period: report the last epoch
        # again (readers keep an epoch's latest report) so the history ends with it.
        print(f"resumed trial had ended at epoch {trainer.epoch}: its last epoch is reported again", flush=True)
        report(trainer.history[-1], trainer, say=False)
        return
    trainer.fit(report)
