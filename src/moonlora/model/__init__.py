"""The model stage: Moonshine families, loading, conversion, tokenizer, encoder, device, LoRA."""
