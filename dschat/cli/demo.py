"""`ds-chat demo`: the whole RLHF pipeline on the embedded data, offline, on CPU, in minutes.

Runs `ds-chat train` for `tiny-llama` (actor and reward model) on 2 ranks
through the `deepspeed` launcher with the preset recipe ([Note: demo recipe]
in dschat/cli/recipes.py), then:

* re-evaluates the saved reward model from disk (strict load of the trained
  head) on the held-out pairs;
* prints a summary: SFT eval perplexity, RM held-out accuracy, and the mean
  reward and task success of greedy answers of the SFT actor vs. the PPO
  actor on held-out prompts;
* saves the step-3 reward curve (and the task-success evaluations) as
  `<output-dir>/step3_reward_curve.png`, and the numbers as `summary.json`.

    ds-chat demo                       # outputs in ./output/demo
    ds-chat demo --skip-train          # only the summary of an earlier run
"""
import argparse
import json
import os
from typing import Any, Dict, Optional, Sequence

from dschat.cli import e2e, recipes
from dschat.cli.args import step2_parser
from dschat.instrument import read_metrics

__all__ = ["main", "summarize", "plot_reward_curve", "format_summary"]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ds-chat demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="./output/demo", help="root of the demo's outputs")
    parser.add_argument("--model", default="tiny-llama", choices=("tiny-llama", "tiny-opt"), help="model preset")
    parser.add_argument("--deployment-type", default="single_node", choices=("single_gpu", "single_node"))
    parser.add_argument("--skip-train", action="store_true", help="summarise an earlier run only")
    parser.add_argument("--master-port", type=int, default=None, help="rendezvous port (default: the launcher's)")
    return parser.parse_args(argv)


def _reward_eval_settings(data_path: str) -> argparse.Namespace:
    """The data settings step 2 ran with (the recipe's), for the held-out re-evaluation."""
    return step2_parser().parse_args(["--data_path", data_path] + recipes.PRESET_RECIPE.step2 +
                                     ["--model_name_or_path", "unused"])


def summarize(outputs: Dict[int, str], data_path: str) -> Dict[str, Any]:
    """The demo's numbers, from the three output folders (re-evaluating the saved reward model)."""
    from dschat.eval.reward_eval import evaluate_saved_reward_model
    step1, step3 = read_metrics(outputs[1]), read_metrics(outputs[3])
    settings = _reward_eval_settings(data_path)
    rm = evaluate_saved_reward_model(outputs[2], settings.data_path, settings.data_split, settings.max_seq_len,
                                     settings.per_device_eval_batch_size, settings.seed, settings.data_output_path)
    return {
        "sft_eval_perplexity": step1.get("eval_perplexity"),
        "sft_task_success_step1": step1.get("task_success"),
        "rm_heldout_accuracy": rm["accuracy"],
        "rm_chosen_mean_score": rm["chosen_mean_score"],
        "rm_rejected_mean_score": rm["rejected_mean_score"],
        "rm_heldout_pairs": rm["pairs"],
        "sft_mean_reward": step3.get("sft_mean_reward"),
        "ppo_mean_reward": step3.get("ppo_mean_reward"),
        "sft_task_success": step3.get("sft_task_success"),
        "ppo_task_success": step3.get("ppo_task_success"),
        "ppo_steps": step3.get("steps"),
        "reward_curve": step3.get("reward_curve", []),
        "evaluations": step3.get("evaluations", []),
    }


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_summary(summary: Dict[str, Any]) -> str:
    """The summary table (markdown, readable in a terminal too)."""
    rows = [
        ("SFT eval perplexity (step 1)", _fmt(summary["sft_eval_perplexity"]), ""),
        (f"RM held-out accuracy (step 2, {summary['rm_heldout_pairs']} pairs)",
         _fmt(summary["rm_heldout_accuracy"]), ""),
        ("mean reward of greedy answers", _fmt(summary["sft_mean_reward"]), _fmt(summary["ppo_mean_reward"])),
        ("task success (answers checked)", _fmt(summary["sft_task_success"]), _fmt(summary["ppo_task_success"])),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"| {'metric'.ljust(width)} | SFT actor | PPO actor |", f"|{'-' * (width + 2)}|-----------|-----------|"]
    lines += [f"| {name.ljust(width)} | {a:>9} | {b:>9} |" for name, a, b in rows]
    return "\n".join(lines)


def plot_reward_curve(summary: Dict[str, Any], path: str) -> str:
    """PNG of the step-3 mean reward per PPO step, with the task-success evaluations on a second axis."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = summary["reward_curve"]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if curve:
        steps, rewards = zip(*curve)
        ax.plot(steps, rewards, color="tab:blue", alpha=0.35, label="mean reward per step")
        smoothed, ema = [], None
        for value in rewards:
            ema = value if ema is None else 0.9 * ema + 0.1 * value
            smoothed.append(ema)
        ax.plot(steps, smoothed, color="tab:blue", label="reward EMA (alpha 0.9)")
    ax.set_xlabel("PPO step")
    ax.set_ylabel("reward-model score", color="tab:blue")
    evaluations = summary["evaluations"]
    if evaluations:
        ax2 = ax.twinx()
        ax2.plot([e["step"] for e in evaluations], [e["task_success"] for e in evaluations], "o-", color="tab:red",
                 label="task success (greedy, held-out)")
        ax2.set_ylabel("task success", color="tab:red")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="lower right")
    ax.legend(loc="upper left")
    ax.set_title("DS-Chat demo, step 3 (PPO): reward and task success")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    train_argv = ["--actor-model", args.model, "--reward-model", args.model, "--output-dir", args.output_dir,
                  "--deployment-type", args.deployment_type]
    if args.master_port is not None:
        train_argv += ["--master-port", str(args.master_port)]
    train_args = e2e.parse_args(train_argv)
    outputs = e2e.step_output_dirs(train_args)
    if not args.skip_train:
        e2e.main(train_argv)
    summary = summarize(outputs, e2e.demo_data_path(train_args))
    png = plot_reward_curve(summary, os.path.join(args.output_dir, "step3_reward_curve.png"))
    with open(os.path.join(args.output_dir, "summary.json"), "w", encoding="utf-8") as handle:
        json.dump({k: v for k, v in summary.items() if k not in ("reward_curve", )}, handle, indent=1)
    print("\n" + format_summary(summary))
    print(f"\nreward curve: {png}\nmodels: {outputs[1]}, {outputs[2]}, {outputs[3]}/actor")
    print(f"chat with the PPO actor: ds-chat chat --path {outputs[3]}/actor")
    return summary


if __name__ == "__main__":
    main()
