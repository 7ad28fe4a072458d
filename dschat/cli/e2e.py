"""`ds-chat train` (= `python -m dschat.e2e`): run steps 1, 2 and 3 one after another.

Each step is started through our `deepspeed` launcher
(`python -m deepspeed.launcher.runner ... -m dschat.stepK ...`), exactly as a
user would start it by hand, and its output is streamed to the console and to
`<output-dir>/<actor|reward|step3>-models/<name>/launcher.log`. A failing
step raises with the tail of that log.

    ds-chat train --actor-model tiny-llama --reward-model tiny-llama --deployment-type single_node
    ds-chat train --step 3 --actor-model /models/opt-1.3b --reward-model /models/opt-350m --actor-zero-stage 3

Outputs: `<out>/actor-models/<name>`, `<out>/reward-models/<name>`,
`<out>/step3-models/<name>` (name = the preset, or the folder's basename).

Recipes: the presets (`tiny-llama`, `tiny-opt`) get the CPU recipe of the
embedded demo (`dschat.cli.recipes`) and its data set, written to
`<output-dir>/data/` (`dschat.cli.demo_data`); any other model gets DS-Chat's
step defaults. `--stepN-args "..."` appends flags to step N (later flags win).
Deployment: `single_gpu` starts one rank; `single_node` every device of this
node (on a CPU-only machine: 2 processes, one core each); `multi_node` the
hosts of the launcher's hostfile (`-H/--hostfile`).
"""
import argparse
import os
import shlex
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

from dschat.cli import recipes

__all__ = ["main", "parse_args", "launcher_command", "model_name", "step_output_dirs", "demo_data_path", "run_step", "StepFailed"]

_STEP_MODULES = {1: "dschat.step1", 2: "dschat.step2", 3: "dschat.step3"}
_TAIL_LINES = 40


class StepFailed(RuntimeError):
    """A step exited with an error; the message holds its log tail."""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ds-chat train", description="Run the DS-Chat steps 1, 2, 3 end to end.")
    parser.add_argument("--step", type=int, nargs="+", choices=(1, 2, 3), default=[1, 2, 3], help="steps to run")
    parser.add_argument("--actor-model", default="tiny-llama", help="preset (tiny-llama, tiny-opt) or local folder")
    parser.add_argument("--reward-model", default="tiny-llama", help="preset or local folder")
    parser.add_argument("--actor-zero-stage", type=int, choices=(0, 1, 2, 3), default=None,
                        help="default: the recipe's (2 for presets, 2 for DS-Chat scripts)")
    parser.add_argument("--reward-zero-stage", type=int, choices=(0, 1, 2, 3), default=None)
    parser.add_argument("--output-dir", default="./output", help="root of the three output folders")
    parser.add_argument("--deployment-type", default="single_gpu", choices=("single_gpu", "single_node",
                                                                            "multi_node"))
    parser.add_argument("-H", "--hostfile", default=None, help="hostfile for multi_node")
    parser.add_argument("--master-port", type=int, default=None, help="rendezvous port (default: the launcher's)")
    for step in (1, 2, 3):
        parser.add_argument(f"--step{step}-args", default="", help=f"extra flags for step {step}, one string")
    return parser.parse_args(argv)


def model_name(model: str) -> str:
    """Folder name of a model's outputs: the preset, or the path's last component."""
    return os.path.basename(os.path.normpath(model)) or model


def step_output_dirs(args: argparse.Namespace) -> Dict[int, str]:
    root = os.path.abspath(args.output_dir)
    return {
        1: os.path.join(root, "actor-models", model_name(args.actor_model)),
        2: os.path.join(root, "reward-models", model_name(args.reward_model)),
        3: os.path.join(root, "step3-models", model_name(args.actor_model)),
    }


def _cpu_only() -> bool:
    from deepspeed.accelerator import get_accelerator
    return get_accelerator().device_name() == "cpu"


def launcher_command(deployment_type: str, module: str, step_args: Sequence[str], hostfile: Optional[str] = None,
                     master_port: Optional[int] = None, cpu: bool = True) -> List[str]:
    """The `deepspeed` launcher command line that runs `python -m <module> <step_args>`."""
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner"]
    if deployment_type == "single_gpu":
        cmd += ["--num_gpus", "1"]
    elif deployment_type == "single_node" and cpu:
        # Two ranks with one core each: every rank of a CPU job would
        # otherwise size its thread pool to the whole machine.
        cmd += ["--num_gpus", "2", "--bind_cores_to_rank"]
    if deployment_type == "multi_node" and hostfile:
        cmd += ["--hostfile", hostfile]
    if master_port is not None:
        cmd += ["--master_port", str(master_port)]
    return cmd + ["-m", module] + list(step_args)


def demo_data_path(args: argparse.Namespace) -> str:
    """Where the runner writes the presets' demo data set (see dschat/cli/demo_data.py)."""
    from dschat.cli.demo_data import write_demo_dataset
    return write_demo_dataset(os.path.join(os.path.abspath(args.output_dir), "data"), recipes.DEMO_TRAIN_SIZE,
                              recipes.DEMO_EVAL_SIZE)


def _step_args(step: int, args: argparse.Namespace, outputs: Dict[int, str],
               data_path: Optional[str] = None) -> List[str]:
    actor_recipe = recipes.recipe_for(args.actor_model)
    reward_recipe = recipes.recipe_for(args.reward_model)
    recipe = reward_recipe if step == 2 else actor_recipe
    data = ["--data_path", data_path] if recipe.demo_data and data_path else []
    if step == 1:
        flags = ["--model_name_or_path", args.actor_model, "--output_dir", outputs[1]] + data + actor_recipe.step1
        if args.actor_zero_stage is not None:
            flags += ["--zero_stage", str(args.actor_zero_stage)]
    elif step == 2:
        base = args.reward_model
        if reward_recipe.reward_from_sft and args.reward_model == args.actor_model:
            # InstructGPT initialises its reward model from the SFT model; with
            # a model trained from scratch this is what makes the RM accurate.
            base = outputs[1]
        flags = ["--model_name_or_path", base, "--output_dir", outputs[2]] + data + reward_recipe.step2
        if args.reward_zero_stage is not None:
            flags += ["--zero_stage", str(args.reward_zero_stage)]
    else:
        flags = ["--actor_model_name_or_path", outputs[1], "--critic_model_name_or_path", outputs[2],
                 "--output_dir", outputs[3]] + data + actor_recipe.step3
        if args.actor_zero_stage is not None:
            flags += ["--actor_zero_stage", str(args.actor_zero_stage)]
        if args.reward_zero_stage is not None:
            flags += ["--critic_zero_stage", str(args.reward_zero_stage)]
    return flags + shlex.split(getattr(args, f"step{step}_args"))


def _check_inputs(step: int, outputs: Dict[int, str], steps: Sequence[int]) -> None:
    from dschat.models.model_utils import find_weights_file
    needed = {2: [1] if 1 in steps else [], 3: [1, 2]}.get(step, [])
    for earlier in needed:
        if find_weights_file(outputs[earlier]) is None:
            raise StepFailed(f"step {step} needs the step-{earlier} model in {outputs[earlier]}, which holds no "
                             f"weights; run step {earlier} first (ds-chat train --step {earlier} ...)")


def run_step(cmd: Sequence[str], log_path: str, env: Optional[Dict[str, str]] = None) -> None:
    """Run `cmd`, streaming its output to stdout and `log_path`; StepFailed with the log tail on error."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    tail: List[str] = []
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + shlex.join(cmd) + "\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
            tail = (tail + [line.rstrip("\n")])[-_TAIL_LINES:]
        code = proc.wait()
    if code != 0:
        hint = ("\nOut of memory? Try a smaller --per_device_*_batch_size, --offload, a higher ZeRO stage, "
                "or --gradient_checkpointing.") if any("out of memory" in t.lower() for t in tail) else ""
        raise StepFailed(f"{shlex.join(cmd[3:6])}... exited with code {code}; last lines of {log_path}:\n" +
                         "\n".join(tail) + hint)


def main(argv: Optional[Sequence[str]] = None) -> Dict[int, str]:
    """Run the requested steps; returns {step: output folder}."""
    args = parse_args(argv)
    outputs = step_output_dirs(args)
    cpu = _cpu_only()
    uses_demo_data = any(recipes.recipe_for(m).demo_data for m in (args.actor_model, args.reward_model))
    data_path = demo_data_path(args) if uses_demo_data else None
    for step in sorted(set(args.step)):
        _check_inputs(step, outputs, args.step)
        step_data = data_path
        # On-policy RM negatives only for the recipe's own data: a user who
        # passes step-2 data (`--step2-args "--data_path ..."`) gets exactly it.
        own_step2_data = "--data_path" in shlex.split(args.step2_args)
        if step == 2 and data_path and recipes.recipe_for(args.reward_model).policy_negatives \
                and not own_step2_data:
            from dschat.cli.demo_data import write_policy_pairs
            print(f"---------- step 2 data: sampling the SFT actor's answers on {data_path}", flush=True)
            step_data = write_policy_pairs(outputs[1], data_path)
        cmd = launcher_command(args.deployment_type, _STEP_MODULES[step], _step_args(step, args, outputs, step_data),
                               args.hostfile, args.master_port, cpu)
        print(f"---------- step {step}: {shlex.join(cmd)}", flush=True)
        run_step(cmd, os.path.join(outputs[step], "launcher.log"))
        print(f"---------- step {step} done: {outputs[step]}", flush=True)
    return {step: outputs[step] for step in sorted(set(args.step))}


if __name__ == "__main__":
    main()
