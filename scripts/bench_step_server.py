"""Whole builds with and without the step server (toolchain.stepserver), side by side.

Each round builds the recipe twice from nothing (--force, an empty cache), once with steps forked from the build's
step server and once with a fresh interpreter per step (MLPACK_STEP_SERVER=0), in alternating order; it reports the
median wall time of each and their ratio. One build at a time, --jobs 1 by default: a busy neighbour skews the
figures, so run it on an idle machine and record the CPU class beside the result.

    python scripts/bench_step_server.py recipes/cnn.yaml --rounds 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_build(recipe: Path, server: bool, jobs: int) -> float:
    out = Path(tempfile.mkdtemp(prefix="bench-steps-"))
    env = {**os.environ, "MLPACK_STEP_SERVER": "1" if server else "0", "CI": "true"}
    cmd = [sys.executable, "-m", "toolchain", "build", str(recipe), "--out", str(out), "--force", "--jobs", str(jobs), "--cache", str(out / "cache")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode not in (0, 3, 4):
        sys.exit(f"the build failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", type=Path)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=1)
    args = p.parse_args()
    times: dict[bool, list[float]] = {True: [], False: []}
    for r in range(args.rounds):
        for server in (r % 2 == 0, r % 2 != 0):  # alternate which goes first
            times[server].append(one_build(args.recipe.resolve(), server, args.jobs))
            print(f"round {r + 1}: {'step server' if server else 'fresh interpreters'}: {times[server][-1]:.1f} s", flush=True)
    forked, fresh = statistics.median(times[True]), statistics.median(times[False])
    print(f"{args.recipe}: median of {args.rounds} builds, --jobs {args.jobs}: step server {forked:.1f} s, fresh interpreters {fresh:.1f} s "
          f"({fresh / forked:.2f}x; {fresh - forked:.1f} s saved)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
