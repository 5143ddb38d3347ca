"""A search submitted with `ray job submit --working-dir` to a local `ray start --head` cluster with
token authentication (Ray >= 2.59 turns it on for local clusters): a client without the token is
refused, the job (the uploaded copy of this tree) attaches to the cluster, runs its trials there and
leaves a complete experiment where --storage-path says. A command given no address attaches to that
running cluster by itself; `--address local` starts a Ray of its own beside it; a record of a
cluster that is not running is never attached to."""

from __future__ import annotations

import json
import re
import socket
import subprocess

import pytest
from support.cluster import RAY, TwoNodeCluster
from support.helpers import REPO, launch_ok

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
        _no_address_attaches_to_the_running_cluster(cluster, storage / "job", mnist_dir)
    exp = Experiment.open(storage / "job")
    (trial,) = exp.trials
    assert trial.outcome == "completed" and trial.epochs == 3
    assert exp.run_record.finished is not None


FOUND = "attached to the Ray cluster `ray start` runs on this machine"


def _no_address_attaches_to_the_running_cluster(cluster, exp, mnist_dir) -> None:
    """While `ray start --head` runs here: a command given no address attaches to it (no Ray start
    of its own), and `--address local` starts its own Ray beside it."""
    from raydigits.search.runner import running_local_cluster

    found = running_local_cluster()  # `ray start` records the node's own IP (maybe not the loopback)
    assert found is not None and found.rsplit(":", 1)[1] == str(cluster.port), found
    # as a user's shell after `ray start --head`: RAY_AUTH_MODE unset, the token where `ray start` keeps it
    env = {k: v for k, v in cluster.env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env.update(RAYDIGITS_DATA=str(mnist_dir), RAYDIGITS_NO_PROGRESS="1")
    out = launch_ok(["export", str(exp)], env=env).stdout
    assert f"{FOUND} ({found}); --address local starts a Ray of our own" in out, out[-3000:]
    assert f"Ray dashboard: http://127.0.0.1:{cluster.dashboard_port}" in out
    assert "ssh -L" not in out  # the cluster is on this machine: no tunnel to suggest
    own = launch_ok(["export", str(exp), "--address", "local"], env=env).stdout
    assert FOUND not in own and "Ray dashboard: http://127.0.0.1:" in own, own[-3000:]
    assert f"Ray dashboard: http://127.0.0.1:{cluster.dashboard_port}" not in own


@pytest.mark.parametrize("record", ["absent", "nothing listens", "not a Ray", "garbage"])
def test_a_record_of_a_cluster_that_is_not_running_here_is_not_attached_to(record, tmp_path, monkeypatch):
    """`ray start` leaves its record behind when the cluster is killed, and the port may be taken
    since: only an address that live Ray processes of this machine name, and that answers, counts."""
    from raydigits.search import runner

    path = tmp_path / "ray_current_cluster"
    monkeypatch.setattr(runner, "RAY_CURRENT_CLUSTER", path)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        if record == "nothing listens":
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                path.write_text(f"127.0.0.1:{s.getsockname()[1]}")
        elif record == "not a Ray":
            path.write_text(f"127.0.0.1:{port}\n")  # something answers, but no Ray process names it
        elif record == "garbage":
            path.write_text("not an address")
        assert runner.running_local_cluster() is None
        # the listener counts once live Ray processes name it; a named address that answers nothing does not
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            named = {f"127.0.0.1:{port}", f"127.0.0.1:{silent.getsockname()[1]}"}
            monkeypatch.setattr(runner.ray_compat, "local_gcs_addresses", lambda: frozenset(named))
            path.write_text(f"127.0.0.1:{silent.getsockname()[1]}")
            assert runner.running_local_cluster() is None
        path.write_text(f"127.0.0.1:{port}\n")
        assert runner.running_local_cluster() == f"127.0.0.1:{port}"


def test_a_record_whose_port_does_not_answer_is_given_up_after_the_probe_time(tmp_path, monkeypatch):
    """A recorded address that live Ray processes name but that does not answer (a port whose
    accept queue is full drops the connection request, as a hung or vanished host does) is taken
    as gone after FOUND_PROBE_S, not waited on for the kernel's connect timeout (minutes)."""
    import time

    from raydigits.search import runner

    path = tmp_path / "ray_current_cluster"
    monkeypatch.setattr(runner, "RAY_CURRENT_CLUSTER", path)
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)  # an accept queue of one, never accepted from
        address = f"127.0.0.1:{full.getsockname()[1]}"
        with socket.create_connection(full.getsockname(), timeout=5):  # fills the queue
            path.write_text(address)
            monkeypatch.setattr(runner.ray_compat, "local_gcs_addresses", lambda: frozenset({address}))
            start = time.monotonic()
            assert runner.running_local_cluster() is None
            assert time.monotonic() - start < runner.FOUND_PROBE_S + 2


def test_a_running_cluster_on_ipv6_is_found_through_its_bracketed_record(tmp_path, monkeypatch):
    """Ray records an IPv6 GCS as `[::1]:PORT`: the brackets are not part of the host to probe."""
    from raydigits.search import runner

    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        listener = socket.socket(socket.AF_INET6)
        listener.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with listener:
        listener.listen()
        recorded = f"[::1]:{listener.getsockname()[1]}"
        path = tmp_path / "ray_current_cluster"
        path.write_text(recorded)
        monkeypatch.setattr(runner, "RAY_CURRENT_CLUSTER", path)
        monkeypatch.setattr(runner.ray_compat, "local_gcs_addresses", lambda: frozenset({recorded}))
        assert runner.running_local_cluster() == recorded
