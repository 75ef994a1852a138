"""`llmkit chat` driven through a pseudo-terminal as a person would (prompt_toolkit reads the keys), and its
session logic (llmkit/chat/session.py) checked directly: commands, window fitting, the transcript file.

The pty test runs the real command in a child process whose controlling terminal is the pty, so Enter is
"\\r", Ctrl-C is the terminal's interrupt character (SIGINT from the line discipline, not a signal the test
sends) and Ctrl-D ends input. The model is a random-weight decoder with a long window, and EOS is switched
off with /set, so a reply runs to max_new_tokens: long enough to be interrupted mid-way.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import sys
import termios
import time
from pathlib import Path

import pytest
import torch

from llmkit.chat.session import ChatSession, handle, save, transcript
from llmkit.chat.template import ChatTemplate
from llmkit.config import GenerationConfig
from llmkit.errors import LlmkitError

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]|\r")


class Terminal:
    """A child process on a pseudo-terminal: ``send`` keys, ``expect`` a regex in the screen text."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the pty is its controlling terminal, stdin, stdout and stderr
            os.execvpe(argv[0], argv, env)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
        self.seen = ""  # all screen text so far, escape sequences removed
        self.exit_code: int | None = None

    def read(self, timeout: float) -> str:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return ""
        try:
            data = os.read(self.fd, 65536).decode("utf-8", "replace")
        except OSError:  # the child exited and the pty closed
            return ""
        self.seen += ANSI.sub("", data)
        return data

    def expect(self, pattern: str, after: int, timeout: float = 90) -> re.Match:
        """The first match of ``pattern`` in the text after position ``after``."""
        deadline = time.monotonic() + timeout
        while (found := re.compile(pattern).search(self.seen, after)) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout}s; screen after {after}: {self.seen[after:]!r}")
            self.read(0.2)
        return found

    def send(self, keys: str) -> int:
        """Type ``keys``; returns where the screen text stood, for the next ``expect``."""
        mark = len(self.seen)
        os.write(self.fd, keys.encode())
        return mark

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.read(0.1)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.exit_code = os.waitstatus_to_exitcode(status)
                return self.exit_code
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError(f"the chat did not exit; screen: {self.seen[-500:]!r}")


@pytest.fixture(scope="module")
def chat_model(tiny_tokenizer, tmp_path_factory) -> Path:
    from hf_utils import randomize

    from llmkit import checkpoint
    from llmkit.config import ModelConfig
    from llmkit.models import build_model

    bpe = tiny_tokenizer
    torch.manual_seed(0)
    cfg = ModelConfig.from_name(
        "tiny-gpt-1m", vocab_size=bpe.vocab_size, d_model=128, n_layer=4, n_head=4, max_seq_len=4096,
        bos_token_id=bpe.bos_token_id, eos_token_id=bpe.eos_token_id, pad_token_id=bpe.pad_token_id,
    )  # fmt: skip
    out = tmp_path_factory.mktemp("chat") / "model"
    return checkpoint.save(
        randomize(build_model(cfg)), out, tokenizer=bpe, generation_config=GenerationConfig.for_model(cfg)
    )


def test_chat_through_a_pseudo_terminal(chat_model, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "LLMKIT_THREADS": "1",
           "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1", "HOME": str(tmp_path)}  # fmt: skip
    history = tmp_path / "history"
    term = Terminal([sys.executable, "-m", "llmkit", "chat", str(chat_model), "--max-new-tokens", "100",
                     "--history", str(history)], env)  # fmt: skip
    try:
        term.expect(r"4096-token window, the plain template", 0, timeout=120)
        term.expect(r"you>", 0)
        at = term.send("/set eos_token_id []\r")  # replies now run to max_new_tokens
        at = term.expect(r"\(eos_token_id = \[\]\)\nyou>", at).end()
        # three turns, each streamed to the end and followed by a fresh prompt
        for word in ("first", "second", "third"):
            at = term.send(f"the {word} message\r")
            at = term.expect(rf"the {word} message\n", at).end()
            end = term.expect(r"you>", at)
            assert len(term.seen[at : end.start()].strip()) > 20  # a reply came between the message and the prompt
            at = end.end()
        assert "dropped" not in term.seen
        # the window (4096) no longer holds the conversation and a 3900-token reply: the oldest turns go
        at = term.send("/set max_new_tokens 3900\r")
        at = term.expect(r"\(max_new_tokens = 3900\)\nyou>", at).end()  # keys go to the prompt once it is up
        at = term.send("the fourth message\r")
        at = term.expect(r"\(context window: dropped the (\d+ )?oldest turns? to fit 4096 tokens\)", at).end()
        term.expect(r"[^\s]{10}", at)  # the reply has started...
        at = term.send("\x03")  # ...and Ctrl-C stops it, not the program
        at = term.expect(r"\[reply stopped\]\n", at).end()
        at = term.expect(r"you>", at).end()
        at = term.send("/reset\r")
        at = term.expect(r"\(conversation cleared\)\nyou>", at).end()
        at = term.send("/set max_new_tokens 5\r")
        at = term.expect(r"\(max_new_tokens = 5\)\nyou>", at).end()
        at = term.send("after the reset\r")
        at = term.expect(r"after the reset\n", at).end()
        at = term.expect(r"you>", at).end()
        saved = tmp_path / "chat.json"
        at = term.send(f"/save {saved}\r")
        term.expect(r"\(saved 2 messages to .*\nyou>", at)
        term.send("\x04")  # Ctrl-D leaves
        assert term.wait() == 0
    finally:
        if term.exit_code is None:  # a failed step: do not leave the chat running
            os.kill(term.pid, signal.SIGKILL)
            os.waitpid(term.pid, 0)
    data = json.loads(saved.read_text())
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"]
    assert data["messages"][0]["content"] == "after the reset" and data["generation_config"]["max_new_tokens"] == 5
    assert data["dropped_turns"] >= 1  # /reset clears the turns, not the count of turns the window dropped
    assert "the first message" in history.read_text()  # prompt_toolkit kept the typed lines


# ---- session logic without a terminal -----------------------------------------------------------
def session(window: int = 60, max_new: int = 10, source: str | None = None) -> ChatSession:
    config = GenerationConfig(max_new_tokens=max_new, eos_token_id=[0])
    return ChatSession(ChatTemplate(source), config, window, lambda text: len(text.split()))  # a word a token


def test_fit_drops_whole_turns_oldest_first():
    s = session(window=50, max_new=10)  # 40 words of prompt; a turn is 14 ("User:" and "Assistant:" count)
    for i in range(3):
        assert handle(s, f"message {i} " + "w " * 5).prompt is not None
        s.turns.append({"role": "assistant", "content": f"reply {i} " + "r " * 3})
    out = handle(s, "message 3")
    assert out.text == "(context window: dropped the oldest turn to fit 50 tokens)"
    assert [t["content"].split()[1] for t in s.turns] == ["1", "1", "2", "2", "3"]  # turn 0 and its reply went
    assert out.prompt == s.template.render(s.messages()) and len(out.prompt.split()) <= 40
    s.system = "be " * 20
    out = handle(s, "message 4")
    assert out.text.startswith("(context window: dropped the 2 oldest turns")


def test_a_message_longer_than_the_window_is_refused_and_forgotten():
    s = session(window=20, max_new=10)
    out = handle(s, "w " * 30)
    assert out.prompt is None and out.text.startswith("error: the message needs") and "max_new_tokens" in out.text
    assert s.turns == []


def test_commands(tmp_path):
    s = session()
    assert handle(s, "/set temperature 0.7").text == "(temperature = 0.7; sampling turned on)"
    assert s.config.do_sample and s.config.temperature == 0.7
    assert handle(s, "/set top_k 5").text == "(top_k = 5)"
    assert handle(s, '/set stop_strings ["END"]').text == '(stop_strings = ["END"])'
    for line, message in [
        ("/set temperature -1", "error: generation config: temperature=-1 must be >= 0"),
        ("/set tempreature 1", "error: unknown generation setting(s) tempreature"),
        ("/set top_k", "error: /set top_k needs a value"),
        ("/frobnicate", "error: unknown command /frobnicate"),
        ("/save", "error: /save needs a file name"),
        (f"/save {tmp_path}/no/such/dir/x.json", "error: cannot write"),
    ]:
        assert handle(s, line).text.startswith(message), (line, handle(s, line).text)
    assert s.config.temperature == 0.7  # a refused /set changes nothing
    assert "temperature = 0.7" in handle(s, "/set").text
    assert handle(s, "/system You are terse.").text == "(system prompt set: You are terse.)"
    assert handle(s, "hello").prompt == "System: You are terse.\nUser: hello\nAssistant:"
    assert s.generation_config().stop_strings == ["END", "\nUser:"]  # the plain template's stop string is added
    assert handle(s, "//set is a message").prompt.endswith("User: /set is a message\nAssistant:")
    assert handle(s, "/reset").text == "(conversation cleared)" and s.turns == [] and s.system == "You are terse."
    assert handle(s, "/quit").quit and handle(s, "   ").prompt is None
    handle(s, "hi")
    path = save(s, tmp_path / "t.json")
    assert json.loads(path.read_text()) == transcript(s) and transcript(s)["messages"][0]["role"] == "system"


def test_template_errors_do_not_end_the_chat():
    s = session(source="{{ raise_exception('roles must alternate') }}")
    out = handle(s, "hello")
    assert out.prompt is None and "roles must alternate" in out.text
    with pytest.raises(LlmkitError):
        s.template.render([{"role": "user", "content": "x"}])


# ---- --index: retrieval per turn ----------------------------------------------------------------
def _hit(n: int, text: str):
    from llmkit.retrieval.store import Hit

    return Hit(n, f"doc{n}.txt", 10 * n, 10 * n + len(text), text, 1.0 / n)


def test_each_message_carries_its_sources_and_the_conversation_keeps_it_plain():
    asked = []
    hits = [_hit(1, "cats sleep all day"), _hit(2, "ships sail at dawn"), _hit(3, "bread needs yeast")]
    s = session(window=200, max_new=10)
    s.retrieve = lambda question: asked.append(question) or hits
    out = handle(s, "why do cats sleep?")
    assert asked == ["why do cats sleep?"] and out.sources == hits and out.text == ""
    assert "[1] (doc1.txt:10-28)\ncats sleep all day" in out.prompt and "[3] (doc3.txt:30-47)" in out.prompt
    assert out.prompt.rstrip().endswith("Question: why do cats sleep?\nAssistant:")
    assert s.turns == [{"role": "user", "content": "why do cats sleep?"}]  # not the sources
    s.turns.append({"role": "assistant", "content": "they are cats [1]"})
    from llmkit.retrieval.ask import user_message

    two = s.template.render(s.messages([*s.turns, {"role": "user", "content": user_message("and ships?", hits[:2])}]))
    s.window = len(two.split()) + 10  # room for the question, two sources and max_new_tokens, not three sources
    out = handle(s, "and ships?")
    assert out.sources == hits[:2] and out.text == "(context window: 1 of 3 sources left out)"
    assert out.prompt.count("why do cats sleep?") == 1  # the earlier turn, without its sources


def test_citations_name_what_the_reply_cites():
    from llmkit.chat.terminal import citations

    hits = [_hit(1, "a"), _hit(2, "b")]
    assert citations("as [2] says", hits) == "cited:\n[2] doc2.txt:20-21\n"
    assert (
        citations("no idea", hits)
        == "sources (the reply cites none by number):\n[1] doc1.txt:10-11\n[2] doc2.txt:20-21\n"
    )


def test_chat_index_through_a_pipe(chat_model, tiny_corpus, tmp_path):
    """`llmkit chat MODEL --index INDEX` from a pipe: the reply is followed by its sources from the index."""
    from llmkit import checkpoint
    from llmkit.config import ModelConfig
    from llmkit.data.tokenizer_train import train_tokenizer
    from llmkit.models import build_model
    from llmkit.retrieval.chunk import ChunkConfig
    from llmkit.retrieval.documents import build_index
    from llmkit.retrieval.embed import Embedder

    doc = tmp_path / "cats.txt"
    doc.write_text("Cats sleep for most of the day. A cat purrs when it is content. Kittens play with yarn.\n")
    wordpiece = train_tokenizer(tiny_corpus + [doc.read_text()] * 5, "wordpiece", vocab_size=400)
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("tiny-bert-1m", vocab_size=wordpiece.vocab_size, d_model=32, n_layer=2, n_head=4,
                                encoder_head="none", max_seq_len=64)  # fmt: skip
    encoder = checkpoint.save(build_model(cfg), tmp_path / "enc", tokenizer=wordpiece)
    build_index(tmp_path / "index.db", Embedder.load(encoder), [str(doc)], ChunkConfig(tokens=12, overlap=4))
    argv = [sys.executable, "-m", "llmkit", "chat", str(chat_model), "--index", str(tmp_path / "index.db"), "-k", "2",
            "--max-new-tokens", "8", "--history", "none"]  # fmt: skip
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(argv, input="why do cats purr?\n", capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr
    assert f"sources from {tmp_path / 'index.db'}" in done.stderr  # the banner: stdout carries replies only
    listed = re.findall(rf"^\[(\d)\] {re.escape(str(doc))}:\d+-\d+$", done.stdout, re.M)
    assert listed in (["1", "2"], ["1"], ["2"])  # the cited ones, or both when the reply cites none
    bad = subprocess.run([*argv[:5], "--index", str(tmp_path / "missing.db")], capture_output=True, text=True,
                         timeout=120, env=env)  # fmt: skip
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
