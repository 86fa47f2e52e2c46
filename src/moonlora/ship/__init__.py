"""The shipping stage: merged checkpoints and edge-runtime graphs."""
