#!/usr/bin/env bash
# The README's "bundled base (no adapter) | onnxruntime int8 | 0.9098 | ... 99/99 identical" row:
# the bundled base-en scored through torch (fp32) and through its own int8 .ort graphs (onnxruntime)
# on the ATC test set of docs/training.md (synth --n 300 --seed 0: 99 clips, three unseen voices),
# then compared clip by clip. Writes benchmarks/ort_parity.json (moonlora compare --json).
#
#     bash benchmarks/ort_parity.sh [WORK_DIR]     # WORK_DIR default: a new temporary folder
set -euo pipefail
work="${1:-$(mktemp -d -t moonlora-ort-parity-XXXXXX)}"
here="$(cd "$(dirname "$0")" && pwd)"
uv run moonlora --quiet synth --n 300 --seed 0 --out "$work/atc"
uv run moonlora --quiet transcribe --manifest "$work/atc/test.jsonl" --model bundled:base-en \
    --device cpu --output-dir "$work/torch"
uv run moonlora --quiet transcribe --manifest "$work/atc/test.jsonl" --model ort:bundled:base-en \
    --device cpu --output-dir "$work/ort"
uv run moonlora compare "$work/torch" "$work/ort" --allow runtime --allow model_sha256 \
    --json "$here/ort_parity.json" --overwrite
