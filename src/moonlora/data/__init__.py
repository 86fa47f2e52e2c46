"""The data stage: audio, text, manifests, splits, augmentation, canaries, diagnostics, synthetic speech."""
