"""SSH trust of a cluster: its keys, its known_hosts and its ssh_config.

clusterkit makes, per cluster, one user key pair (the admin's way in) and one host key per
node, so every host key is known before a node first boots: ``known_hosts`` is written from
them and SSH always runs with ``StrictHostKeyChecking yes``.

Nodes trust each other through a host certificate authority of the cluster's own: each host
key is signed for its node's name (and address, where it is known before launch), and a node's
``/etc/ssh/ssh_known_hosts`` is one ``@cert-authority`` line, whatever the cluster's size. This
machine keeps checking the plain keys, one line per node, in the cluster's ``known_hosts``.

Each node's ``Host`` block names the node as its ``HostKeyAlias``: its key is checked under its
name whatever address is dialled. Where a node has a public address (the head on aws), it is
the way in: it is dialled there and every other node is reached through it (``ProxyCommand
ssh -W``), at its private address; otherwise (local) every node is dialled directly.
"""

from __future__ import annotations

import contextlib
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    SSHCertificate,
    SSHCertificateBuilder,
    SSHCertificateType,
    load_ssh_private_key,
    load_ssh_public_identity,
    load_ssh_public_key,
)

from clusterkit import proc
from clusterkit.errors import ClusterkitError, SSHError
from clusterkit.plan import head_name
from clusterkit.render import render
from clusterkit.state import atomic_write

MUX_PERSIST = "10s"  # how long a shared connection outlives its last session (``reuse``)
MAX_SOCKET_PATH = 107  # a Unix socket's path, at most (Linux: 108 bytes with its NUL)
# ssh expands %C to 40 hex digits, and the master first binds the path plus "." and 16 random
# characters before it renames the socket into place: that longer name must fit too.
MUX_EXPANSION = 40 + 17
FOREVER = 2**64 - 1  # a certificate's valid_before that OpenSSH shows as "forever"


@dataclass(frozen=True)
class TrustedNode:
    name: str
    address: str | None  # None until the provider assigns it at launch (aws compute nodes)
    host_key: str  # public key line: "ssh-ed25519 AAAA..."
    # Where this machine dials the node when its private address is out of reach (aws: the
    # head's public IP, once known); None: dial ``address``.
    public_address: str | None = None


@dataclass(frozen=True)
class SshHost:
    """One node's ``Host`` block in the cluster's ssh_config."""

    name: str
    host_name: str | None  # the address dialled; None: the name itself
    proxy_command: str | None = None  # None: dialled directly


def ssh_hosts(nodes: list[TrustedNode], config: Path) -> list[SshHost]:
    """How this machine reaches each of ``nodes`` with the ssh_config at ``config``.

    The first node with a public address is the gateway: nodes with a public address are
    dialled there, every other node through the gateway at its private address (or, not yet
    known, by its name, which the gateway resolves). With no public address at all, every
    node is dialled at its address directly.
    """
    gateway = next((n.name for n in nodes if n.public_address), None)
    if gateway is None:
        return [SshHost(n.name, n.address) for n in nodes]
    proxy = proxy_command(config, gateway)
    return [
        SshHost(n.name, n.public_address) if n.public_address else SshHost(n.name, n.address, proxy)
        for n in nodes
    ]


def proxy_command(config: Path, gateway: str) -> str:
    """``ProxyCommand`` reaching ``%h:%p`` through ``gateway`` with the same ssh_config, so
    the gateway's key is checked too. (``ProxyJump`` would not pass ``-F`` on reliably.)"""
    # Run by the user's shell: the path is one word whatever it holds.
    return f"ssh -F {shlex.quote(str(config))} -o BatchMode=yes -W %h:%p {gateway}"


def keygen(path: Path, comment: str) -> None:
    """Create an ed25519 key pair at ``path`` (private key 0600, OpenSSH's format, as
    ``ssh-keygen -t ed25519`` writes it) unless one is there. In this process: a cluster of
    thousands of nodes makes thousands of host keys, a process each took 5 ms."""
    if path.exists() and path.with_suffix(".pub").exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_suffix(".pub")):
        stale.unlink(missing_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption())
    public = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
    atomic_write(path, private, mode=0o600)
    atomic_write(path.with_suffix(".pub"), f"{public.decode()} {comment}\n", mode=0o644)


def host_cert(key: Path) -> Path:
    """Where OpenSSH looks for the certificate of the host key at ``key``."""
    return key.with_name(key.name + "-cert.pub")


def sign_host_key(ca: Path, key: Path, identity: str, principals: list[str]) -> None:
    """Sign the host key at ``key`` with the CA at ``ca`` for ``principals`` (a host
    certificate, valid until revoked with the cluster: its CA goes with it), unless its
    certificate is there for exactly those (a node's address may be learnt later)."""
    cert = host_cert(key)
    subject = load_ssh_public_key(key.with_suffix(".pub").read_bytes())
    if cert.exists() and _certifies(cert, subject, principals):
        return
    signer = load_ssh_private_key(ca.read_bytes(), password=None)
    if not isinstance(signer, ed25519.Ed25519PrivateKey) or not isinstance(
        subject, ed25519.Ed25519PublicKey
    ):
        raise SSHError(f"{key}: the cluster's host keys and CA must be ed25519")
    signed = (
        SSHCertificateBuilder()
        .public_key(subject)
        .type(SSHCertificateType.HOST)
        .key_id(identity.encode())
        .valid_principals([p.encode() for p in principals])
        .valid_after(0)
        .valid_before(FOREVER)
        .serial(0)
        .sign(signer)
    )
    atomic_write(cert, signed.public_bytes() + b"\n", mode=0o644)


def _certifies(cert: Path, subject: object, principals: list[str]) -> bool:
    """Whether the certificate at ``cert`` is ``subject``'s, for exactly ``principals``."""
    try:
        found = load_ssh_public_identity(cert.read_bytes())
    except ValueError:
        return False  # not a certificate (a torn or foreign file): signed again
    return (
        isinstance(found, SSHCertificate)
        and found.public_key() == subject
        and found.valid_principals == [p.encode() for p in principals]
    )


def node_known_hosts(ca: Path) -> str:
    """The known_hosts every node installs: the cluster's CA for any host (a certificate
    names the one node it was signed for, and this CA signs only the cluster's nodes)."""
    return f"@cert-authority * {public_key(ca)}\n"


def public_key(path: Path) -> str:
    """``ssh-ed25519 AAAA...`` of the key pair at ``path`` (comment dropped)."""
    algo, blob = path.with_suffix(".pub").read_text(encoding="utf-8").split()[:2]
    return f"{algo} {blob}"


@dataclass(frozen=True)
class ClusterTrust:
    """Where a cluster keeps its SSH material (all under its state dir)."""

    cluster: str
    root: Path

    @property
    def user_key(self) -> Path:
        return self.root / "keys" / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.root / "ssh" / "known_hosts"

    @property
    def host_ca(self) -> Path:
        """The CA that signs the nodes' host keys (private key 0600)."""
        return self.root / "keys" / "host_ca"

    @property
    def ssh_config(self) -> Path:
        return self.root / "ssh" / "ssh_config"

    def ensure_user_key(self) -> None:
        keygen(self.user_key, f"clusterkit-{self.cluster}")
        os.chmod(self.user_key.parent, 0o700)

    def ensure_host_ca(self) -> None:
        keygen(self.host_ca, f"clusterkit-{self.cluster}-host-ca")

    def write(self, nodes: list[TrustedNode], user: str = "root") -> None:
        """(Re)write known_hosts and ssh_config for exactly ``nodes``."""
        atomic_write(self.known_hosts, render("ssh/known_hosts.j2", nodes=nodes))
        atomic_write(
            self.ssh_config,
            render(
                "ssh/ssh_config.j2",
                cluster=self.cluster,
                config_path=self.ssh_config,
                hosts=ssh_hosts(nodes, self.ssh_config),
                user=user,
                identity_file=self.user_key,
                known_hosts=self.known_hosts,
            ),
        )

    def close_shared(self) -> None:
        """End the shared connections ``reuse`` left (they would end by themselves within
        ``MUX_PERSIST``; ``down`` ends them before their nodes go)."""
        for socket in self.ssh_config.parent.glob("mux-*"):
            with contextlib.suppress(ClusterkitError):
                proc.run(["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "shared"], timeout=5)

    def on_head(
        self,
        argv: list[str],
        *,
        doing: str,
        timeout: float = 30.0,
        error: type[ClusterkitError] = SSHError,
    ) -> str:
        """``argv`` run on the head as root; its stdout. A failure raises ``error``, one line:
        ``CLUSTER: cannot DOING: why``."""
        try:
            return proc.run(self.ssh_argv(head_name(self.cluster), argv), timeout=timeout).stdout
        except ClusterkitError as exc:
            raise error(f"{self.cluster}: cannot {doing}: {exc}") from exc

    def ssh_argv(
        self,
        node: str,
        command: list[str] | None = None,
        batch: bool = True,
        user: str = "root",
        host: str | None = None,
        *,
        reuse: bool = False,
    ) -> list[str]:
        """The OpenSSH command line that reaches ``node`` with this cluster's trust; ``host``
        overrides the address ssh_config gives (the host key is still checked by name).
        With ``reuse``, sessions to the same node and user within ``MUX_PERSIST`` of each
        other share one connection (its socket in the cluster's 0700 ``ssh/``), which
        saves the handshake, most of a short command's 0.25 s here."""
        argv = ["ssh", "-F", str(self.ssh_config), "-l", user]
        if batch:
            argv += ["-o", "BatchMode=yes"]
        mux = self.ssh_config.parent / "mux-%C"
        if reuse and len(str(mux)) - len("%C") + MUX_EXPANSION <= MAX_SOCKET_PATH:
            argv += ["-o", "ControlMaster=auto", "-o", f"ControlPath={mux}",
                     "-o", f"ControlPersist={MUX_PERSIST}"]  # fmt: skip
        if host:
            argv += ["-o", f"HostName={host}"]
        argv.append(node)
        if command:
            argv += ["--", *command]
        return argv
