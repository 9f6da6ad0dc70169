"""Training with the Hugging Face `Trainer`.

- `trainer`: `train(script_args, training_args)`, `build_trainer`, the paper's default `TrainingArguments`;
- `stages`: what trains (the paper's adapter-only and full stages, LoRA on the language model, the MoE adapter's
  experts or both: `plan_lora`, `add_lora`);
- `callbacks`: the MoE aux-loss schedule and routing statistics, gradient conflicts during training.
"""
