#!/usr/bin/env python3
"""A job that survives Spot interruptions: a long SHA-256 hash chain with checkpoints.

Each step hashes the running digest ROUNDS times and adds the step's first 8 bytes to a
running total, so the final digest and total are exact and anyone can check them (run it
with --check). The state is saved with clusterkit's checkpoint API when ck-run passes on
the checkpoint signal (on an interruption notice, and every --checkpoint-every seconds), and
a restarted job goes on from its newest checkpoint.

    #SBATCH --requeue
    exec /shared/clusterkit/bin/ck-run --checkpoint-every 10 -- python3 hashchain.py
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sys
import time

sys.path.append(os.environ.get("CK_LIB", "/shared/clusterkit/lib"))

ROUNDS = 2000


def step(digest: bytes, total: int) -> tuple[bytes, int]:
    for _ in range(ROUNDS):
        digest = hashlib.sha256(digest).digest()
    return digest, total + int.from_bytes(digest[:8], "big")


def answer(steps: int, seed: str) -> tuple[str, int]:
    digest, total = hashlib.sha256(seed.encode()).digest(), 0
    for _ in range(steps):
        digest, total = step(digest, total)
    return digest.hex(), total


def run(steps: int, seed: str, pause: float) -> None:
    # The handler first: ck-run passes the signal on only to a program that handles it.
    wanted: list[int] = []
    signal.signal(signal.SIGUSR1, lambda *_: wanted.append(1))
    from clusterkit.nodetools.checkpoint import Checkpoints  # noqa: PLC0415 - --check needs none

    ck = Checkpoints()
    state = ck.load_json() or {
        "step": 0,
        "digest": hashlib.sha256(seed.encode()).hexdigest(),
        "total": 0,
    }
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    print(f"start at step {state['step']} of {steps} (restart {restarts})", flush=True)
    digest, total = bytes.fromhex(state["digest"]), state["total"]
    for n in range(state["step"], steps):
        digest, total = step(digest, total)
        time.sleep(pause)  # the rest of a real step's work
        if wanted:
            wanted.clear()
            ck.save_json({"step": n + 1, "digest": digest.hex(), "total": total})
            print(f"checkpoint at step {n + 1}", flush=True)
    print(f"answer {digest.hex()} {total} restarts {restarts}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--seed", default="clusterkit")
    parser.add_argument("--pause", type=float, default=0.25, help="seconds of work per step")
    parser.add_argument("--check", action="store_true", help="print the exact answer and exit")
    args = parser.parse_args()
    if args.check:
        digest, total = answer(args.steps, args.seed)
        print(f"answer {digest} {total}")
        return 0
    run(args.steps, args.seed, args.pause)
    return 0


if __name__ == "__main__":
    sys.exit(main())
