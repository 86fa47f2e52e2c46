"""`moonlora import`: the corpora users have (LibriSpeech, Common Voice, Kaldi, Hugging Face, rows, folders) as 16 kHz WAV clips and NeMo manifests.

- `layouts`: which layout a SOURCE has, and the readers of the file-based layouts (index files
  only: no audio is decoded while reading);
- `hf`: Hugging Face datasets (a `save_to_disk` folder, parquet/arrow files, a hub id), read with
  `Audio(decode=False)` so no FFmpeg is needed;
- `items`: what every reader yields (`Item`, `AudioRef`, `Skip`), decoding to 16 kHz mono PCM and
  the text modes;
- `run`: the import itself (sampling, clips written atomically, duplicates, manifests, the report,
  resume after a kill).
"""
