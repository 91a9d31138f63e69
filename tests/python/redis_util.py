"""A real redis-server (Debian's package) for the Redis engine tests: on a free loopback port, without
persistence (a restart loses everything, as a Redis without AOF/RDB does), stopped with the test."""

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time


def free_port() -> int:
    """A free loopback port below the ephemeral range (so that no outgoing connection of nginx, redis-rs or
    the cluster bus takes it while a server restarts on it), with its +10000 (a cluster node's bus port) also
    below it: 10000-21999."""
    low, _ = (int(x) for x in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    top = min(22000, low - 10000)
    for _ in range(1000):
        port = random.randrange(10000, top)
        if _port_free(port) and _port_free(port + 10000):
            return port
    raise RuntimeError("no free port below the ephemeral range")


def redis_server_bin() -> str:
    path = os.environ.get("REDIS_SERVER_BIN") or shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.isfile(path):
        raise RuntimeError("redis-server not found: apt-get install -y redis-server (or set REDIS_SERVER_BIN)")
    return path


class RedisServer:
    """redis-server on 127.0.0.1:`port` (a free one unless given); `stop()` kills it, `start()` starts a
    fresh empty one on the same port."""

    def __init__(self, port: int = 0, *extra: str):
        self.port = port or free_port()
        self.extra = extra
        self.dir = tempfile.mkdtemp(prefix="tether-redis-")
        self.proc = None
        self.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self):
        self.proc = subprocess.Popen(
            [
                redis_server_bin(),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self.dir,
                *self.extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited at start-up ({self.proc.returncode})")
            if self.ping():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING on port {self.port} within 15 s")

    def command(self, *args: str) -> bytes:
        """One command over RESP2 (inline, for tests): its raw reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            parts = [f"*{len(args)}\r\n".encode()]
            for a in args:
                b = a.encode()
                parts.append(f"${len(b)}\r\n".encode() + b + b"\r\n")
            s.sendall(b"".join(parts))
            s.settimeout(2)
            return s.recv(65536)

    def ping(self) -> bool:
        try:
            return self.command("PING").startswith(b"+PONG")
        except OSError:
            return False

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisCluster:
    """A Redis Cluster of three masters (no replicas) on loopback, created with `redis-cli --cluster create`;
    each node's cluster bus on its port + 10000."""

    def __init__(self, masters: int = 3):
        self.nodes = []
        for _ in range(masters):
            port = free_port()
            self.nodes.append(RedisServer(port, "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                                          "--cluster-node-timeout", "2000"))
        try:
            cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
            subprocess.run(
                [cli, "--cluster", "create", *[n.address for n in self.nodes], "--cluster-replicas", "0", "--cluster-yes"],
                check=True, capture_output=True, timeout=30,
            )
            deadline = time.monotonic() + 20
            while not all(b"cluster_state:ok" in n.command("CLUSTER", "INFO") for n in self.nodes):
                if time.monotonic() > deadline:
                    raise RuntimeError("the Redis Cluster did not reach cluster_state:ok within 20 s")
                time.sleep(0.1)
        except BaseException:
            self.close()
            raise

    def stop(self):
        """Every master down (their data lost: no persistence)."""
        for n in self.nodes:
            n.stop()

    def start(self):
        """Every master up again on its port, with its cluster config (nodes-PORT.conf): the same slots, empty."""
        for n in self.nodes:
            n.start()
        deadline = time.monotonic() + 30
        while not all(b"cluster_state:ok" in n.command("CLUSTER", "INFO") for n in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the restarted Redis Cluster did not reach cluster_state:ok within 30 s")
            time.sleep(0.1)

    def ping(self) -> bool:
        return all(n.ping() for n in self.nodes)

    @property
    def addresses(self) -> list:
        return [f"redis://{n.address}" for n in self.nodes]

    def slots_in_use(self) -> list:
        """Keys per master (DBSIZE), to see that channels spread over the slots."""
        counts = []
        for n in self.nodes:
            reply = n.command("DBSIZE")
            counts.append(int(reply[1:].split(b"\r\n")[0]))
        return counts

    def close(self):
        for n in self.nodes:
            n.close()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
