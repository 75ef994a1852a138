"""bench/domain_adaptation.py's pieces on tiny inputs: the corpus assembly (deterministic, held-out
text disjoint from training text and fixed), the token pools (equal sizes, the 51/49 mix), equal
compute across runs, the table and expectation builders, the plot, and the real part's document
perplexity against torch math. The whole bench at tiny sizes runs in the slow test."""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import random
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from llmkit.errors import LlmkitError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def da():
    spec = importlib.util.spec_from_file_location("domain_adaptation", ROOT / "bench" / "domain_adaptation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["domain_adaptation"] = module  # spawned workers and dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dc(da):
    """The bench's corpus part (bench/domain_corpus.py), imported by domain_adaptation."""
    return sys.modules["domain_corpus"]


WORDS = {
    "general": "the a of and to was he she said went home day good time people house little old".split(),
    "legal": "court petitioner statute judgment appeal jurisdiction amendment held respondent circuit".split(),
    "medical": "patients symptoms treatment disease diagnosis chronic infection blood therapy clinical".split(),
    "finance": "inflation committee federal rate policy economic participants market treasury securities".split(),
}


def _text(rng: random.Random, kind: str, n: int) -> str:
    words = WORDS[kind] + WORDS["general"][:6]
    return " ".join(rng.choice(words) for _ in range(n)) + "."


def _write_gz(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(text)


@pytest.fixture()
def tiny_data(dc, tmp_path, monkeypatch):
    """Small files in the formats of the shipped ones (data/), in their places under a temp DATA."""
    rng = random.Random(7)
    data = tmp_path / "data"
    speeches = [f"First Citizen:\n{_text(rng, 'general', 30)}\n{_text(rng, 'general', 20)}" for _ in range(120)]
    _write_gz(data / dc.GENERAL["shakespeare"][0], "\n\n".join(speeches) + "\n")
    dialogues = [
        {
            "dialogue": f"#Person1#: {_text(rng, 'general', 15)}\n#Person2#: {_text(rng, 'general', 15)}",
            "summary": _text(rng, "general", 10),
        }
        for _ in range(300)
    ]
    _write_gz(data / dc.GENERAL["dialogsum"][0], "".join(json.dumps(d) + "\n" for d in dialogues))
    pairs = [f"{_text(rng, 'general', 8)}\tune phrase." for _ in range(800)]
    pairs += pairs[:50]  # fra-eng repeats an English sentence for each of its translations
    _write_gz(data / dc.GENERAL["fra-eng (English side)"][0], "\n".join(pairs) + "\n")
    for kind in ("pos", "neg"):
        snippets = [_text(rng, "general", 12) for _ in range(200)]
        _write_gz(data / dc.GENERAL["rt-polarity"][0] / f"rt-polarity.{kind}.gz", "\n".join(snippets) + "\n")
    for name in dc.DOMAINS:
        docs = [_text(rng, name, rng.randint(80, 200)) for _ in range(150)]
        _write_gz(data / dc.DOMAINS[name][0], "\n".join(docs + docs[:5]) + "\n")  # 5 exact repeats
    monkeypatch.setattr(dc, "DATA", data)
    return data


def _tiny_settings(da, **overrides):
    fields = {
        **da.QUICK,
        "general_words": 3000,
        "tokenizer_chars": 40_000,
        "vocab": 300,
        "compare_vocab": 400,
        "pool_tokens": 4000,
        "eval_tokens": 256,
        "eval_doc_tokens": 64,
    }
    return da.Settings(**{**fields, **overrides})


def _documents(path: Path) -> list[str]:
    return path.read_text().splitlines()


# ---- the corpora --------------------------------------------------------------------------------
def test_split_is_fixed_disjoint_and_independent_of_seed_and_size(dc):
    rng = random.Random(0)
    docs = [_text(rng, "medical", 40) for _ in range(500)]
    docs += docs[:20]  # repeated documents must land on one side only
    train, heldout = dc.split_documents("medical", docs, 0.1, seed=0)
    assert not set(train) & set(heldout)
    assert set(train) | set(heldout) == set(docs) and len(train) + len(heldout) == len(set(docs))
    assert 25 <= len(heldout) <= 75  # ~10% of 500
    again = dc.split_documents("medical", docs, 0.1, seed=0)
    assert again == (train, heldout)
    other_train, other_heldout = dc.split_documents("medical", list(reversed(docs)), 0.1, seed=1)
    assert other_heldout == heldout and set(other_train) == set(train) and other_train != train
    cut_train, cut_heldout = dc.split_documents("medical", docs, 0.1, seed=0, train_words=4000)
    assert cut_train == train[: len(cut_train)] and 100 <= len(cut_train) <= 101
    assert cut_heldout == heldout[: len(cut_heldout)] and len(cut_heldout) < len(heldout)


def test_assembled_corpora_are_deterministic_and_disjoint(da, dc, tiny_data, tmp_path):
    settings = _tiny_settings(da)
    first = dc.assemble_corpora(tmp_path / "a", settings)
    second = dc.assemble_corpora(tmp_path / "b", settings)
    assert first == second
    for name in dc.EVAL_SETS:
        for split in ("train", "heldout"):
            a, b = dc.corpus_file(tmp_path / "a", name, split), dc.corpus_file(tmp_path / "b", name, split)
            assert a.read_bytes() == b.read_bytes(), (name, split)
        train = _documents(dc.corpus_file(tmp_path / "a", name, "train"))
        heldout = _documents(dc.corpus_file(tmp_path / "a", name, "heldout"))
        assert train and heldout and not set(train) & set(heldout), name
        assert all("\t" not in d and d == " ".join(d.split()) for d in train + heldout)  # one line each
    assert set(first["general_sources"]) == set(dc.GENERAL)
    assert all(s["train_words"] >= 3000 and s["heldout_documents"] for s in first["general_sources"].values())
    # a larger training cut keeps every held-out document of the smaller one (held-out text only grows)
    bigger = dc.assemble_corpora(tmp_path / "c", _tiny_settings(da, general_words=4000))
    small = set(_documents(dc.corpus_file(tmp_path / "a", "general", "heldout")))
    large = set(_documents(dc.corpus_file(tmp_path / "c", "general", "heldout")))
    assert small <= large and bigger["corpora"]["legal"] == first["corpora"]["legal"]


def test_token_pools_are_equal_and_the_mix_is_51_49(da, dc, tiny_data, tmp_path):
    settings = _tiny_settings(da)
    out = tmp_path / "bench"
    dc.assemble_corpora(out, settings)
    metas = dc.tokenize_all(out, settings)
    assert set(metas) == {"general", *dc.DOMAINS, *(f"{d}-mix" for d in dc.DOMAINS)}
    assert {m["tokens"]["train"] for m in metas.values()} == {settings.pool_tokens}
    for d in dc.DOMAINS:
        shares = [s["train"]["share"] for s in metas[f"{d}-mix"]["sources"]]
        assert shares == pytest.approx([0.51, 0.49], abs=0.01)
        assert metas[f"{d}-mix"]["sources"][0]["source"].endswith(f"{d}.train.txt")
    ids = dc.heldout_ids(out, settings)
    assert {len(v) for v in ids.values()} == {settings.eval_tokens}
    tokenizer_report = dc.tokenizer_comparison(out, settings)
    for d in dc.DOMAINS:  # a tokenizer trained on the domain spends fewer tokens per word on it
        entry = tokenizer_report["texts"][d]
        assert entry["domain"] < entry["general"], (d, entry)
        assert entry["most_split"] and all(w["general"] >= w["domain"] for w in entry["most_split"][:1])


# ---- the runs -----------------------------------------------------------------------------------
def test_runs_spend_equal_compute(da, dc):
    settings = da.Settings(steps=7, seeds=[0, 1])
    jobs = da.plan_jobs(settings)
    evaluated = [j for j in jobs if j.kind]
    assert len(evaluated) == 2 * (1 + 3 * len(dc.DOMAINS))
    for seed in (0, 1):
        mine = [j for j in evaluated if j.seed == seed]
        assert sorted(j.kind for j in mine) == sorted(["general"] + ["domain", "mix", "continue"] * 3)
        for j in mine:
            if j.kind == "continue":
                first = next(x for x in jobs if x.name == j.after)
                assert first.seed == seed and first.data == "general" and first.steps + j.steps == 7
                assert jobs.index(first) < jobs.index(j)
            if j.kind == "mix":
                assert j.data == f"{j.domain}-mix"
    budgets = da.compute_budgets(jobs, settings, 1.5e6)
    assert set(budgets) == {j.name for j in evaluated}
    flops = da.check_equal_compute(budgets)
    assert flops == 7 * settings.batch_size * settings.block_size * 1.5e6
    # a continued run whose second phase is one step longer spends more: refused
    broken = [
        da.Job(j.name, j.seed, j.kind, j.domain, j.data, j.steps + 1, j.after) if j.kind == "continue" else j
        for j in jobs
    ]
    with pytest.raises(LlmkitError, match="FLOPs"):
        da.check_equal_compute(da.compute_budgets(broken, settings, 1.5e6))


# ---- the table ----------------------------------------------------------------------------------
def _results(dc, seeds=(0, 1)):
    """Made-up perplexities: specialists good on their own text, the mix between, seed 1 higher by 1."""
    out = []
    for seed in seeds:
        out.append(
            {
                "seed": seed,
                "kind": "general",
                "domain": None,
                "perplexity": {
                    "legal": 80.0 + seed,
                    "medical": 60.0 + seed,
                    "finance": 70.0 + seed,
                    "general": 20.0 + seed,
                },
            }
        )
        for d in dc.DOMAINS:
            for kind, own, general in (("domain", 10.0, 90.0), ("mix", 11.0, 22.0), ("continue", 10.5, 40.0)):
                ppl = {t: 50.0 + seed for t in dc.EVAL_SETS}
                ppl[d], ppl["general"] = own + seed, general + seed
                out.append({"seed": seed, "kind": kind, "domain": d, "perplexity": ppl})
    return out


def test_table_cells_means_spreads_and_expectation(da, dc):
    cells = da.table_cells(_results(dc))
    assert list(cells) == da.ROWS
    mix = cells[("mix", "legal")]
    assert mix["legal"] == {"mean": 11.5, "spread": 0.5, "min": 11.0, "max": 12.0, "n": 2}
    assert cells[("general", None)]["general"]["mean"] == 20.5
    table = da.render_table(cells)
    assert "| legal + general, 51/49 | 11.50 ± 0.50 | 50.50 ± 0.50 | 50.50 ± 0.50 | 22.50 ± 0.50 |" in table
    found = da.expectation(cells)["legal"]
    assert found["mix_domain_ratio"] == pytest.approx(11.5 / 10.5)
    closed = (math.log(80.5) - math.log(11.5)) / (math.log(80.5) - math.log(10.5))
    assert found["mix_domain_closed"] == pytest.approx(closed)
    assert found["mix_general_ratio"] == pytest.approx(22.5 / 20.5)
    assert found["continue_general_closed"] == pytest.approx(
        (math.log(90.5) - math.log(40.5)) / (math.log(90.5) - math.log(20.5))
    )
    assert "| legal | 1.095 |" in da.render_expectation(da.expectation(cells))


def test_table_needs_two_seeds_in_every_row(da, dc):
    with pytest.raises(LlmkitError, match="seeds"):
        da.table_cells(_results(dc, seeds=(0,)))
    partial = [r for r in _results(dc) if not (r["kind"] == "mix" and r["domain"] == "finance" and r["seed"] == 1)]
    with pytest.raises(LlmkitError, match="finance"):
        da.table_cells(partial)
    with pytest.raises(LlmkitError, match="seeds"):
        da.table_cells(_results(dc) + [r for r in _results(dc) if r["kind"] == "general"][:1])


def test_plot_writes_a_png(da, dc, tmp_path):
    path = tmp_path / "plot.png"
    da.plot(da.table_cells(_results(dc)), path, "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- the real part's scoring ------------------------------------------------------------------
def test_document_perplexity_pools_tokens_as_torch_math(da):
    from llmkit.config import ModelConfig
    from llmkit.data.tokenizer_train import train_tokenizer
    from llmkit.models import build_model

    docs = [
        "the court held that the statute applies.",
        "patients with chronic infection need therapy soon.",
        "the committee kept the federal funds rate.",
    ]
    tokenizer = train_tokenizer(docs * 20, "bpe", 300)
    torch.manual_seed(0)
    cfg = ModelConfig.from_name(
        "tiny-llama-10m",
        n_layer=1,
        d_model=32,
        n_head=2,
        n_kv_head=1,
        d_ff=64,
        vocab_size=tokenizer.vocab_size,
        max_seq_len=64,
    )
    model = build_model(cfg).eval()
    found = sys.modules["domain_real"].document_perplexity(model, tokenizer, docs, doc_tokens=6)
    nll, count = 0.0, 0
    with torch.no_grad():
        for doc in docs:
            ids = torch.tensor([tokenizer.encode(doc, add_special_tokens=False)[:6]])
            logits = model(ids).logits[0, :-1]
            nll += float(F.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            count += ids.shape[1] - 1
    assert found["tokens"] == count == 15
    assert found["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)


@pytest.mark.slow
def test_quick_bench_end_to_end(da, dc, tmp_path):
    """The whole bench at tiny sizes on the shipped data: 20 runs, the table, the plot, a rerun reusing them."""
    assert da.main(["--quick", "--out", str(tmp_path), "--workers", "2"]) == 0
    results = json.loads((tmp_path / "quick" / "results.json").read_text())
    assert len(results["results"]) == 2 * (1 + 3 * len(dc.DOMAINS))
    assert all(math.isfinite(p) for r in results["results"] for p in r["perplexity"].values())
    assert (tmp_path / "quick" / "domain_adaptation.png").is_file()
    assert "general, then medical" in (tmp_path / "quick" / "table.md").read_text()


def test_real_part_on_a_tiny_checkpoint(da, dc, tiny_data, tmp_path):
    """--real's whole path (tokenize with the checkpoint's tokenizer, continue in full and with LoRA,
    score the base and both) on a tiny decoder standing in for SmolLM2."""
    import llmkit
    from llmkit.config import ModelConfig
    from llmkit.data.tokenizer_train import train_tokenizer

    dr = sys.modules["domain_real"]
    rng = random.Random(1)
    tokenizer = train_tokenizer([_text(rng, kind, 50) for kind in WORDS for _ in range(40)], "bpe", 300)
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("tiny-llama-10m", n_layer=1, d_model=32, n_head=2, n_kv_head=1, d_ff=64,
                                vocab_size=tokenizer.vocab_size, max_seq_len=64)  # fmt: skip
    model = llmkit.build_model(cfg)
    model.tokenizer = tokenizer
    base = tmp_path / "base"
    llmkit.save(model, base)
    real = dr.RealSettings(**dr.REAL_QUICK, threads=1)
    report = dr.run_real(tmp_path / "out", base, real, _tiny_settings(da))
    assert list(report["runs"]) == ["as it is", "full", "lora"]
    for name, run in report["runs"].items():
        for text in ("medical", "general"):
            assert math.isfinite(run["scores"][text]["perplexity"]), (name, text)
            assert run["scores"][text]["tokens"] == report["runs"]["as it is"]["scores"][text]["tokens"]
    # the continued models differ from the base (LoRA merged into OUT/best), and the table shows the change
    assert report["runs"]["full"]["scores"]["medical"] != report["runs"]["as it is"]["scores"]["medical"]
    assert report["runs"]["lora"]["scores"]["medical"] != report["runs"]["as it is"]["scores"]["medical"]
    assert "| continued, lora (lr 0.001) |" in dr.render_real(report)
