#!/usr/bin/env bash
# The main job on a fresh machine, no download: the documentation and standard-library source every
# Python installation carries -> a byte-level BPE tokenizer -> token shards -> a pretrained tiny
# Llama-style decoder (validation perplexity before and after) -> completions of three prompts,
# greedy and sampled. The corpus is 96% standard-library source, so the prompts are the openings of
# Python code; greedy decoding of a model this small repeats itself (lines of "#"), so it runs with a
# repetition penalty (transformers' rule: scores of tokens already in the text divided by 1.3).
set -euo pipefail
cd "$(dirname "$0")/.."
LLMKIT=${LLMKIT:-.venv/bin/llmkit}
OUT=runs/quickstart
start=$(date +%s)
if [ -d "$OUT" ]; then  # each run starts over, so `make quickstart` can be repeated
  echo "removing the previous run in $OUT"
  rm -rf "$OUT"
fi

echo "== 1/4 tokenizer: byte-level BPE on the built-in corpus"
$LLMKIT tokenizer train --builtin python-docs --builtin python-stdlib --kind bpe --vocab-size 4096 \
  --out "$OUT/tokenizer"

echo "== 2/4 data: token shards with a validation split"
$LLMKIT data tokenize builtin:python-docs builtin:python-stdlib --tokenizer "$OUT/tokenizer" --out "$OUT/data"

echo "== 3/4 pretrain: causal LM (configs/quickstart.toml)"
$LLMKIT pretrain --config configs/quickstart.toml

echo "== 4/4 completions"
PROMPTS="$OUT/prompts.jsonl"
printf '%s\n' '"def read_file(path):"' '"class Stack:"' '"    def __init__(self, name):"' > "$PROMPTS"
echo "-- greedy, repetition penalty 1.3"
$LLMKIT generate "$OUT/model" --file "$PROMPTS" --max-new-tokens 40 --repetition-penalty 1.3 --echo
echo "-- sampled (temperature 0.7, top-p 0.9, repetition penalty 1.1, seed 0)"
$LLMKIT generate "$OUT/model" --file "$PROMPTS" --max-new-tokens 40 --do-sample --temperature 0.7 --top-p 0.9 \
  --repetition-penalty 1.1 --seed 0 --echo
echo "quickstart finished in $(( $(date +%s) - start )) s; model in $OUT/model"
