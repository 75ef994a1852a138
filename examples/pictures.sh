#!/usr/bin/env bash
# The pictures in docs/visualize.md (`make pictures`): tokens, embeddings, attention and temperature
# for the quickstart model. Run `make quickstart` first; this only reads runs/quickstart/model.
set -euo pipefail
cd "$(dirname "$0")/.."
LLMKIT=${LLMKIT:-.venv/bin/llmkit}
MODEL=${MODEL:-runs/quickstart/model}
OUT=${OUT:-docs/images}
if [ ! -d "$MODEL" ]; then
  echo "no model in $MODEL: run \`make quickstart\` first" >&2
  exit 2
fi
mkdir -p "$OUT"

echo "== tokens"
$LLMKIT tokenize "$MODEL" "The tokenizer keeps common words such as return and print whole, but cuts naïve into pieces." \
  --plot "$OUT/tokens.png"

echo "== embeddings"
$LLMKIT embeddings "$MODEL" list dict tuple set string integer file path open read write close \
  --plot "$OUT/embeddings.png"

echo "== attention"
$LLMKIT attention "$MODEL" "def read_file(path): return open(path).read()" --layer 3 --all \
  --out "$OUT/attention.png"

echo "== temperature"
$LLMKIT generate "$MODEL" "A dictionary is" --max-new-tokens 8 --do-sample --top-k 12 --top-p 0.9 --seed 0 \
  --explain --plot "$OUT/temperature.png" --plot-position 0 --plot-temperatures 0.5,1.0,1.5 --plot-top 15

ls -l "$OUT"/tokens.png "$OUT"/embeddings.png "$OUT"/attention.png "$OUT"/temperature.png
