"""GPU paths (skipped without CUDA; run by bench/gpu_check.sh on a lent GPU machine): AMP bf16 and
fp16 (with a GradScaler) train and stay finite, and a search packs trials onto fractional GPUs."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from raydigits.trainer import Trainer

from conftest import REPO, tiny_cfg

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_trains_on_cuda(amp, small_mnist):
    t = Trainer(tiny_cfg(device="cuda", amp=amp, epochs=2, lr=3e-3, clip_grad_norm=1.0), small_mnist)
    assert t.scaler.is_enabled() == (amp == "fp16")
    assert t.amp_dtype == (torch.bfloat16 if amp == "bf16" else torch.float16)
    h = t.fit()
    assert all(torch.isfinite(torch.tensor(m["train_loss"])) for m in h)
    assert h[-1]["val_acc"] > 0.3 and not t.stop_reason
    p = t.predict(small_mnist.images["val"][:64])
    assert p.shape == (64, 10)


def test_search_with_fractional_gpus(tmp_path, mnist_dir):
    proc = subprocess.run([sys.executable, "launch.py", "--search-space", "smoke", "--gpus-per-trial", "0.25",
                           "--max-concurrent", "4", "--storage-path", str(tmp_path), "--name", "gpu_smoke"],
                          cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "RAYDIGITS_NO_PROGRESS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "gpu_smoke" / "final" / "metrics.json").read_text())
    assert metrics["n_trials"] == 6 and metrics["test_accuracy"] > 0.5
