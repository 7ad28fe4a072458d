"""Launcher e2e helper: writes this rank's launcher-provided identity to <out_dir>/rank<RANK>.json."""
import argparse
import json
import os

parser = argparse.ArgumentParser()
parser.add_argument("--local_rank", type=int, default=None)
parser.add_argument("--out_dir", required=True)
parser.add_argument("--tag", default="")
args = parser.parse_args()

keys = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "CROSS_RANK", "CROSS_SIZE", "MASTER_ADDR", "MASTER_PORT"]
record = {k: os.environ.get(k) for k in keys}
record["arg_local_rank"] = args.local_rank
record["tag"] = args.tag
with open(os.path.join(args.out_dir, f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump(record, f)
