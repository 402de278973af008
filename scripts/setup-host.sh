#!/usr/bin/env bash
# Installs the Debian 12 packages that clusterkit's local provider uses on this machine (the
# host is the node image: every node runs the host's binaries). Run as root; idempotent.
set -euo pipefail

packages=(
    iproute2 util-linux procps psmisc hostname make  # namespaces, bridge, process tools
    openssh-server openssh-client                     # per-node sshd, cluster SSH trust
    sshfs fuse3                                       # shared storage in local mode
    munge slurm-wlm slurm-client                      # Slurm itself
    slurmdbd mariadb-server mariadb-client            # accounting: slurmdbd on MariaDB
    openmpi-bin libopenmpi-dev                        # MPI across nodes (mpirun, mpicc)
    python3 python3-venv python3-jinja2               # the venv; node tools on nodes' python3
    python3-boto3                                     # the head's SQS consumer of EC2 events
    crun                                              # pack tasks in containers (--container)
    parallel                                          # bench/htc.py's GNU parallel baseline
    chromium                                          # the tests open `clusterkit report` pages
)

missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
        missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "setup-host: all system packages present"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "setup-host: error: installing ${missing[*]} needs root; run as root (e.g. sudo make setup)" >&2
    exit 1
fi

# Debian's maintainer scripts would start sshd, munged and slurmd on the host itself. The
# nodes run their own daemons, so nothing is started during the install (policy-rc.d 101).
guard=/usr/sbin/policy-rc.d
if [ ! -e "$guard" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$guard"
    chmod 755 "$guard"
    trap 'rm -f "$guard"' EXIT
fi

echo "setup-host: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
