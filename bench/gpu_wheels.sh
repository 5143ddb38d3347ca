#!/usr/bin/env bash
# Wheels (CPython 3.12, manylinux x86_64) for what the GPU image lacks, into .whl/ (git-ignored).
# The image already has torch, torchvision, numpy, pandas, pyarrow, scikit-learn, opencv, matplotlib,
# psutil, pyyaml, tqdm, tensorboard. Not yet exercised on a device (no lease so far): if an import
# fails there, add the missing name here.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
plat="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any"
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat -d .whl \
  ray==2.60.0 optuna pytorch-optimizer pydantic pydantic-core annotated-types typing-inspection \
  colorlog alembic sqlalchemy mako greenlet msgpack aiohttp_cors opencensus opencensus-context \
  prometheus-client py-spy smart-open colorful virtualenv distlib platformdirs filelock \
  grpcio protobuf click jsonschema referencing rpds-py jsonschema-specifications
