"""llmkit.evaluate: label log-likelihoods against log-probabilities computed by hand (llmkit's model and
transformers'), metrics against their reference libraries, sliding-window perplexity, and `llmkit eval`
end to end on GPT-2 and T5 checkpoints converted from transformers models with random weights."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
import transformers  # test-only dependency: llmkit itself never imports it
from hf_utils import randomize

from llmkit import checkpoint
from llmkit.cli import main
from llmkit.config import ModelConfig
from llmkit.data.tokenizer_train import train_tokenizer
from llmkit.errors import LlmkitError
from llmkit.evaluate import metrics
from llmkit.evaluate.evaluator import evaluate_task
from llmkit.evaluate.perplexity import perplexity, windows
from llmkit.evaluate.readers import load_data
from llmkit.evaluate.report import table
from llmkit.evaluate.scoring import Request, make_request, parse_label, score_requests
from llmkit.evaluate.tasks import answer_reserve, load_task
from llmkit.hf import from_hf
from llmkit.models import build_model

REVIEWS = [
    ("a gorgeous , witty , seductive movie .", 1),
    ("the story is too thin to carry the film .", 0),
    ("one of the most delightful films of the year .", 1),
    ("dull , lifeless and overlong .", 0),
    ("a warm and funny portrait of a family .", 1),
    ("it never finds its footing or its heart .", 0),
    ("an absolute joy from start to finish .", 1),
    ("tedious and predictable in every way .", 0),
    ("smart , moving and beautifully acted .", 1),
    ("a mess of a movie with nothing to say .", 0),
    ("the cast is wonderful and the script sings .", 1),
    ("boring , boring , boring .", 0),
]
TEXTS = [r for r, _ in REVIEWS] + ["Classify the sentiment. Review: Sentiment: positive negative"] * 3

SENTIMENT_TASK = """
name = "toy-sentiment"
kind = "classification"
metrics = ["accuracy", "macro_f1"]
selection = "balanced"
pool_size = 4
[prompt]
instruction = "Classify the sentiment."
template = "Review: {input}"
answer_cue = "Sentiment:"
[labels]
0 = "negative"
1 = "positive"
[data]
path = "reviews.tsv"
format = "tsv"
input_field = "sentence"
label_field = "label"
"""


@pytest.fixture(scope="module")
def sentiment_task(tmp_path_factory):
    """A TSV in SST-2's layout and a task file for it, written here (the tests never need ../shared)."""
    directory = tmp_path_factory.mktemp("task")
    (directory / "reviews.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in REVIEWS))
    path = directory / "sentiment.toml"
    path.write_text(SENTIMENT_TASK)
    return path


def hf_gpt2(vocab: int):
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=vocab, n_positions=512,
                                     bos_token_id=0, eos_token_id=0)  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def hf_t5(vocab: int):
    config = transformers.T5Config(
        vocab_size=vocab, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0, pad_token_id=0,
        eos_token_id=1, decoder_start_token_id=0,
    )  # fmt: skip
    return transformers.T5ForConditionalGeneration(config)


@pytest.fixture(scope="module", params=["gpt2", "t5"])
def converted(request, tmp_path_factory):
    """(transformers model, llmkit checkpoint dir): random weights, saved with save_pretrained beside an
    llmkit-trained tokenizer, converted by `from_hf`."""
    kind = "bpe" if request.param == "gpt2" else "unigram"
    tok = train_tokenizer(TEXTS * 3, kind, 300)
    torch.manual_seed(0)
    hf = randomize((hf_gpt2 if request.param == "gpt2" else hf_t5)(tok.vocab_size))
    tmp = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(tmp / "hf")
    tok.save(tmp / "hf")
    from_hf(tmp / "hf", tmp / "ours")
    return hf, tmp / "ours"


# ---- label log-likelihood ---------------------------------------------------------------------
def hand_scores(model, requests: list[Request]) -> list[float]:
    """One unpadded forward pass per request; the log-probability of each continuation token read off the
    position that predicts it. The same code serves llmkit's and transformers' models."""
    seq2seq = getattr(model.config, "family", None) == "encoder_decoder" or getattr(
        model.config, "is_encoder_decoder", False
    )
    out = []
    for r in requests:
        with torch.no_grad():
            if seq2seq:  # the encoder reads the context; teacher-forced decoding from the start token
                dec = torch.tensor([[model.config.decoder_start_token_id, *r.continuation[:-1]]])
                rows = model(torch.tensor([r.context]), decoder_input_ids=dec).logits[0]
            else:  # position i predicts token i + 1
                logits = model(torch.tensor([r.context + r.continuation])).logits[0]
                rows = logits[len(r.context) - 1 :]
        logprobs = F.log_softmax(rows.double(), dim=-1)
        out.append(sum(float(logprobs[j, t]) for j, t in enumerate(r.continuation)))
    return out


def test_label_scores_equal_log_probabilities_by_hand(converted):
    hf, directory = converted
    model = checkpoint.load(directory)
    prompts = ["Review: dull and overlong .\nSentiment:", "Classify the sentiment.\n\nReview: a joy .\nSentiment:"]
    requests = [make_request(model, p, w) for p in prompts for w in (" positive", " negative", " so-so")]
    assert len({len(r.context) + len(r.continuation) for r in requests}) > 1  # the batch is padded
    scores = score_requests(model, requests, batch_size=4, progress=False)
    ours_by_hand = hand_scores(model, requests)
    transformers_by_hand = hand_scores(hf, requests)
    assert scores == pytest.approx(ours_by_hand, abs=1e-4)
    assert scores == pytest.approx(transformers_by_hand, abs=1e-4)
    assert all(s < 0 for s in scores)


class _Bar:
    """Stands in for tqdm: records the bar's total, unit and updates."""

    made: list = []

    def __init__(self, total=None, unit="it", **_kwargs):
        self.total, self.unit, self.n = total, unit, 0
        _Bar.made.append(self)

    def update(self, n=1):
        self.n += n

    def __enter__(self):
        return self

    def __exit__(self, *_exc):
        return False


def test_progress_counts_items_not_batches(converted, monkeypatch):
    """Three prompts x three labels: the bar counts 3 items, each done once its 3 requests are scored,
    in batches of 4 requests that cut across items."""
    from llmkit.evaluate import scoring

    _, directory = converted
    model = checkpoint.load(directory)
    monkeypatch.setattr(scoring, "tqdm", _Bar)
    _Bar.made = []
    prompts = ["Review: dull .\nSentiment:", "Review: a joy .\nSentiment:", "Review: fine, long .\nSentiment:"]
    requests = [make_request(model, p, w) for p in prompts for w in (" positive", " negative", " so-so")]
    score_requests(model, requests, batch_size=4, per_item=3)
    scoring.generate_answers(model, prompts, 2, [], batch_size=2)
    (scored, generated) = _Bar.made
    assert (scored.total, scored.unit, scored.n) == (3, "item", 3)
    assert (generated.total, generated.unit, generated.n) == (3, "item", 3)


def test_decoder_pairs_are_split_like_the_harness(converted):
    _, directory = converted
    model = checkpoint.load(directory)
    tok = model.tokenizer
    request = make_request(model, "Sentiment: ", "positive")  # the trailing space moves to the continuation
    if model.config.family == "decoder":
        assert request.context == tok.encode("Sentiment:")
        assert request.context + request.continuation == tok.encode("Sentiment: positive")
    else:  # T5: the prompt (with </s>) in the encoder, the stripped label (with </s>) as the decoder's target
        assert request.context == tok.encode("Sentiment: ")
        assert request.continuation == tok.encode("positive") and request.continuation[-1] == tok.eos_token_id


def test_parse_label_takes_the_first_label_word():
    words = ["negative", "positive", "neutral"]
    assert parse_label("Positive, clearly.", words) == 1
    assert parse_label("it is not positive but negative", words) == 1
    assert parse_label("the word negatively is not a label; neutral is", words) == 2
    assert parse_label("no idea", words) is None


# ---- `llmkit eval` end to end -------------------------------------------------------------------
def macro_f1_by_hand(predictions: list[dict]) -> float:
    """From the confusion counts of (label, predicted) pairs: per class 2 TP / (2 TP + FP + FN), averaged
    over the classes that occur as a label or a prediction."""
    pairs = [(p["label"], p["predicted"]) for p in predictions]
    classes = {g for g, _ in pairs} | {y for _, y in pairs if y is not None}
    scores = []
    for c in sorted(classes):
        tp = sum(1 for g, y in pairs if g == c and y == c)
        fp = sum(1 for g, y in pairs if g != c and y == c)
        fn = sum(1 for g, y in pairs if g == c and y != c)
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def test_eval_command_on_converted_gpt2_and_t5(converted, sentiment_task, tmp_path, capsys):
    _, directory = converted
    out = tmp_path / "eval"
    args = ["eval", str(directory), str(sentiment_task), "--shots", "0,1,2", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "shots" in printed and "accuracy" in printed and "chance accuracy 0.500" in printed
    report = json.loads((out / "results.json").read_text())
    assert [r["shots"] for r in report["results"]] == [0, 1, 2] and report["method"] == "loglikelihood"
    for r in report["results"]:
        assert r["n"] == len(REVIEWS) - 4  # 4 went to the demonstration pool
        assert r["metrics"]["accuracy"] == r["counts"]["correct"] / r["n"]
        assert r["metrics"]["macro_f1"] == pytest.approx(macro_f1_by_hand(r["predictions"]), abs=1e-12)
        labels = {"negative": "0", "positive": "1"}  # loglikelihood: the prediction is the best-scored label
        assert all(p["predicted"] == labels[max(p["scores"], key=p["scores"].get)] for p in r["predictions"])
        assert all(p["shots_shown"] == r["shots"] for p in r["predictions"])
        assert all(set(p["scores"]) == {"negative", "positive"} for p in r["predictions"])
    assert (out / "shots.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    item = report["results"][2]["predictions"][-1]  # `llmkit prompt --index` rebuilds eval's prompt for an item
    assert (
        main(["prompt", str(sentiment_task), "--shots", "2", "--index", str(item["index"]), "--model", str(directory)])
        == 0
    )
    assert f"2-shot prompt, {item['prompt_tokens']} tokens" in capsys.readouterr().out
    gen = ["eval", str(directory), str(sentiment_task), "--shots", "1", "--method", "generate", "--limit", "3"]
    assert main([*gen, "--out", str(tmp_path / "gen"), "--no-progress"]) == 0
    report = json.loads((tmp_path / "gen" / "results.json").read_text())
    assert report["method"] == "generate" and report["results"][0]["n"] == 3
    assert all("output" in p for p in report["results"][0]["predictions"])


def test_eval_warns_when_items_and_demonstrations_are_one_file(converted, sentiment_task, tmp_path, capsys):
    """The same file as items and demonstrations leaks answers into prompts: eval and prompt warn; zero-shot,
    a separate file or the task's own hold-out do not."""
    _, directory = converted
    data = str(sentiment_task.parent / "reviews.tsv")
    base = ["eval", str(directory), str(sentiment_task), "--limit", "2", "--no-progress", "--out", str(tmp_path / "e")]
    assert main([*base, "--shots", "1", "--examples", data]) == 0
    err = capsys.readouterr().err
    assert "llmkit eval: warning: the items and the demonstrations are the same file" in err and "1-shot" in err
    assert main(["prompt", str(sentiment_task), "--shots", "2", "--examples", data]) == 0
    assert "llmkit prompt: warning: the items and the demonstrations are the same file" in capsys.readouterr().err
    other = tmp_path / "pool.tsv"
    other.write_text((sentiment_task.parent / "reviews.tsv").read_text())
    for extra in (["--shots", "0", "--examples", data], ["--shots", "1", "--examples", str(other)], ["--shots", "1"]):
        assert main([*base, *extra]) == 0
        assert "warning" not in capsys.readouterr().err


def test_eval_errors_are_one_line(converted, sentiment_task, capsys):
    _, directory = converted
    assert main(["eval", str(directory), str(sentiment_task), "--shots", "0,x"]) == 2
    assert "--shots '0,x' is not a comma-separated list" in capsys.readouterr().err
    assert main(["eval", str(directory)]) == 2
    assert "give a TASK or --perplexity FILE" in capsys.readouterr().err


GENERATION_TASK = """
name = "toy-summaries"
kind = "generation"
metrics = ["rouge", "bleu", "chrf"]
max_new_tokens = 6
pool_size = 2
[prompt]
template = "Text: {input}"
answer_cue = "Summary:"
[data]
path = "texts.jsonl"
format = "jsonl"
input_field = "text"
label_field = ["summary1", "summary2"]
"""


def test_generation_task_reports_the_libraries_metrics(converted, tmp_path):
    _, directory = converted
    rows = [{"text": t, "summary1": t.split(",")[0], "summary2": t[:12]} for t, _ in REVIEWS[:6]]
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "task.toml").write_text(GENERATION_TASK)
    task = load_task(tmp_path / "task.toml")
    report = evaluate_task(checkpoint.load(directory), task, load_data(task), [0, 1], progress=False)
    assert report.metrics == ["rouge1", "rouge2", "rougeL", "bleu", "chrf"]
    for result in report.results:
        outputs = [p["output"] for p in result.predictions]
        refs = [p["references"] for p in result.predictions]
        assert result.n == 4 and all(len(r) == 2 for r in refs)
        expected = {
            **metrics.rouge(outputs, refs),
            "bleu": metrics.bleu(outputs, refs),
            "chrf": metrics.chrf(outputs, refs),
        }
        assert result.metrics == expected


def test_demonstrations_that_do_not_fit_are_counted(converted, sentiment_task):
    _, directory = converted
    model = checkpoint.load(directory)
    model.config.max_seq_len = 60  # a small window: two demonstrations cannot fit
    task = load_task(sentiment_task)
    result = evaluate_task(model, task, load_data(task), [2], progress=False).results[0]
    assert result.counts["dropped_examples"] > 0
    assert result.counts["dropped_examples"] == sum(2 - p["shots_shown"] for p in result.predictions)
    assert all(p["prompt_tokens"] <= 60 for p in result.predictions)


def test_items_too_long_for_the_window_are_skipped_and_reported(converted, sentiment_task):
    _, directory = converted
    model = checkpoint.load(directory)
    task = load_task(sentiment_task)
    data = load_data(task)
    tok = model.tokenizer
    lengths = sorted(len(tok.encode(f"Classify the sentiment.\n\nReview: {i.input}\nSentiment:")) for i in data.items)
    # inputs up to the median fit alone, with the room kept for the longest label; the longer ones do not
    model.config.max_seq_len = lengths[len(lengths) // 2] + answer_reserve(model.config, tok, task, "loglikelihood")
    report = evaluate_task(model, task, data, [0, 1], progress=False)
    assert 0 < len(report.skipped) < len(data.items)
    assert all(r.n == len(data.items) - len(report.skipped) for r in report.results)
    assert not {p["index"] for r in report.results for p in r.predictions} & set(report.skipped)
    assert f"skipped {len(report.skipped)} items whose input alone exceeds" in table(report)
    model.config.max_seq_len = 5
    with pytest.raises(LlmkitError, match="no item of toy-sentiment fits the context window of 5"):
        evaluate_task(model, task, data, [0], progress=False)


# ---- metrics against the reference libraries ----------------------------------------------------
def test_accuracy_and_macro_f1_by_hand():
    gold = ["a", "a", "b", "b", "c"]
    predicted = ["a", "b", "b", None, "a"]
    assert metrics.accuracy(gold, predicted) == 2 / 5
    # a: TP 1, FP 1 (item 4), FN 1 (item 1) -> 0.5; b: TP 1, FP 1, FN 1 (item 3 unparsed) -> 0.5; c: 0
    assert metrics.macro_f1(gold, predicted) == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert metrics.macro_f1(["x", "y"], ["x", "y"]) == 1.0
    # a class only predicted counts too: x F1 = 2/(2+0+1), z F1 = 0
    assert metrics.macro_f1(["x", "x"], ["x", "z"]) == pytest.approx((2 / 3 + 0) / 2)


PREDICTIONS = ["the cat sat on the mat", "a dog barked loudly at night", "hello there"]
REFERENCES = [
    ["the cat was sitting on the mat", "a cat sat on a mat"],
    ["the dog barked loudly all night"],
    ["hello there friend", "hi there", "greetings"],
]


def test_rouge_matches_rouge_score():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    got = metrics.rouge(PREDICTIONS, REFERENCES)
    for key in ("rouge1", "rouge2", "rougeL"):
        per_item = [scorer.score_multi(refs, p)[key].fmeasure for p, refs in zip(PREDICTIONS, REFERENCES, strict=True)]
        assert got[key] == pytest.approx(sum(per_item) / len(per_item), abs=1e-12)
    single = scorer.score("the cat was sitting on the mat", "the cat sat on the mat")
    assert metrics.rouge(PREDICTIONS[:1], [REFERENCES[0][:1]])["rougeL"] == single["rougeL"].fmeasure


def test_bleu_and_chrf_match_sacrebleu():
    import sacrebleu

    streams = [[r[j] if j < len(r) else None for r in REFERENCES] for j in range(3)]
    assert metrics.bleu(PREDICTIONS, REFERENCES) == sacrebleu.corpus_bleu(PREDICTIONS, streams).score
    assert metrics.chrf(PREDICTIONS, REFERENCES) == sacrebleu.corpus_chrf(PREDICTIONS, streams).score
    one = [[r[0]] for r in REFERENCES]
    assert metrics.bleu(PREDICTIONS, one) == sacrebleu.corpus_bleu(PREDICTIONS, [[r[0] for r in REFERENCES]]).score
    assert metrics.bleu(["the very same text is here"] * 2, [["the very same text is here"]] * 2) == pytest.approx(
        100.0
    )


# ---- perplexity ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_decoder():
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("tiny-gpt-1m", vocab_size=64, max_seq_len=16, n_layer=2)
    return build_model(cfg).eval()


def test_windows_score_every_token_once():
    for n, window, stride in [(40, 16, 8), (40, 16, 15), (40, 16, 1), (10, 16, 8), (2, 16, 8), (17, 16, 5)]:
        spans = windows(n, window, stride)
        scored = [t for _, end, first in spans for t in range(first, end)]
        assert scored == list(range(1, n))
        for begin, end, first in spans:
            assert end - begin <= window and first > begin
            assert begin == 0 or first - begin >= window - stride  # context every scored token has at least
    with pytest.raises(LlmkitError, match="below the window"):
        windows(40, 16, 16)


def test_perplexity_equals_per_token_reference(small_decoder):
    ids = torch.randint(0, 64, (45,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        # the text fits one window: exp of the mean loss of one forward pass
        full = small_decoder(torch.tensor([ids[:16]])).logits[0]
        expected = math.exp(float(F.cross_entropy(full[:-1], torch.tensor(ids[1:16]))))
        assert perplexity(small_decoder, ids[:16], progress=False).perplexity == pytest.approx(expected, rel=1e-5)
        # sliding: each token's loss from its own window, one forward pass per token (the slow path)
        result = perplexity(small_decoder, ids, stride=5, batch_size=3, progress=False)
        total = 0.0
        for begin, end, first in windows(len(ids), 16, 5):
            for t in range(first, end):
                logits = small_decoder(torch.tensor([ids[begin:t]])).logits[0, -1]
                total += float(F.cross_entropy(logits[None], torch.tensor([ids[t]])))
    assert result.tokens == len(ids) - 1 and result.stride == 5 and result.window == 16
    assert result.perplexity == pytest.approx(math.exp(total / (len(ids) - 1)), rel=1e-5)


def test_perplexity_command(converted, tmp_path, capsys):
    _, directory = converted
    text = tmp_path / "text.txt"
    text.write_text(" ".join(t for t, _ in REVIEWS) * 3)
    code = main(["eval", str(directory), "--perplexity", str(text), "--stride", "32", "--no-progress"])
    if checkpoint.load_config(directory).family == "decoder":
        assert code == 0 and "perplexity" in capsys.readouterr().out
    else:
        assert code == 2 and "needs a decoder-only model" in capsys.readouterr().err


def test_perplexity_reads_gz_files_the_same_and_refuses_binary(converted, tmp_path, capsys):
    import gzip

    _, directory = converted
    if checkpoint.load_config(directory).family != "decoder":
        return  # perplexity is decoder-only (the test above checks the refusal)
    body = " ".join(t for t, _ in REVIEWS) * 3
    (tmp_path / "text.txt").write_text(body)
    (tmp_path / "text.txt.gz").write_bytes(gzip.compress(body.encode()))
    outputs = []
    for name in ("text.txt", "text.txt.gz"):
        assert main(["eval", str(directory), "--perplexity", str(tmp_path / name), "--no-progress"]) == 0
        outputs.append(capsys.readouterr().out.split(" over ")[0])  # "perplexity X (mean NLL Y nats/token)"
    assert outputs[0] == outputs[1] and outputs[0].startswith("perplexity ")
    (tmp_path / "binary.bin").write_bytes(b"\xff\xfe\x00\x81" * 10)
    assert main(["eval", str(directory), "--perplexity", str(tmp_path / "binary.bin"), "--no-progress"]) == 2
    assert "binary.bin: not UTF-8 text" in capsys.readouterr().err


@pytest.mark.parametrize("strip", [True, False])
def test_generated_answers_skip_leading_whitespace_only_when_stripped(monkeypatch, strip):
    """Stripped answers (summaries, labels) are cut at stop strings after their leading whitespace, by
    llmkit's own rule (lm-evaluation-harness cuts the raw text); code (strip=False) keeps a leading stop
    string a stop."""
    import llmkit.inference
    from llmkit.evaluate.scoring import generate_answers

    calls = []

    class Done:
        text = " \n an answer \n"

    def fake_generate(model, prompts, **kwargs):
        calls.append(kwargs)
        return [Done() for _ in prompts]

    monkeypatch.setattr(llmkit.inference, "generate", fake_generate)
    answers = generate_answers(None, ["a", "b", "c"], 8, ["\n"], batch_size=2, progress=False, strip=strip)
    assert answers == (["an answer"] * 3 if strip else [" \n an answer"] * 3)
    assert len(calls) == 2 and all(c["skip_leading_whitespace"] is strip and c["stop_strings"] == ["\n"] for c in calls)
