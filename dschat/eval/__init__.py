"""Evaluations of the DS-Chat models.

* `task_success`: the share of eval prompts the actor answers correctly by
  greedy decoding, graded by the synthetic generator (`check_answer`), and the
  mean reward-model score of those answers;
* `reward_eval`: pairwise accuracy and mean scores of a reward model on
  held-out preference pairs, loading the trained head strictly
  (`python -m dschat.eval.reward_eval --model_name_or_path <step-2 output>`);
* `perplexity`: step 1's eval perplexity, exp of the mean LM loss.

Submodules are imported on demand, so `import dschat.eval` builds nothing.
"""
__all__ = ["task_success", "reward_eval", "perplexity"]
