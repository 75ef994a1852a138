#!/usr/bin/env bash
# The main job on a fresh machine, no download: the Python documentation every installation carries
# -> a byte-level BPE tokenizer -> a freshly initialized model that ships with it -> its summary.
# (Pretraining and completions join this script with the pretraining and generation issues.)
set -euo pipefail
cd "$(dirname "$0")/.."
LLMKIT=${LLMKIT:-.venv/bin/llmkit}
OUT=${OUT:-runs/quickstart}

$LLMKIT tokenizer train --builtin python-docs --kind bpe --vocab-size 4096 --out "$OUT/tokenizer"
$LLMKIT init tiny-gpt-1m "$OUT/model" --tokenizer "$OUT/tokenizer" --seed 0
$LLMKIT inspect "$OUT/model"
