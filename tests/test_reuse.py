"""Tune reuses a trial's process for the next trial (runner.py: reuse_actors under every scheduler):
a real local-Ray search of three trials one at a time, where the third repeats the first's config.
They share a process, and the third, trained after two others in that process, reports exactly the
first's metrics (CPU: equal, not close): nothing of one trial (seed, threads, data, caches) leaks
into the next."""

from __future__ import annotations

import pytest
import yaml
from support.helpers import launch, results

pytestmark = pytest.mark.slow

# Grid order: lr 3e-3, then 1e-3 (other weights, another optimiser state), then 3e-3 again; one trial
# at a time so that each next trial can take the process the last one ended in. FIFO: every trial
# runs both epochs. Defaults otherwise (precise BN, augmentation, schedule).
REUSE = {
    "name": "reuse",
    "num_samples": 1,
    "method": "grid",
    "seed": 0,
    "max_concurrent": 1,
    "scheduler": {"type": "fifo", "max_t": 2},
    "resources": {"cpu": 1, "gpu": 0},
    "audit": {"top_k": 0},
    "fixed": {"train_items": 300, "val_items": 200, "img_size": 32, "batch_size": 32},
    "parameters": {"lr": {"values": [3.0e-3, 1.0e-3, 3.0e-3]}},
}
COMPARED = ("val_acc", "val_loss", "train_loss", "train_acc")


def test_a_reused_process_trains_the_next_trial_as_a_fresh_one_would(tmp_path, mnist_dir):
    space = tmp_path / "reuse.yaml"
    space.write_text(yaml.safe_dump(REUSE))
    proc = launch(["--search-space", str(space), "--storage-path", str(tmp_path), "--name", "reuse", "--verbose", "0"])
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    trials = sorted(
        (rows for d in (tmp_path / "reuse").glob("reuse_*") if (rows := results(d))),
        key=lambda rows: rows[0]["trial_id"],  # Tune numbers its trials in the order it made them
    )
    assert [t[0]["config"]["lr"] for t in trials] == [3.0e-3, 1.0e-3, 3.0e-3]
    pids = [{r["pid"] for r in t} for t in trials]
    assert all(len(p) == 1 for p in pids), pids
    # the third trial ran in a process that had trained another trial before: the comparison means something
    assert pids[2] <= pids[0] | pids[1], pids
    assert len(set().union(*pids)) < len(trials), pids
    first, again = trials[0], trials[2]
    assert len(first) == len(again) == 2
    assert [[r[k] for k in COMPARED] for r in again] == [[r[k] for k in COMPARED] for r in first]
    assert trials[1][0]["val_loss"] != first[0]["val_loss"]  # the middle trial trained other weights
