"""Chat-aware `llmkit generate` and `eval`, `generate --stats`, and `llmkit chat` from a pipe.

The model is a random-weight decoder whose tokenizer has ChatML's special tokens and a ChatML chat template
(with a default system line, as SmolLM2's), saved as a checkpoint here. The rendered prompts are checked
against transformers' ``apply_chat_template`` on the same files; the end-of-turn stop is shown with a
generation_config.json whose logit bias makes ``<|im_end|>`` the model's first choice. The same on the real
SmolLM2 (generate equals chat's first reply) is in test_real_models.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmkit import checkpoint
from llmkit.chat.template import ChatTemplate, chat_prompts, turn_settings
from llmkit.cli import main
from llmkit.config import GenerationConfig, ModelConfig
from llmkit.data.tokenizer import Tokenizer
from llmkit.models import build_model

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a tiny test model.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ROOT = Path(__file__).resolve().parents[1]


def chatml_tokenizer(base: Tokenizer) -> Tokenizer:
    """``base`` plus <|im_start|> and <|im_end|> as special tokens (ids 300 and 301)."""
    import tokenizers

    backend = tokenizers.Tokenizer.from_str(base.backend.to_str())
    backend.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    return Tokenizer(backend, base.special_tokens)


def save_decoder(tok: Tokenizer, out: Path, template: str | None, **generation) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig.from_name(
        "tiny-gpt-1m", vocab_size=tok.vocab_size, d_model=32, n_layer=2, n_head=4, max_seq_len=256,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    gen = GenerationConfig.for_model(cfg).replace(**generation)
    extra = {"chat_template.jinja": template.encode()} if template else None
    return checkpoint.save(build_model(cfg), out, tokenizer=tok, generation_config=gen, extra_files=extra)


@pytest.fixture(scope="module")
def chat_dir(tiny_tokenizer, tmp_path_factory) -> Path:
    return save_decoder(chatml_tokenizer(tiny_tokenizer), tmp_path_factory.mktemp("chatml") / "m", CHATML)


@pytest.fixture(scope="module")
def stops_at_turn_end(tiny_tokenizer, tmp_path_factory) -> Path:
    """The same model, but <|im_end|> (301) is everyone's first choice: a chat reply is one token long."""
    tok = chatml_tokenizer(tiny_tokenizer)
    return save_decoder(tok, tmp_path_factory.mktemp("eot") / "m", CHATML, logit_bias={301: 100.0})


@pytest.fixture(scope="module")
def plain_dir(tiny_checkpoint) -> Path:
    return tiny_checkpoint()  # no chat template


def generate_json(capsys, *argv: str) -> tuple[list[dict], str]:
    assert main(["generate", *argv, "--json"]) == 0
    out = capsys.readouterr()
    return [json.loads(line) for line in out.out.splitlines()], out.err


def one_line_error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_a_plain_prompt_is_a_user_turn_as_transformers_renders_it(chat_dir, capsys):
    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoTokenizer.from_pretrained(chat_dir)

    def reference(messages):
        return theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    [record], _ = generate_json(capsys, str(chat_dir), "Say hi", "--max-new-tokens", "3")
    assert record["prompt"] == reference([{"role": "user", "content": "Say hi"}])
    assert record["prompt"].startswith("<|im_start|>system\nYou are a tiny test model.")  # the template's default
    [record], _ = generate_json(capsys, str(chat_dir), "Say hi", "--system", "Be brief.", "--max-new-tokens", "3")
    assert record["prompt"] == reference(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}]
    )
    [record], _ = generate_json(capsys, str(chat_dir), "Say hi", "--raw", "--max-new-tokens", "3")
    assert record["prompt"] == "Say hi"


def test_messages_file_and_jsonl_conversations(chat_dir, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoTokenizer.from_pretrained(chat_dir)
    conversation = [
        {"role": "system", "content": "You count."},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "three?"},
    ]
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(conversation))
    expected = theirs.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    [record], _ = generate_json(capsys, str(chat_dir), "--messages", str(path), "--max-new-tokens", "2")
    assert record["prompt"] == expected
    lines = tmp_path / "prompts.jsonl"
    lines.write_text(json.dumps("plain") + "\n" + json.dumps({"messages": conversation}) + "\n")
    records, _ = generate_json(capsys, str(chat_dir), "--file", str(lines), "--max-new-tokens", "2")
    assert [r["prompt"] for r in records] == [
        theirs.apply_chat_template([{"role": "user", "content": "plain"}], tokenize=False, add_generation_prompt=True),
        expected,
    ]


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"role": "user"}', "messages must be a non-empty JSON list"),
        ("[]", "messages must be a non-empty JSON list"),
        ('[{"role": "user"}]', "message 0 needs a string 'content'"),
        ('[{"role": "wizard", "content": "x"}]', "message 0 has role 'wizard'"),
    ],
)
def test_bad_messages_files_are_one_line(chat_dir, tmp_path, capsys, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    assert message in one_line_error(capsys, "generate", str(chat_dir), "--messages", str(path))


def test_flag_conflicts_are_one_line(chat_dir, tmp_path, capsys):
    path = tmp_path / "m.json"
    path.write_text('[{"role": "user", "content": "x"}]')
    assert "--raw continues plain prompts" in one_line_error(
        capsys, "generate", str(chat_dir), "x", "--raw", "--system", "s"
    )
    assert "--raw continues plain prompts" in one_line_error(
        capsys, "generate", str(chat_dir), "--messages", str(path), "--raw"
    )
    assert "give one of PROMPT, --file or --messages" in one_line_error(
        capsys, "generate", str(chat_dir), "x", "--messages", str(path)
    )
    system_twice = tmp_path / "s.json"
    system_twice.write_text('[{"role": "system", "content": "a"}, {"role": "user", "content": "x"}]')
    err = one_line_error(capsys, "generate", str(chat_dir), "--messages", str(system_twice), "--system", "b")
    assert "has its own system message" in err


def test_without_a_template_prompts_stay_bare_unless_a_chat_is_asked_for(plain_dir, tmp_path, capsys):
    [record], _ = generate_json(capsys, str(plain_dir), "The cat", "--max-new-tokens", "3")
    assert record["prompt"] == "The cat"  # the old behaviour: a bare completion, no flag needed
    # --system (or a conversation) asks for a chat: the plain rendering `llmkit chat` and the server use
    [record], _ = generate_json(capsys, str(plain_dir), "The cat", "--system", "Be kind.", "--max-new-tokens", "3")
    assert record["prompt"] == "System: Be kind.\nUser: The cat\nAssistant:"
    assert ChatTemplate.for_model(plain_dir, None).stop == ["\nUser:"]
    settings = turn_settings(ChatTemplate(), None, [0], [])
    assert settings == {"stop_strings": ["\nUser:"]}  # the plain chat's reply ends at the next user line


def test_a_chat_reply_ends_at_the_templates_end_of_turn_token(stops_at_turn_end, capsys):
    model = str(stops_at_turn_end)
    tok = checkpoint.load(model).tokenizer
    template = ChatTemplate.for_model(model, tok)
    assert template.end_of_turn(tok) == tok.token_to_id("<|im_end|>") == 301
    [chat], _ = generate_json(capsys, model, "Say hi", "--max-new-tokens", "6")
    assert chat["token_ids"] == [301] and chat["finish_reason"] == "eos" and chat["completion"] == ""
    [raw], _ = generate_json(capsys, model, "Say hi", "--max-new-tokens", "6", "--raw")
    assert raw["token_ids"] == [301] * 6 and raw["finish_reason"] == "length"  # a bare completion does not stop


def test_echo_beams_and_constraints_work_on_the_rendered_prompt(chat_dir, capsys):
    model = str(chat_dir)
    rendered = chat_prompts(ChatTemplate.for_model(model, checkpoint.load(model).tokenizer), ["Say hi"])[0]
    assert main(["generate", model, "Say hi", "--max-new-tokens", "4", "--echo"]) == 0
    assert capsys.readouterr().out.startswith(rendered)
    [beam, _], _ = generate_json(capsys, model, "Say hi", "--max-new-tokens", "4", "--num-beams", "2",
                                 "--num-return-sequences", "2")  # fmt: skip
    assert beam["prompt"] == rendered
    [constrained], _ = generate_json(capsys, model, "Say hi", "--max-new-tokens", "8", "--regex", "[ab]{3}")
    assert constrained["prompt"] == rendered and re.fullmatch("[ab]{3}", constrained["completion"])
    assert main(["generate", model, "Say hi", "--max-new-tokens", "2", "--explain", "--json", "--top", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["prompt"] == rendered


def test_stats_count_the_generated_tokens(chat_dir, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('"The cat"\n"A banana is"\n')
    records, err = generate_json(capsys, str(chat_dir), "--file", str(prompts), "--max-new-tokens", "7", "--raw",
                                 "--stats", "--min-new-tokens", "7")  # fmt: skip
    generated = sum(len(r["token_ids"]) for r in records)
    first = re.search(r"stats: prompt (\d+) tokens, time to first token ([\d.]+) ms", err)
    total = re.search(r"stats: (\d+) tokens generated in ([\d.]+) s: (\d+) at the first step, (\d+) in ([\d.]+) s", err)
    assert first and total, err
    tok = checkpoint.load(chat_dir).tokenizer
    assert int(first[1]) == len(tok.encode("The cat")) + len(tok.encode("A banana is"))
    assert int(total[1]) == generated == 14 and int(total[3]) == 2 and int(total[4]) == 12
    # seconds print with 2 decimals: allow their rounding (a 24 ms run prints "0.02 s" beside "24.0 ms")
    assert 0 < float(first[2]) / 1000 <= float(total[2]) + 0.005 and float(total[5]) <= float(total[2]) + 0.01
    _, quiet = generate_json(capsys, str(chat_dir), "The cat", "--max-new-tokens", "3", "--no-stats")
    assert "stats:" not in quiet
    _, default = generate_json(capsys, str(chat_dir), "The cat", "--max-new-tokens", "3")
    assert "stats:" not in default  # stderr is not a terminal here: off by default


def test_chat_from_a_pipe_prints_replies_only(chat_dir):
    argv = [sys.executable, "-m", "llmkit", "chat", str(chat_dir), "--max-new-tokens", "5", "--history", "none"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, input="Say hi\n/reset\n", capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr
    assert "you>" not in done.stdout and "llmkit chat:" in done.stderr
    reply, cleared = done.stdout.rstrip("\n").rsplit("\n", 1)
    assert cleared == "(conversation cleared)"
    model = checkpoint.load(chat_dir)
    tok = model.tokenizer
    prompt = chat_prompts(ChatTemplate.for_model(chat_dir, tok), ["Say hi"])[0]
    from llmkit.inference import generate

    expected = generate(model, prompt, max_new_tokens=5, eos_token_id=[tok.eos_token_id, 301])[0].text
    assert reply == expected


EVAL_TASK = """
name = "toy-echo"
kind = "generation"
metrics = ["chrf"]
pool_size = 0
max_new_tokens = 4
chat = {chat}
[prompt]
template = "Repeat: {{input}}"
answer_cue = "Answer:"
[data]
path = "items.jsonl"
format = "jsonl"
input_field = "text"
label_field = "answer"
"""


def eval_task(tmp_path: Path, chat: str):
    from llmkit.evaluate.tasks import load_task

    (tmp_path / "items.jsonl").write_text("".join(json.dumps({"text": t, "answer": t}) + "\n" for t in ("cat", "dog")))
    (tmp_path / "task.toml").write_text(EVAL_TASK.format(chat=chat))
    return load_task(tmp_path / "task.toml")


@pytest.mark.parametrize("chat", ["true", '"auto"'])
def test_eval_renders_prompts_through_the_chat_template(chat_dir, tmp_path, chat, monkeypatch):
    from llmkit.evaluate import evaluator
    from llmkit.evaluate.checkpoint_eval import evaluate_checkpoint

    asked = []
    answer = evaluator.generate_answers
    monkeypatch.setattr(evaluator, "generate_answers", lambda *a, **kw: asked.append(kw) or answer(*a, **kw))
    report = evaluate_checkpoint(chat_dir, eval_task(tmp_path, chat), [0], progress=False, device="cpu")
    tok = checkpoint.load(chat_dir).tokenizer
    template = ChatTemplate.for_model(chat_dir, tok)
    assert report.chat and asked[0]["eos_token_id"] == [tok.eos_token_id, 301]  # replies end at <|im_end|>
    for item, record in zip(("cat", "dog"), report.results[0].predictions, strict=True):
        rendered = template.render([{"role": "user", "content": f"Repeat: {item}\nAnswer:"}])
        assert record["prompt_tokens"] == len(tok.encode(rendered))
    from llmkit.evaluate.preview import preview_prompt

    shown = preview_prompt(eval_task(tmp_path, chat), 0, text="cat", model=chat_dir).prompt
    assert shown.text == template.render([{"role": "user", "content": "Repeat: cat\nAnswer:"}])  # as eval builds it


def test_eval_chat_settings(chat_dir, plain_dir, tmp_path):
    from llmkit.errors import LlmkitError
    from llmkit.evaluate.checkpoint_eval import evaluate_checkpoint

    off = evaluate_checkpoint(chat_dir, eval_task(tmp_path, "false"), [0], progress=False, device="cpu")
    assert not off.chat
    tok = checkpoint.load(chat_dir).tokenizer
    assert off.results[0].predictions[0]["prompt_tokens"] == len(tok.encode("Repeat: cat\nAnswer:"))
    auto = evaluate_checkpoint(plain_dir, eval_task(tmp_path, '"auto"'), [0], progress=False, device="cpu")
    assert not auto.chat  # no template: the bare prompt
    with pytest.raises(LlmkitError, match="the model has no chat template"):
        evaluate_checkpoint(plain_dir, eval_task(tmp_path, "true"), [0], progress=False, device="cpu")
    with pytest.raises(LlmkitError, match="chat = 'yes'"):
        eval_task(tmp_path, '"yes"')
