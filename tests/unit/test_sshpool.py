"""clusterkit.sshpool against a real SSH server in this process (paramiko's server side).

The cluster's trust is the real one: keys from ``ssh-keygen``, known_hosts and ssh_config
rendered by ``ClusterTrust.write``; only a ``Port`` line is added for the test server. The
server runs what it is asked in a local ``sh``, and relays ``direct-tcpip`` channels (what
``ssh -W`` opens through a gateway) back to itself, recording where they were meant to go.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
import pytest
from paramiko.common import (
    AUTH_FAILED,
    AUTH_SUCCESSFUL,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_SUCCEEDED,
)

from clusterkit.sshpool import CommandTimeout, HostKeyRejected, NodeUnreachable, Pool
from clusterkit.trust import ClusterTrust, TrustedNode, keygen, public_key

HEAD = "pk-head"
COMPUTE = "compute-st-1"


@dataclass
class Seen:
    """What the server saw."""

    connections: int = 0
    logins: list[str] = field(default_factory=list)  # users whose key was accepted
    commands: list[str] = field(default_factory=list)
    relayed: list[tuple[str, int]] = field(default_factory=list)  # direct-tcpip destinations


class _Interface(paramiko.ServerInterface):
    def __init__(self, user_key: paramiko.PKey, seen: Seen) -> None:
        self.user_key = user_key
        self.seen = seen
        self.tunnels: set[int] = set()

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if username == "root" and key == self.user_key:
            self.seen.logins.append(username)
            return AUTH_SUCCESSFUL
        return AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return OPEN_SUCCEEDED
        return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_direct_tcpip_request(
        self, chanid: int, origin: tuple[str, int], destination: tuple[str, int]
    ) -> int:
        self.seen.relayed.append((destination[0], destination[1]))
        self.tunnels.add(chanid)
        return OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        self.seen.commands.append(command.decode())
        threading.Thread(target=_execute, args=(channel, command.decode()), daemon=True).start()
        return True


def _execute(channel: paramiko.Channel, command: str) -> None:
    done = subprocess.run(["sh", "-c", command], capture_output=True, timeout=30, check=False)
    try:
        channel.sendall(done.stdout)
        channel.sendall_stderr(done.stderr)
        channel.send_exit_status(done.returncode)
        # EOF, not close: this thread may run before the transport thread has sent the
        # exec request's reply, and a close ahead of it fails the client's exec_command
        # ("Channel closed."). The client closes the channel once it has the exit status.
        channel.shutdown_write()
    except (OSError, EOFError, paramiko.SSHException):
        pass  # the client went away first (a command stopped at its timeout)


def _pump(a: paramiko.Channel, b: socket.socket) -> None:
    def copy(read: object, write: object) -> None:
        try:
            while data := read():  # type: ignore[operator]
                write(data)  # type: ignore[operator]
        except (OSError, EOFError):
            pass
        a.close()
        b.close()

    threading.Thread(target=copy, args=(lambda: a.recv(65536), b.sendall), daemon=True).start()
    threading.Thread(target=copy, args=(lambda: b.recv(65536), a.sendall), daemon=True).start()


class Server:
    """An SSH server on 127.0.0.1 with one host key, accepting the cluster's user key."""

    def __init__(self, host_key: paramiko.PKey, user_key: paramiko.PKey) -> None:
        self.host_key = host_key
        self.user_key = user_key
        self.seen = Seen()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.transports: list[paramiko.Transport] = []
        self.channels: list[paramiko.Channel] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.seen.connections += 1
            threading.Thread(target=self._session, args=(sock,), daemon=True).start()

    def _session(self, sock: socket.socket) -> None:
        transport = paramiko.Transport(sock)
        self.transports.append(transport)
        transport.add_server_key(self.host_key)
        interface = _Interface(self.user_key, self.seen)
        try:
            transport.start_server(server=interface)
        except (paramiko.SSHException, EOFError, OSError):
            return
        while transport.is_active():
            channel = transport.accept(0.5)
            if channel is None:
                continue
            self.channels.append(channel)  # paramiko closes a channel nobody holds
            if channel.chanid in interface.tunnels:
                _pump(channel, socket.create_connection(("127.0.0.1", self.port)))

    def open_transports(self) -> int:
        return sum(t.is_active() for t in self.transports)

    def stop(self) -> None:
        self.listener.close()
        for transport in self.transports:
            transport.close()


@dataclass
class Cluster:
    trust: ClusterTrust
    server: Server
    host_key: Path
    other_key: Path  # a host key the cluster does not trust

    def write(self, nodes: list[TrustedNode], port: int | None = None, extra: str = "") -> None:
        """The cluster's own known_hosts and ssh_config for ``nodes``, every node on the test
        server's port (or ``port``), then ``extra`` ssh_config lines."""
        self.trust.write(nodes)
        blocks = "".join(f"\nHost {n.name}\n    Port {port or self.server.port}\n" for n in nodes)
        with open(self.trust.ssh_config, "a", encoding="utf-8") as fh:
            fh.write(blocks + extra)

    def node(self, name: str = HEAD, key: Path | None = None, **kw: str) -> TrustedNode:
        return TrustedNode(
            name, kw.pop("address", "127.0.0.1"), public_key(key or self.host_key), **kw
        )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    trust = ClusterTrust("pk", tmp_path / "pk")
    trust.ensure_user_key()
    host_key, other_key = tmp_path / "keys" / "host", tmp_path / "keys" / "other"
    keygen(host_key, HEAD)
    keygen(other_key, "other")
    server = Server(paramiko.PKey.from_path(host_key), paramiko.PKey.from_path(trust.user_key))
    found = Cluster(trust, server, host_key, other_key)
    found.write([found.node()])
    yield found
    server.stop()


def test_a_command_gives_its_exit_status_and_both_outputs(cluster: Cluster) -> None:
    with Pool(cluster.trust) as pool:
        rc, out, err = pool.run(HEAD, ["sh", "-c", "echo 'a b'; echo oops >&2; exit 3"], 10)
    assert (rc, out, err) == (3, "a b\n", "oops\n")
    assert cluster.server.seen.commands == ["sh -c 'echo '\"'\"'a b'\"'\"'; echo oops >&2; exit 3'"]


def test_large_outputs_on_both_streams_arrive_whole(cluster: Cluster) -> None:
    script = "head -c 3000000 /dev/zero | tr '\\0' o; head -c 3000000 /dev/zero | tr '\\0' e >&2"
    with Pool(cluster.trust) as pool:
        rc, out, err = pool.run(HEAD, ["sh", "-c", script], 30)
    assert (rc, len(out), len(err)) == (0, 3000000, 3000000)


def test_commands_on_a_node_share_one_connection_until_close(cluster: Cluster) -> None:
    pool = Pool(cluster.trust)
    threads = [threading.Thread(target=pool.run, args=(HEAD, ["true"], 10)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert pool.run(HEAD, ["echo", "again"], 10) == (0, "again\n", "")
    assert cluster.server.seen.connections == 1
    assert cluster.server.seen.logins == ["root"]
    assert len(cluster.server.seen.commands) == 5
    pool.close()
    deadline = time.monotonic() + 5
    while cluster.server.open_transports() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cluster.server.open_transports() == 0
    with pytest.raises(NodeUnreachable, match="pool is closed"):
        pool.run(HEAD, ["true"], 10)


def test_a_dropped_connection_is_dialled_again_before_the_next_command(
    cluster: Cluster,
) -> None:
    with Pool(cluster.trust) as pool:
        pool.run(HEAD, ["true"], 10)
        cluster.server.transports[0].close()  # the node restarted its sshd, say
        time.sleep(0.2)
        assert pool.run(HEAD, ["echo", "back"], 10) == (0, "back\n", "")
    assert cluster.server.seen.connections == 2


def test_a_host_key_other_than_the_clusters_is_refused_before_logging_in(
    cluster: Cluster,
) -> None:
    cluster.write([cluster.node(key=cluster.other_key)])  # known_hosts: another key
    with Pool(cluster.trust) as pool, pytest.raises(HostKeyRejected) as caught:
        pool.run(HEAD, ["true"], 10)
    message = str(caught.value)
    assert message.startswith(f"SSH to {HEAD} failed: host key mismatch: 127.0.0.1 offered ")
    assert str(cluster.trust.known_hosts) in message and "\n" not in message
    assert caught.value.node == HEAD
    assert cluster.server.seen.logins == [] and cluster.server.seen.commands == []


def test_a_node_without_a_host_key_in_known_hosts_is_refused(cluster: Cluster) -> None:
    extra = f"\nHost {HEAD}\n    HostName 127.0.0.1\n    Port {cluster.server.port}\n"
    cluster.write([cluster.node(COMPUTE)], extra=extra)  # known_hosts knows only COMPUTE
    with Pool(cluster.trust) as pool, pytest.raises(HostKeyRejected, match="no host key for"):
        pool.run(HEAD, ["true"], 10)
    assert cluster.server.seen.logins == []


def test_the_key_is_checked_under_the_nodes_alias_not_the_address_dialled(
    cluster: Cluster,
) -> None:
    # known_hosts has the right key for 127.0.0.1 but, under the alias HEAD, another one.
    cluster.write([cluster.node(key=cluster.other_key, address="127.0.0.1")])
    with open(cluster.trust.known_hosts, "a", encoding="utf-8") as fh:
        fh.write(f"127.0.0.1 {public_key(cluster.host_key)}\n")
    with Pool(cluster.trust) as pool, pytest.raises(HostKeyRejected):
        pool.run(HEAD, ["true"], 10)


def test_a_dead_node_gives_one_clear_line_naming_it(cluster: Cluster) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        free = probe.getsockname()[1]  # nothing listens there once closed
    cluster.write([cluster.node()], port=free)
    start = time.monotonic()
    with Pool(cluster.trust) as pool, pytest.raises(NodeUnreachable) as caught:
        pool.run(HEAD, ["true"], 10)
    assert time.monotonic() - start < 3
    assert str(caught.value) == (
        f"SSH to {HEAD} failed: cannot connect to 127.0.0.1:{free}: Connection refused"
    )


def test_missing_trust_files_are_named(tmp_path: Path) -> None:
    trust = ClusterTrust("pk", tmp_path)
    with Pool(trust) as pool, pytest.raises(NodeUnreachable) as caught:
        pool.run(HEAD, ["true"], 10)
    assert str(caught.value).startswith(f"SSH to {HEAD} failed: cannot read {trust.ssh_config}")


def test_a_command_past_its_timeout_is_stopped_and_the_connection_kept(
    cluster: Cluster,
) -> None:
    with Pool(cluster.trust) as pool:
        start = time.monotonic()
        with pytest.raises(CommandTimeout) as caught:
            pool.run(HEAD, ["sleep", "3"], 0.5)
        assert time.monotonic() - start < 2
        assert str(caught.value) == f"{HEAD}: `sleep 3` did not finish within 0.5s"
        assert pool.run(HEAD, ["true"], 10)[0] == 0
    assert cluster.server.seen.connections == 1


def test_a_node_behind_the_gateway_is_reached_through_its_proxy_command(
    cluster: Cluster,
) -> None:
    # As on aws: the head has a public address; COMPUTE's private one (TEST-NET-1, never
    # routed) is reached by the rendered ProxyCommand, OpenSSH's `ssh -W` through the head.
    head = cluster.node(public_address="127.0.0.1")
    compute = cluster.node(COMPUTE, address="192.0.2.7")
    cluster.trust.write([head, compute])
    with open(cluster.trust.ssh_config, "a", encoding="utf-8") as fh:
        fh.write(f"\nHost {HEAD}\n    Port {cluster.server.port}\n")
    assert "ProxyCommand ssh -F" in cluster.trust.ssh_config.read_text()
    with Pool(cluster.trust) as pool:
        assert pool.run(COMPUTE, ["echo", "hi"], 20) == (0, "hi\n", "")
        assert pool.run(COMPUTE, ["true"], 20)[0] == 0
    assert cluster.server.seen.relayed == [("192.0.2.7", 22)]
