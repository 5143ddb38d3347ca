"""A search submitted with `ray job submit --working-dir` to a local `ray start --head` cluster with
token authentication (Ray >= 2.59 turns it on for local clusters): a client without the token is
refused, the job (the uploaded copy of this tree) attaches to the cluster, runs its trials there and
leaves a complete experiment where --storage-path says."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from support.cluster import RAY, TwoNodeCluster
from support.helpers import REPO

pytestmark = pytest.mark.slow


def test_a_search_submitted_as_a_ray_job_to_a_token_auth_cluster(tmp_path, mnist_dir):
    from raydigits.experiment import Experiment

    storage = tmp_path / "results"
    with TwoNodeCluster(tmp_path, head_cpus=2, worker=False) as cluster:
        url = f"http://127.0.0.1:{cluster.dashboard_port}"
        wrong = {**cluster.env, "RAY_AUTH_TOKEN": "0" * 32}
        refused = subprocess.run(
            [RAY, "job", "list", "--address", url], env=wrong, capture_output=True, text=True, timeout=300
        )
        assert refused.returncode != 0, refused.stdout[-2000:]
        assert re.search(r"401|[Uu]nauthori[sz]ed|[Ii]nvalid.*token", refused.stdout + refused.stderr)
        runtime_env = {"env_vars": {"RAYDIGITS_DATA": str(mnist_dir), "RAYDIGITS_NO_PROGRESS": "1"}}
        search = "python launch.py --search-space search_spaces/smoke.yaml --num-samples 1 --set train_items=300 "
        search += f"--set val_items=200 --storage-path {storage} --name job --no-final --verbose 0"
        submit = [RAY, "job", "submit", "--address", url, "--working-dir", str(REPO)]
        job = subprocess.run(
            [*submit, "--runtime-env-json", json.dumps(runtime_env), "--", *search.split()],
            env=cluster.env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        out = job.stdout + job.stderr
        assert job.returncode == 0, out[-4000:]
        assert re.search(r"Job '\S+' succeeded", out), out[-4000:]
        assert "search finished in" in out and "remote cluster: ssh -L" in out  # attached, not a Ray of its own
    exp = Experiment.open(storage / "job")
    (trial,) = exp.trials
    assert trial.outcome == "completed" and trial.epochs == 3
    assert exp.run_record.finished is not None
