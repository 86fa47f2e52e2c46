"""The evaluation stage: decoding, scoring, the eval contract, statistics, comparison, transcription."""
