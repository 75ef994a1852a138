"""Real clients against a live `llmkit serve`: lm-eval's local-completions, LangChain and the openai SDK.

The model is a random-weight transformers GPT-2 with the tiny byte-level BPE and a chat template,
saved by transformers and converted by `llmkit convert --from-hf` (so the template's trip is tested
too). Log-likelihoods lm-eval reads through /v1/completions (echo + logprobs) must equal llmkit's
own scoring (``llmkit eval``'s) and transformers' on the same weights within 1e-4; a perplexity
through the API must equal ``llmkit eval --perplexity``'s.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import pytest
import torch
from serve_utils import LiveServer

from llmkit import checkpoint
from llmkit.cli import main as llmkit_main
from llmkit.inference import generate
from llmkit.serve.app import ServeSettings, create_app
from llmkit.serve.chat import ChatTemplate

transformers = pytest.importorskip("transformers")

NAME = "tiny-hf"
WINDOW = 256
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
MAX_LENGTH = 4096  # model_max_length in the source's tokenizer_config.json: it must survive both ways
QUESTIONS = [
    {"question": "The cat ate the", "choices": ["cake", "donut", "banana"], "answer": 0},
    {"question": "The dog ate the", "choices": ["donut", "cake", "yellow"], "answer": 0},
    {"question": "A banana is", "choices": ["yellow", "a cat", "中文"], "answer": 0},
    {"question": "def f(x):\n    return", "choices": ["x + 1", "x", "😀"], "answer": 0},
]  # lm-eval puts its target delimiter (a space) before each choice
STOPS = ["\n\n", "Q:", "###", "END", "."]  # five: more than OpenAI's four


@pytest.fixture(scope="module")
def hf_dir(tiny_tokenizer, tmp_path_factory) -> Path:
    """A transformers GPT-2 with random weights, its tokenizer (chat template, model_max_length) beside it."""
    from hf_utils import randomize

    bpe = tiny_tokenizer
    config = transformers.GPT2Config(
        vocab_size=bpe.vocab_size, n_positions=WINDOW, n_embd=32, n_layer=2, n_head=4,
        bos_token_id=bpe.bos_token_id, eos_token_id=bpe.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = randomize(transformers.GPT2LMHeadModel(config)).eval()
    out = tmp_path_factory.mktemp("hf") / "gpt2"
    model.save_pretrained(out)
    bpe.save(out)
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    tok_config.update(chat_template=TEMPLATE, model_max_length=MAX_LENGTH)
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config))
    return out


@pytest.fixture(scope="module")
def model_dir(hf_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("llmkit") / "tiny"
    assert llmkit_main(["convert", "--from-hf", str(hf_dir), str(out)]) in (0, None)
    return out


@pytest.fixture(scope="module")
def model(model_dir):
    return checkpoint.load(model_dir)


@pytest.fixture(scope="module")
def hf_model(hf_dir):
    return transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()


@pytest.fixture(scope="module")
def server(model, model_dir):
    roles = model.tokenizer.special_tokens
    special = {f"{role}_token": roles[role] for role in ("bos", "eos") if role in roles}
    settings = ServeSettings(name=NAME, max_batch=4, chat=ChatTemplate.from_dir(model_dir, special))
    live = LiveServer(create_app(model, settings))
    yield live
    live.close()


# ---- conversion keeps the chat template ---------------------------------------------------------
def test_conversion_keeps_the_chat_template_and_model_max_length_both_ways(hf_dir, model_dir, tmp_path):
    kept = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert kept["chat_template"] == TEMPLATE and kept["model_max_length"] == MAX_LENGTH
    back = tmp_path / "back"
    assert llmkit_main(["convert", "--to-hf", str(model_dir), str(back)]) in (0, None)
    tok = transformers.AutoTokenizer.from_pretrained(back)
    assert tok.chat_template == TEMPLATE and tok.model_max_length == MAX_LENGTH
    # a chat_template.jinja file (transformers' newer layout) is kept as well
    jinja_src = tmp_path / "jinja"
    jinja_src.mkdir()
    for f in hf_dir.iterdir():
        (jinja_src / f.name).write_bytes(f.read_bytes())
    config = json.loads((jinja_src / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (jinja_src / "tokenizer_config.json").write_text(json.dumps(config))
    (jinja_src / "chat_template.jinja").write_text(TEMPLATE.replace("<|assistant|>", "<|bot|>"))
    assert llmkit_main(["convert", "--from-hf", str(jinja_src), str(tmp_path / "from-jinja")]) in (0, None)
    assert ChatTemplate.from_dir(tmp_path / "from-jinja").source == TEMPLATE.replace("<|assistant|>", "<|bot|>")


def test_the_server_uses_the_converted_template(server, model):
    from openai import OpenAI

    api = OpenAI(base_url=f"{server.url}/v1", api_key="none")
    chat = api.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "hello"}], max_tokens=6, temperature=0
    )
    prompt = "<|user|>hello\n<|assistant|>"
    assert chat.choices[0].message.content == generate(model, prompt, max_new_tokens=6)[0].text
    tokens = httpx.post(f"{server.url}/tokenize", json={"messages": [{"role": "user", "content": "hello"}]}).json()
    assert tokens["tokens"] == model.tokenizer.encode(prompt) and tokens["max_model_len"] == WINDOW


# ---- lm-eval ------------------------------------------------------------------------------------
def write_tasks(directory: Path) -> Path:
    """A multiple-choice and a generate_until task over local JSON lines files (lm-eval's --include_path)."""
    directory.mkdir(parents=True, exist_ok=True)
    mc, gen = directory / "mc.jsonl", directory / "gen.jsonl"
    mc.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    gen.write_text("".join(json.dumps({"question": q["question"], "answer": "x"}) + "\n" for q in QUESTIONS))
    common = "dataset_path: json\ntest_split: test\ndoc_to_text: '{{question}}'\n"
    (directory / "mc.yaml").write_text(
        f"task: llmkit_mc\n{common}dataset_kwargs:\n  data_files:\n    test: {mc}\noutput_type: multiple_choice\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n"
    )
    (directory / "gen.yaml").write_text(
        f"task: llmkit_gen\n{common}dataset_kwargs:\n  data_files:\n    test: {gen}\noutput_type: generate_until\n"
        f"doc_to_target: '{{{{answer}}}}'\ngeneration_kwargs:\n  until: {json.dumps(STOPS)}\n  max_gen_toks: 12\n"
        "  do_sample: false\nmetric_list:\n  - metric: exact_match\n"
    )
    return directory


def run_lm_eval(server, hf_dir: Path, tasks_dir: Path, task: str, monkeypatch, **model_args) -> dict:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    batch_size = model_args.pop("batch_size", 1)  # simple_evaluate's argument (the CLI's --batch_size)
    args = {"model": NAME, "base_url": f"{server.url}/v1/completions", "tokenizer": str(hf_dir),
            "tokenizer_backend": "huggingface", "max_retries": 1, **model_args}  # fmt: skip
    return lm_eval.simple_evaluate(
        model="local-completions", model_args=",".join(f"{k}={v}" for k, v in args.items()), tasks=[task],
        task_manager=TaskManager(include_path=str(tasks_dir)), log_samples=True,
        batch_size=batch_size,
    )  # fmt: skip


def reference_scores(model, hf_model, pairs) -> dict[tuple[str, str], tuple[float, float]]:
    """(context, continuation) -> (llmkit eval's score, transformers' score) for each pair."""
    from llmkit.evaluate.scoring import make_request, score_requests

    requests = [make_request(model, ctx, cont) for ctx, cont in pairs]
    ours = score_requests(model, requests, progress=False)
    theirs = []
    with torch.no_grad():
        for r in requests:
            ids = torch.tensor([r.context + r.continuation])
            logp = hf_model(ids).logits[0, :-1].float().log_softmax(-1)
            picked = logp[torch.arange(len(r.context) - 1, ids.shape[1] - 1), ids[0, len(r.context) :]]
            theirs.append(float(picked.sum()))
    return {pair: (a, b) for pair, a, b in zip(pairs, ours, theirs, strict=True)}


@pytest.mark.parametrize("tokenized, batch", [(True, 1), (True, 4), (False, 1), (False, 4)])
def test_lm_eval_multiple_choice_log_likelihoods(server, hf_dir, model, hf_model, tmp_path, monkeypatch, tokenized,
                                                  batch):  # fmt: skip
    extra = {} if tokenized else {"tokenized_requests": False}
    out = run_lm_eval(server, hf_dir, write_tasks(tmp_path / "tasks"), "llmkit_mc", monkeypatch, batch_size=batch,
                      **extra)  # fmt: skip
    samples = out["samples"]["llmkit_mc"]
    assert len(samples) == len(QUESTIONS)
    reference = reference_scores(model, hf_model, [tuple(args) for sample in samples for args in sample["arguments"]])
    checked = 0
    for sample in samples:
        for (context, continuation), resp in zip(sample["arguments"], sample["resps"], strict=True):
            got = resp[0][0]
            ours, theirs = reference[(context, continuation)]
            assert got != 0.0 and got == pytest.approx(ours, abs=1e-4) and got == pytest.approx(theirs, abs=1e-4)
            checked += 1
    assert checked == sum(len(q["choices"]) for q in QUESTIONS)


def test_lm_eval_generate_until_with_five_stop_strings(server, hf_dir, model, tmp_path, monkeypatch):
    out = run_lm_eval(server, hf_dir, write_tasks(tmp_path / "tasks"), "llmkit_gen", monkeypatch)
    samples = out["samples"]["llmkit_gen"]
    assert len(samples) == len(QUESTIONS)
    for sample in samples:
        prompt = sample["arguments"][0][0]
        want = generate(model, prompt, max_new_tokens=12, stop_strings=STOPS + ["<|endoftext|>"])[0].text
        assert sample["resps"][0][0] == want


# ---- LangChain ----------------------------------------------------------------------------------
def test_langchain_chat_openai(server, model):
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(model=NAME, base_url=f"{server.url}/v1", api_key="none", max_tokens=8, temperature=0)
    want = generate(model, "<|user|>hello\n<|assistant|>", max_new_tokens=8)[0].text
    assert chat.invoke("hello").content == want
    assert "".join(chunk.content for chunk in chat.stream("hello")) == want
    assert [m.content for m in chat.batch(["hello", "hello"])] == [want, want]


def test_langchain_openai_llm(server, model):
    from langchain_openai import OpenAI

    llm = OpenAI(model=NAME, base_url=f"{server.url}/v1", api_key="none", max_tokens=8, temperature=0)
    want = {p: generate(model, p, max_new_tokens=8)[0].text for p in ("The cat", "A banana")}
    assert llm.invoke("The cat") == want["The cat"]
    assert llm.batch(["The cat", "A banana"]) == [want["The cat"], want["A banana"]]
    assert "".join(llm.stream("A banana")) == want["A banana"]


# ---- the openai SDK -----------------------------------------------------------------------------
def test_openai_echo_list_prompts_usage_and_models(server, model):
    from openai import OpenAI

    api = OpenAI(base_url=f"{server.url}/v1", api_key="none")
    assert api.models.retrieve(NAME).id == NAME
    scored = api.completions.create(model=NAME, prompt="The cat ate the cake", max_tokens=0, echo=True, logprobs=1)
    choice = scored.choices[0]
    ids = model.tokenizer.encode("The cat ate the cake")
    assert choice.text == "The cat ate the cake" and scored.usage.completion_tokens == 0
    assert choice.logprobs.token_logprobs[0] is None and len(choice.logprobs.token_logprobs) == len(ids)
    for token, offset in zip(choice.logprobs.tokens, choice.logprobs.text_offset, strict=True):
        assert choice.text[offset:].startswith(token)
    # prompts as strings, token ids and lists of token ids: one choice each, in order
    many = api.completions.create(model=NAME, prompt=["The cat", "A banana"], max_tokens=5, temperature=0)
    assert [c.text for c in many.choices] == [
        generate(model, p, max_new_tokens=5)[0].text for p in ["The cat", "A banana"]
    ]
    by_ids = api.completions.create(model=NAME, prompt=[ids, ids[:2]], max_tokens=5, temperature=0)
    assert [c.index for c in by_ids.choices] == [0, 1]
    assert by_ids.choices[0].text == generate(model, "The cat ate the cake", max_new_tokens=5)[0].text
    chunks = list(api.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0, stream=True,
        stream_options={"include_usage": True},
    ))  # fmt: skip
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4


def test_openai_penalties_and_logit_bias_follow_the_formula(server, model):
    """Greedy decoding with OpenAI's penalties and a logit bias equals a hand-written loop over the model's
    logits with the formula applied; and each setting changes the text (so none is silently ignored)."""
    from openai import OpenAI

    api = OpenAI(base_url=f"{server.url}/v1", api_key="none")
    ids = model.tokenizer.encode("The cat")
    plain = api.completions.create(model=NAME, prompt="The cat", max_tokens=12, temperature=0, logprobs=0)
    banned = model.tokenizer.encode(plain.choices[0].text)[0]
    settings = [dict(presence_penalty=1.5), dict(frequency_penalty=2.0), dict(logit_bias={str(banned): -100}),
                dict(presence_penalty=-0.5, frequency_penalty=1.0, logit_bias={str(banned): 3.0})]  # fmt: skip
    for setting in settings:
        got = api.completions.create(model=NAME, prompt="The cat", max_tokens=12, temperature=0, **setting)
        want = reference_decode(model, ids, 12, **setting)
        assert got.choices[0].text == model.tokenizer.decode(want)
        assert got.choices[0].text != plain.choices[0].text, setting


def reference_decode(model, ids, n, presence_penalty=0.0, frequency_penalty=0.0, logit_bias=None) -> list[int]:
    """Greedy, recomputing the whole sequence each step: logits[j] += bias[j]; logits[j] -= c[j] * frequency +
    (c[j] > 0) * presence, c counting j among the generated tokens (OpenAI's formula)."""
    out: list[int] = []
    eos = set(model.generation_config.eos_token_id)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids + out])).logits[0, -1].float()
            for token, bias in (logit_bias or {}).items():
                logits[int(token)] += bias
            for token in set(out):
                logits[token] -= out.count(token) * frequency_penalty + presence_penalty
            out.append(int(logits.argmax()))
            if out[-1] in eos:
                break
    return [t for t in out if t not in eos]


# ---- perplexity ---------------------------------------------------------------------------------
def test_perplexity_through_completions_equals_llmkit_eval(server, model_dir, tmp_path, capsys):
    from openai import OpenAI

    from llmkit.evaluate.checkpoint_eval import checkpoint_perplexity

    text = "The cat ate the cake. The dog ate the donut. A banana is yellow. def f(x):\n    return x + 1\n"
    path = tmp_path / "text.txt"
    path.write_text(text)
    api = OpenAI(base_url=f"{server.url}/v1", api_key="none")
    scored = api.completions.create(model=NAME, prompt=text, max_tokens=0, echo=True, logprobs=0)
    logprobs = scored.choices[0].logprobs.token_logprobs[1:]
    through_api = math.exp(-sum(logprobs) / len(logprobs))
    assert through_api == pytest.approx(checkpoint_perplexity(model_dir, path, progress=False).perplexity, rel=1e-5)
    assert llmkit_main(["eval", str(model_dir), "--perplexity", str(path), "--no-progress"]) in (0, None)
    printed = float(capsys.readouterr().out.split()[1])  # "perplexity 358.766 (mean NLL ..."
    assert printed == pytest.approx(through_api, abs=1e-3)  # printed with 3 decimals
