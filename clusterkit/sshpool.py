"""One pooled SSH connection per node, with the cluster's own trust (paramiko).

``Pool.run(node, argv, timeout)`` runs a command on a node over a connection the pool keeps
open, so only a node's first command pays for the key exchange and the login. Every
connection is made as ``ssh -F ssh_config`` would make it, and never trusts more:

- the host key must be the node's in the cluster's ``known_hosts`` (``RejectPolicy``: an
  unknown or different key is refused; no system host keys), looked up under the node's
  ``HostKeyAlias`` whatever address is dialled;
- the login uses the cluster's private key only (no agent, no other keys);
- the address is the node's ``HostName`` in the cluster's ``ssh_config``, reached through
  its ``ProxyCommand`` where it has one (aws: ``ssh -W`` through the head, which checks the
  head's key with the same ssh_config), directly otherwise (local), within ``ConnectTimeout``.

``ssh_config`` and ``known_hosts`` are read at each connection, so a rewrite (addresses
assigned at launch) is seen by the next one. Every failure is a ``PoolError`` naming the node.
The interactive ``clusterkit ssh`` stays OpenSSH (``ClusterTrust.ssh_argv``).
"""

from __future__ import annotations

import shlex
import socket
import threading
import time
from collections.abc import Sequence
from types import TracebackType

import paramiko

from clusterkit.errors import SSHError
from clusterkit.trust import ClusterTrust

DEFAULT_CONNECT_TIMEOUT = 5.0  # seconds; the ssh_config's ConnectTimeout wins
KEEPALIVE_SECONDS = 15  # a pooled connection may sit idle while Ansible configures the head
SIGNALLED = 255  # rc of a command that ended without an exit status, as OpenSSH reports it
POLL_SECONDS = 0.01
READ_BYTES = 65536


class PoolError(SSHError):
    """A command could not be run on ``node``; the message says why, in one line."""

    def __init__(self, node: str, message: str) -> None:
        self.node = node
        super().__init__(message)


class NodeUnreachable(PoolError):
    """No SSH connection to ``node`` could be made (or it broke); ``reason`` says how."""

    def __init__(self, node: str, reason: str) -> None:
        self.reason = reason
        super().__init__(node, f"SSH to {node} failed: {reason}")


class HostKeyRejected(NodeUnreachable):
    """The node's host key is not the one the cluster's known_hosts holds for it."""


class CommandTimeout(PoolError):
    """The command did not finish in time; it was stopped (its channel closed)."""

    def __init__(self, node: str, command: str, timeout: float) -> None:
        self.reason = f"{command} did not finish within {timeout:g}s"
        super().__init__(node, f"{node}: {self.reason}")


def _one_line(text: object) -> str:
    return " ".join(str(text).split()) or "no message"


def _brief(argv: Sequence[str], limit: int = 60) -> str:
    line = shlex.join(argv)
    return f"`{line}`" if len(line) <= limit else f"`{line[: limit - 3]}...`"


class Pool:
    """SSH connections to a cluster's nodes as ``user``, one per node, opened on first use.

    Safe to share between threads: commands on one node share its connection, each in a
    channel of its own. ``close`` (or leaving a ``with`` block) ends every connection.
    """

    def __init__(self, trust: ClusterTrust, user: str = "root") -> None:
        self.trust = trust
        self.user = user
        self._clients: dict[str, paramiko.SSHClient] = {}
        self._node_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> Pool:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def run(self, node: str, argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
        """Run ``argv`` on ``node``; its exit status, stdout and stderr (UTF-8, bad bytes
        replaced). Raises ``NodeUnreachable`` (``HostKeyRejected``) when no connection can
        be made and ``CommandTimeout`` when the command runs past ``timeout`` seconds.

        A pooled connection the node has dropped is dialled again once, before the command
        starts; a command that started is never run twice.
        """
        command = shlex.join(argv)
        channel = self._open_channel(node)
        try:
            channel.exec_command(command)
            return self._collect(node, channel, argv, timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise NodeUnreachable(node, f"{_brief(argv)} failed: {_one_line(exc)}") from None
        finally:
            channel.close()
            transport = channel.get_transport()
            if not (transport and transport.is_active()):
                self._drop(node)  # other channels on it are lost too; the next run dials

    def close(self) -> None:
        """End every connection; the pool refuses new ones after."""
        with self._lock:
            self._closed = True
            clients = list(self._clients.values())
            self._clients.clear()
        for client in clients:
            client.close()

    # --- connections ----------------------------------------------------------------------

    def _open_channel(self, node: str) -> paramiko.Channel:
        for attempt in (1, 2):
            transport = self._client(node).get_transport()
            if transport is not None and transport.is_active():
                try:
                    return transport.open_session(timeout=DEFAULT_CONNECT_TIMEOUT)
                except (paramiko.SSHException, OSError, EOFError) as exc:
                    if attempt == 2:
                        raise NodeUnreachable(node, _one_line(exc)) from None
            self._drop(node)
        raise NodeUnreachable(node, "the connection closed as soon as it was made")

    def _client(self, node: str) -> paramiko.SSHClient:
        with self._lock:
            self._check_open(node)
            node_lock = self._node_locks.setdefault(node, threading.Lock())
        with node_lock:  # one dial per node, however many threads want it
            with self._lock:
                found = self._clients.get(node)
            if found is not None:
                return found
            client = self._connect(node)
            with self._lock:
                if self._closed:
                    client.close()
                    self._check_open(node)
                self._clients[node] = client
            return client

    def _check_open(self, node: str) -> None:
        if self._closed:
            raise NodeUnreachable(node, "the SSH pool is closed")

    def _drop(self, node: str) -> None:
        with self._lock:
            client = self._clients.pop(node, None)
        if client is not None:
            client.close()

    def _connect(self, node: str) -> paramiko.SSHClient:
        config = self._config(node)
        if "proxyjump" in config:
            raise NodeUnreachable(node, f"ProxyJump in {self.trust.ssh_config} is not supported")
        address = config.get("hostname", node)
        port = int(config.get("port", 22))
        alias = config.get("hostkeyalias")
        wait = float(config.get("connecttimeout", DEFAULT_CONNECT_TIMEOUT))
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(str(self.trust.known_hosts))
        except OSError as exc:
            raise NodeUnreachable(node, f"cannot read {self.trust.known_hosts}: {exc}") from None
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        key = self._user_key(node)
        sock = self._dial(node, config.get("proxycommand"), address, port, wait)
        # With a HostKeyAlias the key is looked up under the alias alone, as OpenSSH does.
        name, name_port = (alias, 22) if alias else (address, port)
        try:
            client.connect(
                name,
                port=name_port,
                username=self.user,
                pkey=key,
                sock=sock,
                allow_agent=False,
                look_for_keys=False,
                timeout=wait,
                banner_timeout=wait,
                auth_timeout=wait,
            )
        except BaseException as exc:
            client.close()
            sock.close()
            if isinstance(exc, Exception):
                raise self._connect_error(node, name, address, exc) from None
            raise
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(KEEPALIVE_SECONDS)
        return client

    def _config(self, node: str) -> paramiko.SSHConfigDict:
        try:
            return paramiko.SSHConfig.from_path(str(self.trust.ssh_config)).lookup(node)
        except OSError as exc:
            raise NodeUnreachable(node, f"cannot read {self.trust.ssh_config}: {exc}") from None

    def _user_key(self, node: str) -> paramiko.PKey:
        try:
            return paramiko.PKey.from_path(self.trust.user_key)
        except (OSError, paramiko.SSHException) as exc:
            why = _one_line(exc)
            raise NodeUnreachable(node, f"cannot load {self.trust.user_key}: {why}") from None

    def _dial(
        self, node: str, proxy: str | None, address: str, port: int, wait: float
    ) -> socket.socket | paramiko.ProxyCommand:
        if proxy:
            try:
                command = paramiko.ProxyCommand(proxy)
            except paramiko.SSHException as exc:
                raise NodeUnreachable(node, f"ProxyCommand failed: {_one_line(exc)}") from None
            command.settimeout(wait)
            return command
        try:
            return socket.create_connection((address, port), timeout=wait)
        except TimeoutError:
            raise NodeUnreachable(node, f"no answer at {address}:{port} within {wait:g}s") from None
        except OSError as exc:
            why = exc.strerror or _one_line(exc)
            raise NodeUnreachable(node, f"cannot connect to {address}:{port}: {why}") from None

    def _connect_error(self, node: str, name: str, address: str, exc: Exception) -> PoolError:
        known = self.trust.known_hosts
        if isinstance(exc, paramiko.BadHostKeyException):
            got = f"{exc.key.get_name()} {exc.key.fingerprint}"
            return HostKeyRejected(
                node,
                f"host key mismatch: {address} offered {got}, not the key {known} holds for "
                f"{name}; refusing to connect",
            )
        if isinstance(exc, paramiko.AuthenticationException):
            return NodeUnreachable(
                node, f"{self.user}@{name} refused the key {self.trust.user_key}"
            )
        if isinstance(exc, paramiko.SSHException) and "not found in known_hosts" in str(exc):
            return HostKeyRejected(node, f"{known} has no host key for {name}; refusing to connect")
        if isinstance(exc, TimeoutError):
            return NodeUnreachable(node, f"no SSH handshake with {address} in time")
        return NodeUnreachable(node, f"{address}: {_one_line(exc)}")

    # --- commands -------------------------------------------------------------------------

    def _collect(
        self, node: str, channel: paramiko.Channel, argv: Sequence[str], timeout: float
    ) -> tuple[int, str, str]:
        deadline = time.monotonic() + timeout
        out, err = bytearray(), bytearray()
        while True:
            done = channel.exit_status_ready()  # before draining: data comes before status
            while channel.recv_ready():
                out += channel.recv(READ_BYTES)
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(READ_BYTES)
            if done:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise CommandTimeout(node, _brief(argv), timeout)
            channel.status_event.wait(min(left, POLL_SECONDS))
        transport = channel.get_transport()
        if channel.exit_status < 0 and not (transport and transport.is_active()):
            raise NodeUnreachable(node, f"connection lost while running {_brief(argv)}")
        rc = channel.exit_status if channel.exit_status >= 0 else SIGNALLED
        return rc, _text(out), _text(err)


def _text(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")
