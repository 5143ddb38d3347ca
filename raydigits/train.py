"""`python -m raydigits.train --config FILE.yaml [--set key=value ...] [--out DIR] [--resume CKPT] [--stop-after N]`:
one training run, no Ray. Writes config.yaml, last.pt, best.pt and metrics.csv into the output dir."""
from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import yaml

from .atomic import write_text
from .config import load_config
from .data import ensure_prepared, load_dataset
from .errors import UserError

COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "images_per_s")


def format_epoch(m: dict) -> str:
    flags = " (frozen)" if m.get("frozen") else ""
    flags += " DIVERGED" if m.get("diverged") else ""
    return (f"epoch {m['epoch']:3d}  train_loss {m['train_loss']:.4f}  train_acc {m['train_acc']:.4f}  "
            f"val_loss {m['val_loss']:.4f}  val_acc {m['val_acc']:.4f}  lr {m['lr']:.2e}  "
            f"{m['epoch_time_s']:.1f}s  {m['images_per_s']:.0f} img/s{flags}")


def run(cfg, out_dir: Path, resume: Path | None = None, quiet: bool = False, stop_after: int | None = None):
    from .trainer import Trainer  # torch import kept out of argument parsing
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    data = load_dataset(ensure_prepared(Path(cfg.data_dir)))
    trainer = Trainer(cfg, data)
    if resume:
        trainer.resume(resume)

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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m raydigits.train", description=__doc__)
    p.add_argument("--config", type=Path, default=None, help="TrainConfig YAML (default: all defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable)")
    p.add_argument("--out", type=Path, default=Path("runs/train"), help="output folder")
    p.add_argument("--resume", type=Path, default=None, help="continue from a last.pt checkpoint")
    p.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="stop after epoch N; the lr schedule still spans `epochs` (a trial stopped early, replayed)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    args = p.parse_args(argv)
    if args.stop_after is not None and args.stop_after < 1:
        p.error("--stop-after: must be at least 1")
    try:
        cfg = load_config(args.config, args.overrides)
        trainer = run(cfg, args.out, args.resume, stop_after=args.stop_after)
    except UserError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"best {cfg.monitor} {trainer.best_metric:.4f} at epoch {trainer.best_epoch}; outputs in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
