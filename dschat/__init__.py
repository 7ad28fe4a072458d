"""DeepSpeed-Chat: train a ChatGPT-style model in three steps.

Step 1 fine-tunes an actor on demonstrations (SFT), step 2 trains a reward
model on preference pairs, and step 3 improves the actor with PPO against
that reward model. The package uses only the public `deepspeed` API, as any
user script would.

Subpackages: `data` (datasets, the embedded synthetic preference set and its
tokenizer), `models` (actor, critic/reward, saving), `lora`, `ppo` (pure
losses, experience, trainer) and `cli` (the step scripts and runners).
Nothing is imported or run here, so `import dschat` stays free.
"""
