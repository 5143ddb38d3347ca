"""A real two-node Ray cluster on this machine for tests: a head node and a worker node, each a
`ray start --block` process tree of its own. Where the machine allows it (root, `ip netns`), the
worker lives in its own network namespace joined to the head by a veth pair, so the two nodes talk
over a real (virtual) network with different IPs; otherwise both use loopback. Every process started
here is killed on exit, and the namespace is deleted."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class TwoNodeCluster:
    def __init__(self, log_dir: Path, head_cpus: int = 1, worker_cpus: int = 1, extra_env=None, worker: bool = True):
        """`extra_env(cluster) -> dict`: more environment for every node and client, computed once
        the head's IP is known (e.g. an object store's endpoint on the head). `worker=False`: the
        head node alone (a local `ray start --head` cluster)."""
        self.log_dir, self.head_cpus, self.worker_cpus = Path(log_dir), head_cpus, worker_cpus
        self.worker = worker
        self.extra_env = extra_env
        tag = str(os.getpid() % 100000)
        self.ns, self.veth_host, self.veth_ns = f"rdw{tag}", f"rdh{tag}", f"rdn{tag}"
        self.netns = False
        self.head_ip = self.worker_ip = "127.0.0.1"
        self.port = _free_port()
        self.dashboard_port = _free_port()
        self.procs: dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------------ network
    def _setup_netns(self) -> bool:
        if os.geteuid() != 0 or not shutil.which("ip"):
            return False
        octet = 16 + os.getpid() % 200
        head, worker = f"10.231.{octet}.1", f"10.231.{octet}.2"
        try:
            _ip("netns", "add", self.ns)
            _ip("link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_ns)
            _ip("link", "set", self.veth_ns, "netns", self.ns)
            _ip("addr", "add", f"{head}/24", "dev", self.veth_host)
            _ip("link", "set", self.veth_host, "up")
            _ip("-n", self.ns, "addr", "add", f"{worker}/24", "dev", self.veth_ns)
            _ip("-n", self.ns, "link", "set", self.veth_ns, "up")
            _ip("-n", self.ns, "link", "set", "lo", "up")
        except (subprocess.CalledProcessError, OSError):
            self._teardown_netns()
            return False
        self.head_ip, self.worker_ip = head, worker
        return True

    def _teardown_netns(self) -> None:
        subprocess.run(["ip", "link", "del", self.veth_host], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)

    # ------------------------------------------------------------------ nodes
    def _start(self, name: str, args: list[str], prefix: list[str] = ()) -> None:
        log = open(self.log_dir / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen(
            [*prefix, RAY, "start", "--block", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )

    @property
    def env(self) -> dict:
        """For every process that talks to this cluster: token authentication on, as Ray's default."""
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        return {**env, "RAY_AUTH_MODE": "token", **(self.extra_env(self) if self.extra_env else {})}

    def __enter__(self) -> "TwoNodeCluster":
        try:
            self._up()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _up(self) -> None:
        # the token every node and client reads from ~/.ray/auth_token (made once if missing)
        subprocess.run([RAY, "get-auth-token", "--generate"], check=True, capture_output=True, env=self.env)
        self.netns = self.worker and self._setup_netns()
        self._start(
            "head",
            [
                "--head",
                f"--node-ip-address={self.head_ip}",
                f"--port={self.port}",
                f"--num-cpus={self.head_cpus}",
                "--num-gpus=0",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                "--include-dashboard=true",
                # not Ray's fixed 52365: a Ray already running here (a developer's) holds it, and the
                # head's job agent, which `ray job submit` needs, would then never serve
                f"--dashboard-agent-listen-port={_free_port()}",
            ],
        )
        self._wait_for_nodes(1)
        if not self.worker:
            return
        prefix = ["ip", "netns", "exec", self.ns] if self.netns else []
        self._start(
            "worker",
            [
                f"--address={self.address}",
                f"--node-ip-address={self.worker_ip}",
                f"--num-cpus={self.worker_cpus}",
                "--num-gpus=0",
                f"--dashboard-agent-listen-port={_free_port()}",
            ],
            prefix,
        )
        self._wait_for_nodes(2)

    @property
    def address(self) -> str:
        return f"{self.head_ip}:{self.port}"

    def _wait_for_nodes(self, n: int, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"ray {name} exited: {(self.log_dir / f'{name}.log').read_text()[-2000:]}")
            proc = subprocess.run(
                [RAY, "status", f"--address={self.address}"], capture_output=True, text=True, env=self.env
            )
            if proc.returncode == 0 and proc.stdout.count(" node_") >= n:
                return
            time.sleep(2)
        raise RuntimeError(f"the cluster did not reach {n} node(s) in {timeout}s")

    def node_pids(self, name: str) -> set[int]:
        """Every process of one node: `ray start` runs in a session of its own, and its raylet,
        agents and workers stay in that session even when re-parented."""
        sid = self.procs[name].pid
        pids = set()
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                    pids.add(proc.pid)
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        return pids

    def kill(self, name: str) -> None:
        """SIGKILL a whole node at once, as a machine dying would (again, for anything it was
        spawning at that instant)."""
        for _ in range(10):
            pids = self.node_pids(name)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        self.procs[name].wait(timeout=30)

    def __exit__(self, *exc) -> None:
        for name in list(self.procs):
            if self.procs[name].poll() is None:
                self.kill(name)
        if self.netns:
            self._teardown_netns()
        # what `ray stop` would do: forget this cluster, so a later ray.init() does not look for it
        from raydigits.search.runner import RAY_CURRENT_CLUSTER as current

        # (`ray start` may record the node's own IP rather than the one asked for: match the port)
        if current.exists() and current.read_text().strip().rsplit(":", 1)[-1] == str(self.port):
            current.unlink()
