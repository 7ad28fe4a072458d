"""Launcher e2e helper: every rank records its pid; rank 1 exits with code 3, the others sleep 60 s.

With --no_failure every rank sleeps, for tests that stop the job themselves.
"""
import argparse
import os
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--local_rank", type=int, default=None)
parser.add_argument("--out_dir", required=True)
parser.add_argument("--no_failure", action="store_true")
args = parser.parse_args()

rank = int(os.environ["RANK"])
with open(os.path.join(args.out_dir, f"pid{rank}"), "w") as f:
    f.write(str(os.getpid()))
if rank == 1 and not args.no_failure:
    # Give rank 0 time to start sleeping, so the launcher must stop a live rank.
    time.sleep(0.5)
    sys.exit(3)
time.sleep(60)
