#!/usr/bin/env bash
# The first job on a fresh cluster (run by `make up`): every node, reached by name over SSH
# with its host key checked, reports its hostname and address.
set -euo pipefail
ck=$1
name=$2
nodes=$("$ck" status "$name" -o json |
    python3 -c 'import json, sys; print(" ".join(n["name"] for n in json.load(sys.stdin)["nodes"]))')
echo "first job on cluster $name:"
for node in $nodes; do
    "$ck" ssh "$name" "$node" -- 'echo "  $(hostname): $(hostname -I)"'
done
echo "next: $ck ssh $name   (a shell on the head)   ·   make down   (destroy it)"
