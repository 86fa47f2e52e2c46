"""The training stage: the LoRA loop, the experiment runner, the plan's checklist."""
