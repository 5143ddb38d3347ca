"""GPU paths (skipped without CUDA; run by bench/gpu_check.sh on a lent GPU machine), each with the
product's defaults unless it is about one knob: AMP bf16 (CUDA graphs) and fp16 (GradScaler, eager)
learn and validate honestly; graphs and eager agree; a trial that runs out of memory ends as `oom`;
a search packs trials onto a GPU by measured memory (`gpu: auto`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from support.helpers import REPO, results

from raydigits.config import make_config
from raydigits.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_trains_on_cuda_with_defaults(amp, mnist):
    t = Trainer(
        make_config({"device": "cuda", "amp": amp, "train_items": 20_000, "val_items": 2000, "epochs": 1}), mnist
    )
    assert t.scaler.is_enabled() == (amp == "fp16")
    assert t.amp_dtype == (torch.bfloat16 if amp == "bf16" else torch.float16)
    assert (t.graph_blocker is None) == (amp == "bf16"), t.graph_blocker
    h = t.fit()
    assert all(m["cuda_graphs"] == (amp == "bf16") for m in h)
    assert all(torch.isfinite(torch.tensor(m["train_loss"])) for m in h) and not t.stop_reason
    assert h[-1]["val_acc"] >= 0.9, h
    assert h[0]["val_acc"] >= h[0]["train_acc"] - 0.05, h  # precise BN: epoch-1 validation means something
    p = t.predict(mnist.images["val"][:64])
    assert p.shape == (64, 10)


def test_graphs_and_eager_learn_alike(mnist):
    runs = {}
    for graphs in (True, False):
        t = Trainer(
            make_config(
                {"device": "cuda", "train_items": 20_000, "val_items": 2000, "epochs": 1, "cuda_graphs": graphs}
            ),
            mnist,
        )
        runs[graphs] = t.fit()
        assert (t.graph_blocker is None) == graphs
    g, e = runs[True][-1], runs[False][-1]
    assert abs(g["val_acc"] - e["val_acc"]) < 0.03, (g, e)
    assert abs(g["train_loss"] - e["train_loss"]) < 0.1 * e["train_loss"] + 0.02, (g, e)


def test_out_of_memory_ends_the_run_cleanly(mnist, capsys):
    try:
        t = Trainer(
            make_config(
                {
                    "device": "cuda",
                    "train_items": 4096,
                    "val_items": 512,
                    "epochs": 2,
                    "img_size": 512,
                    "batch_size": 2048,
                    "gpu_memory_fraction": 0.01,
                }
            ),
            mnist,
        )
        h = t.fit()
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert t.stop_reason == "oom" and h[-1]["oom"] and len(h) == 1
    assert "out of memory in epoch 1" in capsys.readouterr().out


def test_search_packs_trials_by_measured_memory(tmp_path, mnist_dir):
    proc = subprocess.run(
        [
            sys.executable,
            "launch.py",
            "--search-space",
            "smoke",
            "--gpus-per-trial",
            "auto",
            "--cpus-per-trial",
            "2",
            "--max-concurrent",
            "6",
            "--storage-path",
            str(tmp_path),
            "--name",
            "gpu_auto",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "RAYDIGITS_NO_PROGRESS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = re.search(r"gpu: auto → (\d+) trials per GPU", proc.stdout)
    assert m and int(m.group(1)) >= 2, proc.stdout[-3000:]
    exp = tmp_path / "gpu_auto"
    saved = (exp / "raydigits_search.yaml").read_text()
    assert "gpu: auto" not in saved and "gpu_memory_fraction" in saved  # resume reuses the measured share
    metrics = json.loads((exp / "final" / "metrics.json").read_text())
    assert metrics["n_trials"] == 6 and metrics["test_accuracy"] > 0.5 and metrics["n_oom"] == 0
    spans = [
        (r[0]["timestamp"] - r[0]["time_this_iter_s"], r[-1]["timestamp"])
        for r in (results(d) for d in exp.glob("smoke_*"))
        if r
    ]
    overlap = max(sum(a <= t < b for a, b in spans) for t, _ in spans)
    assert overlap >= 2, spans  # trials really shared the GPU
    assert all(r["cuda_graphs"] for d in exp.glob("smoke_*") for r in results(d))
