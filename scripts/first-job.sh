#!/usr/bin/env bash
# The first job on a fresh cluster (run by `make up`): a batch job, submitted as the cluster
# user, runs one task on every compute node; its output comes back through shared storage.
set -euo pipefail
ck=$1
name=$2
user=${3:-ckuser}
computes=$("$ck" status "$name" -o json |
    python3 -c 'import json, sys; print(sum(n["role"] == "compute" for n in json.load(sys.stdin)["nodes"]))')
echo "first job on cluster $name: sbatch -N$computes as $user"
"$ck" ssh "$name" -u "$user" -- \
    "sbatch --wait -N$computes -o first-job.out --wrap 'srun hostname' > /dev/null && sort first-job.out"
echo "next: $ck ssh $name -u $user   (a shell on the head)   ·   make down   (destroy it)"
