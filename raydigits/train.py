"""`python -m raydigits.train --config FILE.yaml [--set key=value ...] [--out DIR] [--resume CKPT] [--stop-after N] [--force]`:
one training run, no Ray. Writes config.yaml, last.pt, best.pt and metrics.csv into the output dir.

Everything is validated (config, output folder, data, checkpoint) before the first file is written.
An output folder holding an earlier run is refused unless --force (which deletes that run's files
first) or --resume names a checkpoint inside it (continuing that run)."""

from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path

import yaml

from .atomic import write_text
from .config import check_environment, load_config
from .data import ensure_prepared, load_dataset
from .errors import INTERRUPTED_EXIT, OneLineParser, UserError, run_command
from .storage import path_arg

COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "images_per_s")
RUN_FILES = ("config.yaml", "last.pt", "best.pt", "metrics.csv")


def format_epoch(m: dict) -> str:
    flags = " (frozen)" if m.get("frozen") else ""
    flags += " DIVERGED" if m.get("diverged") else ""
    return (
        f"epoch {m['epoch']:3d}  train_loss {m['train_loss']:.4f}  train_acc {m['train_acc']:.4f}  "
        f"val_loss {m['val_loss']:.4f}  val_acc {m['val_acc']:.4f}  lr {m['lr']:.2e}  "
        f"{m['epoch_time_s']:.1f}s  {m['images_per_s']:.0f} img/s{flags}"
    )


def check_out(out_dir: Path, force: bool = False, resume: Path | None = None, hint: str | None = None) -> bool:
    """Refuse, before anything is written, an output folder that cannot be written or that holds an
    earlier run (unless `force`, or `resume` continues a checkpoint of that run). Returns whether
    an earlier run's files are to be deleted before this one writes (`force`, not continuing).
    `hint`: what the refusal suggests instead (default: train's --out / --force / --resume)."""
    out = Path(out_dir).absolute()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out_dir}: is a file, not a folder")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out {out_dir}: cannot write there ({existing} is not a writable folder)")
    earlier = [f for f in RUN_FILES if (out / f).exists()]
    continuing = resume is not None and Path(resume).resolve().parent == out.resolve()
    if earlier and not force and not continuing:
        hint = hint or (
            f"give another --out, add --force to replace it, or --resume {Path(out_dir) / 'last.pt'} to continue it"
        )
        raise UserError(f"--out {out_dir}: holds an earlier run ({earlier[0]}); {hint}")
    return bool(earlier) and not continuing


def run(
    cfg,
    out_dir: Path,
    resume: Path | None = None,
    quiet: bool = False,
    stop_after: int | None = None,
    replace: bool = False,
):
    """Train `cfg` into `out_dir`. The data, the trainer and the checkpoint to resume are all loaded
    (and so validated) before the first file is written; `replace` deletes an earlier run's files."""
    data = load_dataset(ensure_prepared(Path(cfg.data_dir)))
    from .trainer import Trainer  # torch import kept out of argument parsing and data checks

    trainer = Trainer(cfg, data)
    if resume:
        trainer.resume(resume)
    out_dir.mkdir(parents=True, exist_ok=True)
    if replace:
        for name in RUN_FILES:
            (out_dir / name).unlink(missing_ok=True)
    write_text(out_dir / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

    def on_epoch(m: dict, t: Trainer) -> None:
        if not quiet:
            print(format_epoch(m), flush=True)
        t.save(out_dir / "last.pt")
        if m["improved"]:
            t.save(out_dir / "best.pt")
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(t.history)
        write_text(out_dir / "metrics.csv", buf.getvalue())

    trainer.fit(on_epoch, stop_after)
    if trainer.stop_reason and not quiet:
        print(f"stopped: {trainer.stop_reason}")
    return trainer


def _parser() -> OneLineParser:
    p = OneLineParser(prog="python -m raydigits.train", description=__doc__)
    local = path_arg()  # never type=Path: it folds s3://b into a local s3:/b
    p.add_argument("--config", type=local, default=None, help="TrainConfig YAML (default: all defaults)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable)",
    )
    p.add_argument("--out", type=local, default=Path("runs/train"), help="output folder")
    p.add_argument("--resume", type=local, default=None, help="continue from a last.pt checkpoint")
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="N",
        help="stop after epoch N; the lr schedule still spans `epochs` (a trial stopped early, replayed)",
    )
    p.add_argument("--force", action="store_true", help="replace an earlier run in --out")
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return p


def _train(args) -> int:
    check_environment()
    if args.stop_after is not None and args.stop_after < 1:
        raise UserError(f"--stop-after {args.stop_after}: must be at least 1")
    cfg = load_config(args.config, args.overrides)
    replace = check_out(args.out, args.force, args.resume)
    try:
        trainer = run(cfg, args.out, args.resume, stop_after=args.stop_after, replace=replace)
    except KeyboardInterrupt:
        last = args.out / "last.pt"
        hint = f"; continue with --resume {last}" if last.exists() else ""
        print(f"\ninterrupted{hint}", file=sys.stderr)
        return INTERRUPTED_EXIT
    print(f"best {cfg.monitor} {trainer.best_metric:.4f} at epoch {trainer.best_epoch}; outputs in {args.out}")
    return 0


def main(argv=None) -> int:
    return run_command(lambda: _parser().parse_args(argv), _train)


if __name__ == "__main__":
    raise SystemExit(main())
