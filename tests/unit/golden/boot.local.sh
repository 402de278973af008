#!/bin/bash
# Boot script (user-data) of a compute node of cluster demo, written by clusterkit.
# It fetches what the node needs from the head demo-head, mounts shared storage and starts
# slurmd in configless mode. No Ansible runs on a booting node. Safe to run twice.
set -euo pipefail
status=/var/lib/clusterkit/boot.status
mkdir -p /var/lib/clusterkit
echo running > "$status"
log() { echo "$(date -u +%FT%TZ) boot[$(hostname)]: $*"; }
fail() { echo "failed: $*" > "$status"; log "FAILED: $*"; exit 1; }
trap 'fail "line $LINENO: $BASH_COMMAND"' ERR
# Reads from the head over SFTP; the key is authorised there for SFTP only.
# A session the head accepted but never serves (its sshd busy with hundreds of nodes booting
# at once) ends within 60 s instead of holding the boot for ever.
sftp_head() {
    timeout 60 sftp -q -b - -i /etc/ssh/ck_node_key -o BatchMode=yes -o ConnectTimeout=5 \
        -o ServerAliveInterval=5 -o ServerAliveCountMax=3 root@demo-head
}
retry() {  # COMMAND...: tries with growing random waits, for what crosses the network to a
    # busy head: nodes that boot together and failed together must not retry together
    # (measured: of 250 nodes booting at once, 27 were still refused after five tries).
    local n wait
    for n in 1 2 3 4 5 6 7; do
        "$@" && return 0
        wait=$(( 1 << n < 30 ? 1 << n : 30 ))
        log "retry $n: $*"; sleep $(( RANDOM % wait + 1 ))
    done
    "$@"
}
start() {  # NAME COMMAND...: start a daemon unless this node already runs it
    local name=$1; shift
    :  # ck-supervise starts it below, once shared storage (where the tool lives) is mounted
}

log "waiting for the head to be ready"
# A TCP probe of slurmctld's port costs nothing; an SSH login costs a key exchange, and many
# nodes polling with logins every second starve a head that is still being configured.
deadline=$((SECONDS + 300))
until timeout 2 bash -c 'exec 3<>/dev/tcp/demo-head/6817' 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || fail "head demo-head not ready after 300s"
    sleep 1
done
until echo "ls /var/lib/clusterkit/head-ready" | sftp_head >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "head demo-head not ready after 300s"
    sleep 2
done

log "munge key from the head"
umask 077
fetch_key() { echo "get /etc/munge/munge.key /etc/munge/munge.key.new" | sftp_head >/dev/null; }
retry fetch_key
install -o munge -g munge -m 0400 /etc/munge/munge.key.new /etc/munge/munge.key
rm -f /etc/munge/munge.key.new
umask 022
chown munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
start munged runuser -u munge -- /usr/sbin/munged

log "cluster users"
getent group ckuser >/dev/null || groupadd -g 2001 ckuser
getent passwd ckuser >/dev/null ||
    useradd -M -u 2001 -g 2001 -d /shared/home/ckuser -s /bin/bash ckuser

log "shared storage /shared (sshfs)"
mkdir -p /shared
if ! mountpoint -q /shared; then
    retry sshfs -o IdentityFile=/etc/ssh/ck_node_key,BatchMode=yes,allow_other,reconnect,ServerAliveInterval=5,ServerAliveCountMax=12,default_permissions root@demo-head:/shared /shared
fi
# SFTP creates files as the account it logs in as: each home is mounted as its user, so
# what a job writes there belongs to that user, as it would on NFS. The user's key is copied
# out of the home first: read from under its own mount point, sshfs would wait on itself.
install -d -m 0700 /var/lib/clusterkit/keys
if ! mountpoint -q /shared/home/ckuser; then
    install -m 0600 /shared/home/ckuser/.ssh/id_ed25519 /var/lib/clusterkit/keys/ckuser
    retry sshfs -o IdentityFile=/var/lib/clusterkit/keys/ckuser,BatchMode=yes,allow_other,reconnect,ServerAliveInterval=5,ServerAliveCountMax=12 ckuser@demo-head:/shared/home/ckuser /shared/home/ckuser
fi

log "slurmd (configless, from demo-head:6817)"
# A local node shares the machine's boot time; -b reports this start as its boot, which
# Slurm power saving needs to see before a resumed node counts as up.
mkdir -p /var/spool/slurmd /var/log/slurm
start slurmd /usr/sbin/slurmd --conf-server demo-head:6817 -b

mkdir -p /var/log/clusterkit

log "munged, slurmd, the Spot agent, sshd and the mounts, kept alive by ck-supervise"
/shared/clusterkit/bin/ck-supervise --events '/shared/clusterkit/events/{node}-supervisor.jsonl' add shared --mount /shared --requeue-jobs -- sshfs -o IdentityFile=/etc/ssh/ck_node_key,BatchMode=yes,allow_other,reconnect,ServerAliveInterval=5,ServerAliveCountMax=12,default_permissions root@demo-head:/shared /shared
/shared/clusterkit/bin/ck-supervise --events '/shared/clusterkit/events/{node}-supervisor.jsonl' add home-ckuser --mount /shared/home/ckuser --requeue-jobs -- sshfs -o IdentityFile=/var/lib/clusterkit/keys/ckuser,BatchMode=yes,allow_other,reconnect,ServerAliveInterval=5,ServerAliveCountMax=12 ckuser@demo-head:/shared/home/ckuser /shared/home/ckuser
/shared/clusterkit/bin/ck-supervise --events '/shared/clusterkit/events/{node}-supervisor.jsonl' add sshd --listen 22 --background --log /var/log/clusterkit/sshd.log -- /usr/sbin/sshd -D -e
/shared/clusterkit/bin/ck-supervise --events '/shared/clusterkit/events/{node}-supervisor.jsonl' add munged --process munged -- runuser -u munge -- /usr/sbin/munged
/shared/clusterkit/bin/ck-supervise --events '/shared/clusterkit/events/{node}-supervisor.jsonl' add slurmd --process slurmd -- /usr/sbin/slurmd --conf-server demo-head:6817 -b
/shared/clusterkit/bin/ck-supervise --events '/shared/clusterkit/events/{node}-supervisor.jsonl' add ck-spot-agent --process ck-spot-agent --background --log /var/log/clusterkit/spot-agent.log -- /shared/clusterkit/bin/ck-spot-agent --config /shared/clusterkit/etc/spot.json
echo done > "$status"
log "done"
