#!/bin/bash
# PrologSlurmctld of cluster demo, written by clusterkit; slurmctld runs it as
# SlurmUser when a job is given its nodes. A job stays CONFIGURING while it runs, and when it
# exits Slurm checks at once whether the job's nodes are ready. Without it, a job on resumed
# nodes waits for slurmctld's periodic check, up to 30 s after its nodes are up.
# Jobs on nodes that are already up (no dynamic node) return at once.
case "$SLURM_JOB_NODELIST" in
    *-dy-*) ;;
    *) exit 0 ;;
esac
deadline=$((SECONDS + 300))
while [ "$SECONDS" -lt "$deadline" ]; do
    # sinfo's state suffixes: # powering up, ~ powered down, * not responding.
    states=$(sinfo -h -N -n "$SLURM_JOB_NODELIST" -o %t 2>/dev/null) || states='#'
    case "$states" in
        *'#'* | *'~'* | *'*'*) sleep 0.2 ;;
        *) exit 0 ;;
    esac
done
exit 0
