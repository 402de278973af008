#!/bin/sh
# TaskProlog of cluster demo, written by clusterkit. slurmd runs it as the job's user
# before every task, the batch script included; each "export" line it prints is set in the
# task's environment. It only prints: the checkpoint directory is made by the first save.
if [ -n "${SLURM_ARRAY_JOB_ID:-}" ] && [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
    job="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
else
    job="${SLURM_JOB_ID}"
fi
echo "export CK_CHECKPOINT_DIR=/shared/home/${SLURM_JOB_USER}/checkpoints/demo/${job}"
echo "export CK_MAX_RESTARTS=3"
echo "export CK_CHECKPOINT_SIGNAL=USR1"
