"""`launch.py reproduce EXPERIMENT [--trial ID] [--out DIR] [--set key=value]`: retrain one trial of a
finished search without Ray and compare its per-epoch validation with what the trial reported.

The trial's TrainConfig comes from its stored config through `spec.trial_train_config`, the function
the trial itself used (same `fixed` values, seed, data folder and thread count), and is written to
`<out>/config.yaml`; the retraining is then exactly `python -m raydigits.train --config
<out>/config.yaml --stop-after N --out <out>` (printed), where N is the number of epochs the trial ran
(a trial stopped early by ASHA stops there; its learning-rate schedule still spans the full epochs).

Determinism: the trainer seeds model init, data order, augmentation, dropout and the precise-BN
sample from `seed` and the epoch, so a CPU trial reproduces bit for bit: its val_acc must be equal
every epoch (val_loss's largest difference is reported). The torch thread count changes CPU results
(reductions split differently), which is why the trial's own count is used. On a GPU (autotuned
cuDNN kernels, atomics) runs differ, and a tolerance in binomial standard errors applies
(`GPU_TOLERANCE_SE`), to be derived from the measured run-to-run spread of one trial on one GPU;
until it is measured a GPU comparison that is not equal every epoch is "not verified", never
"reproduced". Exit status 1 unless it reproduced (not verified included).
PBT trials are refused: their weights came from other trials mid-run."""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from .atomic import write_text
from .config import load_config, parse_overrides
from .errors import UserError
from .experiment import Experiment, Trial
from .spec import POPULATION, trial_train_config

# On a GPU, val_acc must lie within this many binomial standard errors (√(p(1−p)/n), p the recorded
# val_acc, n its validation images; at least one image) of the record every epoch. UNMEASURED: no
# run-to-run spread of the same trial on the same GPU (bench/gpu_check.sh, step 3b) is recorded yet,
# so it is None and a GPU comparison that is not exactly equal says "not verified". Set it from that
# measurement (the largest spread seen, in these units), and say in BENCHMARKS.md where it came from.
GPU_TOLERANCE_SE: float | None = None
OUT_FOLDER = "reproduce"  # <experiment>/reproduce/<trial id>/ by default
RESULT_FILE = "reproduce.json"
OUT_HINT = "give another --out, or add --force to replace it"  # --out holds an earlier run


@dataclass
class Reproduction:
    trial_id: str
    recorded_device: str
    device: str
    command: str
    out_dir: str
    rows: list[dict] = field(default_factory=list)  # epoch, val_n, recorded/reproduced val_acc and val_loss
    tolerance_se: float | None = GPU_TOLERANCE_SE  # on a GPU (None: unmeasured); on the CPU: equal

    @property
    def max_acc_diff(self) -> float:
        return max((_diff(r["recorded_val_acc"], r["reproduced_val_acc"]) for r in self.rows), default=math.inf)

    @property
    def max_loss_diff(self) -> float:
        return max((_diff(r["recorded_val_loss"], r["reproduced_val_loss"]) for r in self.rows), default=math.inf)

    @property
    def on_cpu(self) -> bool:
        """Trained and retrained on the CPU: deterministic, so equal is the only pass."""
        return self.recorded_device == "cpu" and self.device == "cpu"

    @property
    def max_acc_diff_se(self) -> float | None:
        """The largest val_acc difference in binomial standard errors of its epoch (None without val_n)."""
        units = [_se(r) for r in self.rows]
        if not self.rows or None in units:
            return None
        return max(_diff(r["recorded_val_acc"], r["reproduced_val_acc"]) / u for r, u in zip(self.rows, units))

    @property
    def verdict(self) -> str:
        """ "reproduced", "NOT reproduced", or "not verified" (a GPU difference with no measured tolerance)."""
        complete = bool(self.rows) and all(r["reproduced_val_acc"] is not None for r in self.rows)
        if complete and self.max_acc_diff == 0:
            return "reproduced"  # equal needs no tolerance, on any device
        if not complete or self.on_cpu:
            return "NOT reproduced"
        worst = self.max_acc_diff_se
        if self.tolerance_se is None or worst is None:
            return "not verified"
        return "reproduced" if worst <= self.tolerance_se else "NOT reproduced"

    @property
    def reproduced(self) -> bool:
        return self.verdict == "reproduced"

    def table(self) -> str:
        lines = [
            f"{'epoch':>5}  {'val_acc recorded':>16}  {'reproduced':>10}  {'val_loss recorded':>17}  "
            f"{'reproduced':>10}  {'|diff|':>8}"
        ]
        for r in self.rows:
            acc, loss = r["reproduced_val_acc"], r["reproduced_val_loss"]
            lines.append(
                f"{r['epoch']:>5}  {r['recorded_val_acc']:>16.4f}  "
                f"{'-' if acc is None else f'{acc:.4f}':>10}  {r['recorded_val_loss']:>17.6f}  "
                f"{'-' if loss is None else f'{loss:.6f}':>10}  "
                f"{_diff(r['recorded_val_loss'], loss):>8.1e}"
            )
        return "\n".join(lines)


def _se(row: dict) -> float | None:
    """One binomial standard error of the row's recorded val_acc (at least one image); None without val_n."""
    n, p = row.get("val_n"), row["recorded_val_acc"]
    if not n or p is None or not math.isfinite(p):
        return None
    return max(math.sqrt(p * (1 - p) / n), 1 / n)


def _diff(a, b) -> float:
    if a is None or b is None:
        return math.inf
    if math.isnan(a) and math.isnan(b):
        return 0.0
    return abs(a - b)


def recorded_epochs(results: list[dict]) -> list[dict]:
    """The trial's reported epochs in order, the last report of each (a retried trial may report an
    epoch again); an out-of-memory epoch is left out (it reported nothing to compare)."""
    by_epoch = {int(r["epoch"]): r for r in results if "epoch" in r and not r.get("oom")}
    return [by_epoch[e] for e in sorted(by_epoch)]


def recorded_device(spec, epochs: list[dict]) -> str:
    """Where the trial trained: reported since trials report `device`; before that, a trial without
    a GPU share or without CUDA graphs (on by default on CUDA) is taken to have run on the CPU."""
    device = next((r["device"] for r in reversed(epochs) if r.get("device")), None)
    if device:
        return str(device)
    on_gpu = any(r.get("cuda_graphs") for r in epochs) or (
        spec.resources.gpu not in (0, 0.0) and spec.fixed.get("device") != "cpu"
    )
    return "cuda" if on_gpu else "cpu"


def pick_trial(exp: Experiment, trial: str | None) -> Trial:
    """The trial named by `trial` (its id or its name), or the best trial."""
    if trial is None:
        trial = exp.best().trial_id
    found = [t for t in exp.trials if t.trial_id == trial or t.path.name == trial]
    if not found:
        raise UserError(f"--trial {trial}: no such trial (trials: {', '.join(t.trial_id for t in exp.trials)})")
    return found[0]


def reproduce(
    exp: Experiment,
    trial: str | None = None,
    out_dir: Path | None = None,
    overrides: list[str] | None = None,
    quiet: bool = False,
    force: bool = False,
) -> Reproduction:
    from . import train
    from .search.runner import data_dir_of

    spec = exp.spec
    if spec.scheduler.type in POPULATION:
        raise UserError(
            f"{exp.location}: a {spec.scheduler.type} trial continues from other trials' weights "
            "mid-run; it cannot be retrained alone from its config"
        )
    if trial is None and not quiet:
        _say_if_final_is_stale(exp)
    t = pick_trial(exp, trial)
    epochs = recorded_epochs(list(t.results))
    if not epochs:
        raise UserError(f"trial {t.trial_id}: it reported no epoch ({t.outcome}); nothing to reproduce")
    config = epochs[-1].get("config")  # as Tune gave it to the trial (JSON: no table's type coercion)
    if config is None:
        config = dict(t.config)
    run_spec = next(r.spec for r in exp.runs if r.name == t.run)  # its run's (an extension may train longer)
    cfg = trial_train_config(run_spec, config, str(data_dir_of(run_spec)), where=f"trial {t.trial_id}")
    was = recorded_device(spec, epochs)
    extra = parse_overrides(overrides)
    if "device" not in extra and was == "cpu":
        extra["device"] = "cpu"  # the trial saw no GPU; neither does its retraining
    out_dir = _out_dir(exp, t.trial_id, out_dir, force)
    config_file = out_dir / "config.yaml"
    write_text(config_file, yaml.safe_dump({**cfg.model_dump(mode="json"), **extra}, sort_keys=False))
    cfg = load_config(config_file)  # what the printed command reads
    stop_after = int(epochs[-1]["epoch"])
    stop = ["--stop-after", str(stop_after)] if stop_after < cfg.epochs else []
    # --force: once this retraining has run, its folder holds a run that the printed command replaces
    command = shlex.join(
        ["python", "-m", "raydigits.train", "--config", str(config_file), *stop, "--out", str(out_dir), "--force"]
    )
    if not quiet:
        print(f"reproducing trial {t.trial_id} ({stop_after} epochs, recorded on {was}):\n  {command}", flush=True)
    trainer = train.run(cfg, out_dir, quiet=quiet, stop_after=stop_after)
    now = str(trainer.device)
    rows = _compared(epochs, trainer.history)
    result = Reproduction(t.trial_id, was, now, command, str(out_dir), rows)
    _write_result(out_dir, result, extra)
    return result


def _say_if_final_is_stale(exp: Experiment) -> None:
    """reproduce picks the best trial from the trials themselves, never from final/: when final/ is
    incomplete or older than the trials (it may name another winner), it says so."""
    state = exp.final_state()
    if state.problem in ("incomplete", "stale"):
        print(
            f"note: {state.line}; reproducing the best of the {len(exp.trials)} trials as they are now "
            f"(`python launch.py export {exp.location}` rebuilds final/)",
            flush=True,
        )


def _out_dir(exp: Experiment, trial_id: str, out_dir: Path | None, force: bool = False) -> Path:
    """The retraining's folder (made, an earlier retraining's files deleted): `out_dir` (refused when
    it holds an earlier run, unless `force`: it may be the user's own `train` run), else reproduce's
    own folder beside the experiment (for one in remote storage, under ./reproduce/<name>/), one per
    trial, whose earlier retraining is replaced (the same config retrains the same run)."""
    from .train import RUN_FILES, check_out

    if out_dir is None:
        local = exp.location.local
        out_dir = (local / OUT_FOLDER if local is not None else Path(OUT_FOLDER) / exp.name) / trial_id
        replace = True
    else:
        replace = check_out(Path(out_dir), force, hint=OUT_HINT)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (*RUN_FILES, RESULT_FILE) if replace else ():
        (out_dir / name).unlink(missing_ok=True)
    return out_dir


def _write_result(out_dir: Path, result: Reproduction, overrides: dict) -> None:
    summary = {
        **asdict(result),
        "reproduced": result.reproduced,
        "verdict": result.verdict,
        "max_val_acc_diff": result.max_acc_diff,
        "max_val_acc_diff_se": result.max_acc_diff_se,
        "max_val_loss_diff": result.max_loss_diff,
        "overrides": overrides,
    }
    write_text(out_dir / RESULT_FILE, json.dumps(summary, indent=2, default=str))


def _compared(recorded: list[dict], history: list[dict]) -> list[dict]:
    """Per recorded epoch: the recorded and the reproduced validation accuracy and loss."""
    mine = {int(m["epoch"]): m for m in history}
    return [
        {
            "epoch": int(r["epoch"]),
            "val_n": r.get("val_n"),
            "recorded_val_acc": r["val_acc"],
            "reproduced_val_acc": mine.get(int(r["epoch"]), {}).get("val_acc"),
            "recorded_val_loss": r["val_loss"],
            "reproduced_val_loss": mine.get(int(r["epoch"]), {}).get("val_loss"),
        }
        for r in recorded
    ]


def summary(r: Reproduction) -> str:
    return (
        f"{r.table()}\n"
        f"trial {r.trial_id}: {r.verdict} ({rule(r)}); largest val_acc difference {r.max_acc_diff:.2g}"
        f"{'' if r.max_acc_diff_se is None else f' ({r.max_acc_diff_se:.2g} standard errors)'}, "
        f"val_loss {r.max_loss_diff:.2g} (recorded on {r.recorded_device}, retrained on {r.device})\n"
        f"the same run: {r.command}\n"
        f"outputs: {r.out_dir}"
    )


def rule(r: Reproduction) -> str:
    """What the comparison required, in words."""
    if r.on_cpu:
        return "required val_acc equal every epoch (CPU)"
    if r.tolerance_se is None:
        return (
            "on a GPU; no run-to-run tolerance has been measured yet (GPU_TOLERANCE_SE, from "
            "bench/gpu_check.sh), so only val_acc equal every epoch counts as reproduced"
        )
    return f"required val_acc within {r.tolerance_se:g} binomial standard errors every epoch (GPU)"
