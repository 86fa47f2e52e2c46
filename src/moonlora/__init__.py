"""moonlora: adapt Moonshine speech recognition to a domain with LoRA, and prove the gain."""

__version__ = "0.1.0"
