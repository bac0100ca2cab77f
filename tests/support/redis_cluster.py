"""A real Redis Cluster for the tests: 3 masters and 3 replicas of ``redis-server
--cluster-enabled yes`` on loopback ports, each in its own temporary directory.

Built with ``redis-cli --cluster create … --cluster-replicas 1``, as an operator
would. ``cluster-node-timeout`` is short (``NODE_TIMEOUT_MS``) so a killed master's
replica is promoted in about two seconds. The faults the tests need: SIGKILL a
node, start it again on the same port and directory (it rejoins from its
``nodes.conf``, as a replica once its replica was promoted), and move slots
between masters with ``redis-cli --cluster reshard``.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.support.redis_server import REDIS_SERVER

__all__ = ["NODE_TIMEOUT_MS", "REDIS_CLI", "RedisCluster"]

REDIS_CLI = shutil.which("redis-cli")
NODE_TIMEOUT_MS = 1000
READY_TIMEOUT_SECONDS = 30.0
NODES = 6
CLUSTER_BUS_OFFSET = 10_000  # Redis's cluster bus listens on port + 10000


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    """Ports whose cluster-bus twin (port + 10000) is free too: below the ephemeral range."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(20_000, 30_000)
        if port not in ports and _free(port) and _free(port + CLUSTER_BUS_OFFSET):
            ports.append(port)
    return ports


class RedisCluster:
    def __init__(self) -> None:
        if REDIS_SERVER is None or REDIS_CLI is None:
            raise RuntimeError("redis-server and redis-cli are not installed")
        self.ports = _free_ports(NODES)
        self.directory = Path(tempfile.mkdtemp(prefix="herald-cluster-"))
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """``redis+cluster://`` with every node as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def seed_url(self, count: int = 1) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:count])

    # --- lifecycle -------------------------------------------------------

    def start(self) -> RedisCluster:
        try:
            for port in self.ports:
                self.start_node(port)
            for port in self.ports:
                self._wait_ping(port)
            nodes = [f"127.0.0.1:{port}" for port in self.ports]
            assert REDIS_CLI is not None
            create = ["--cluster", "create", *nodes, "--cluster-replicas", "1", "--cluster-yes"]
            subprocess.run(
                [REDIS_CLI, *create],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=READY_TIMEOUT_SECONDS,
            )
            self.wait_ok()
        except BaseException:
            # A fixture that fails before it yields is never torn down: the nodes
            # already started would outlive the test run.
            self.close()
            raise
        return self

    def start_node(self, port: int) -> None:
        assert REDIS_SERVER is not None
        directory = self.directory / str(port)
        directory.mkdir(exist_ok=True)
        argv = [
            REDIS_SERVER,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(directory),
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
        ]  # fmt: skip
        self.processes[port] = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def _wait_ping(self, port: int) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while True:
            try:
                with redis.Redis(port=port, socket_connect_timeout=0.2) as client:
                    client.ping()
                return
            except redis.exceptions.RedisError:
                if time.monotonic() > deadline or self.processes[port].poll() is not None:
                    raise RuntimeError(f"redis-server on {port} did not start") from None
                time.sleep(0.05)

    def wait_ok(self, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        """Until every live node says ``cluster_state:ok`` and agrees on 3 masters with slots."""
        deadline = time.monotonic() + timeout
        while True:
            if all(self._node_ok(port) for port in self.live_ports()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def _node_ok(self, port: int) -> bool:
        try:
            with redis.Redis(port=port, socket_timeout=1) as client:
                info = client.execute_command("CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                if "cluster_state:ok" not in text:
                    return False
                masters = [n for n in self._nodes(client) if "master" in n[2] and len(n) > 8]
                if len(masters) != 3:
                    return False
                replication = client.info("replication")
                # A replica still in its first sync would not hold what its master acked.
                return bool(
                    replication.get("role") == "master"
                    or (
                        replication.get("master_link_status") == "up"
                        and replication.get("master_sync_in_progress") == 0
                    )
                )
        except redis.exceptions.RedisError:
            return False

    @staticmethod
    def _nodes(client: redis.Redis) -> list[list[str]]:
        raw = client.execute_command("CLUSTER", "NODES")  # type: ignore[no-untyped-call]
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return [line.split() for line in text.splitlines() if line.strip()]

    def live_ports(self) -> list[int]:
        return [p for p, process in self.processes.items() if process.poll() is None]

    def close(self) -> None:
        for port in list(self.processes):
            self.kill(port)
        shutil.rmtree(self.directory, ignore_errors=True)

    # --- topology and faults ---------------------------------------------

    def masters(self) -> list[int]:
        """Ports of the masters serving slots, as a live node sees them."""
        for port in self.live_ports():
            try:
                with redis.Redis(port=port, socket_timeout=1) as client:
                    nodes = self._nodes(client)
            except redis.exceptions.RedisError:
                continue
            return sorted(
                int(n[1].split("@")[0].rsplit(":", 1)[1])
                for n in nodes
                if "master" in n[2] and "fail" not in n[2] and len(n) > 8
            )
        raise RuntimeError("no live node answers")

    def master_of(self, key: str) -> int:
        """The port of the master that serves ``key``'s slot."""
        port = self.live_ports()[0]
        with redis.Redis(port=port, socket_timeout=1) as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        raise RuntimeError(f"no master serves {key!r}")

    def node_id(self, port: int) -> str:
        with redis.Redis(port=port, socket_timeout=1) as client:
            return str(client.execute_command("CLUSTER", "MYID").decode())

    def kill(self, port: int) -> None:
        """SIGKILL one node, as a crash would."""
        process = self.processes.get(port)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def restart(self, port: int) -> None:
        """Start a killed node again: it rejoins from its nodes.conf (as a replica once its
        replica was promoted)."""
        self.start_node(port)
        self._wait_ping(port)

    def wait_promoted(self, killed: int, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        """Until the cluster serves every slot again without the killed master."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                masters = self.masters()
                if (
                    killed not in masters
                    and len(masters) == 3
                    and all(self._state_ok(p) for p in self.live_ports())
                ):
                    return
            except RuntimeError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("no replica was promoted in time")
            time.sleep(0.05)

    @staticmethod
    def _state_ok(port: int) -> bool:
        try:
            with redis.Redis(port=port, socket_timeout=1) as client:
                info = client.execute_command("CLUSTER", "INFO")
        except redis.exceptions.RedisError:
            return False
        return b"cluster_state:ok" in info

    def slot_offset(self, key: str) -> tuple[int, int]:
        """``key``'s slot and how many slots of its master's range come before it, plus one:
        how many slots ``redis-cli --cluster reshard`` must move (it takes a master's
        slots from the lowest) to move this one."""
        port = self.live_ports()[0]
        with redis.Redis(port=port, socket_timeout=1) as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return slot, slot - start + 1
        raise RuntimeError(f"no master serves {key!r}")

    def reshard(self, key: str) -> int:
        """Move the slot of ``key`` to another master with ``redis-cli --cluster reshard``
        (with the slots before it in its master's range); returns the new master's port."""
        source = self.master_of(key)
        target = next(port for port in self.masters() if port != source)
        _, count = self.slot_offset(key)
        self.reshard_with_cli(source, target, count)
        return target

    def reshard_with_cli(self, source: int, target: int, slots: int) -> None:
        """``redis-cli --cluster reshard`` moving ``slots`` slots from one master to another."""
        assert REDIS_CLI is not None
        subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "reshard",
                f"127.0.0.1:{self.live_ports()[0]}",
                "--cluster-from",
                self.node_id(source),
                "--cluster-to",
                self.node_id(target),
                "--cluster-slots",
                str(slots),
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
        )
        self.wait_ok()
