"""A realistic raw "web crawl" built from the corpora shipped under data/ plus generated web-style noise, seeded.

    .venv/bin/python bench/raw_corpus.py --out runs/raw [--clean 1500] [--shards 8] [--seed 0]
    .venv/bin/llmkit data curate runs/raw --out runs/curated
    .venv/bin/python bench/raw_corpus.py --analyze runs/curated --out runs/raw   # kept share per kind

Clean documents are a seeded sample of the three domain corpora (data/domain: MedQuAD answers, Supreme
Court opinions, FOMC minutes; ``--clean`` of them, in the corpora's proportions of documents). Around
them, per 100 clean documents, the generator adds (KINDS below, the numbers of documents):

- page chrome on 30 of the clean documents (navigation lines, a cookie banner, a footer around the text;
  they stay "clean" documents: C4's line rules should strip the chrome and keep the text);
- PII in 10 of the clean documents (a contact line with an e-mail address and a phone number);
- 10 near copies of clean documents, 5-10% of their words edited (substituted, inserted or deleted);
- 5 exact copies (some re-cased or re-spaced);
- 8 boilerplate-only pages, 3 lorem-ipsum pages, 5 keyword-spam pages, 5 short fragments;
- 5 code fragments (Python standard library source) and 3 JSON fragments;
- 3 mojibake documents (a clean document with curly quotes and dashes, its UTF-8 decoded as cp1252, as
  a misconfigured crawler does: "it’s" becomes "itâ€™s");
- 5 other-language documents (French from data/translation's fra-eng pairs).

Each document is one JSON line ``{"text", "kind", "id"}``; the lines are shuffled and split into
``--shards`` files raw-00.jsonl ... so `llmkit data curate --workers N` has files to share out.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOMAIN = {
    "medical": ROOT / "data/domain/medical_medquad/medquad.txt.gz",
    "legal": ROOT / "data/domain/legal_scotus/scotus_ot2019.txt.gz",
    "finance": ROOT / "data/domain/finance_fomc/fomc_minutes.txt.gz",
}
# documents of each kind per 100 clean documents (the clean ones with chrome or PII are among the 100)
KINDS = {
    "near_copy": 10,
    "exact_copy": 5,
    "boilerplate": 8,
    "lorem_ipsum": 3,
    "keyword_spam": 5,
    "fragment": 5,
    "code": 5,
    "json": 3,
    "mojibake": 3,
    "french": 5,
}
CHROME_SHARE, PII_SHARE = 0.30, 0.10

NAV = ["Home", "About us", "Products", "Services", "Blog", "Contact", "Login", "Sign up", "Cart (0)", "Search",
       "FAQ", "Careers", "Press", "Support", "Menu"]  # fmt: skip
COOKIE = [
    "We use cookies to improve your experience. By continuing to browse you agree to our use of cookies.",
    "This website uses cookies. Accept all | Manage preferences",
    "Our Privacy Policy and Terms of Use have changed. Click here to read them.",
]
FOOTER = ["© 2024 Example Media Group. All rights reserved.", "Follow us on Facebook | Twitter | Instagram",
          "Share this article", "Subscribe to our newsletter", "Back to top ↑"]  # fmt: skip
FRAGMENTS = ["Click here to continue", "Page not found", "Loading...", "Read more »", "Share on Twitter",
             "Posted by admin at 10:42 PM", "0 comments", "Add to cart", "Sold out", "Next page →"]  # fmt: skip
SPAM = ["cheap flights", "best price", "buy now", "discount", "free shipping", "casino bonus", "top rated",
        "limited offer", "online deals", "lowest price guaranteed"]  # fmt: skip
LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et "
    "dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip "
    "ex ea commodo consequat. Duis aute irure dolor in reprehenderit in voluptate velit esse cillum dolore eu "
    "fugiat nulla pariatur."
)


def _lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as file:
        return [line.rstrip("\n") for line in file if line.strip()]


def _sentences(text: str) -> str:
    """The domain corpora are one line per document; web pages have lines: one sentence per line."""
    out, start = [], 0
    for i, ch in enumerate(text):
        if ch in ".?!" and i + 1 < len(text) and text[i + 1] == " " and i - start > 40:
            out.append(text[start : i + 1].strip())
            start = i + 1
    out.append(text[start:].strip())
    return "\n".join(s for s in out if s)


def _chrome(rng: random.Random, text: str) -> str:
    head = [" | ".join(rng.sample(NAV, rng.randint(4, 8))), rng.choice(COOKIE)]
    tail = rng.sample(FOOTER, rng.randint(2, 4))
    return "\n".join(head + [text] + tail)


def _pii(rng: random.Random, text: str) -> str:
    user = rng.choice(["info", "j.smith", "office", "press", "help.desk"])
    phone = f"+1 ({rng.randint(200, 999)}) {rng.randint(200, 999)}-{rng.randint(1000, 9999)}"
    return text + f"\nFor questions, write to {user}@example.org or call {phone} on weekdays."


def _edit(rng: random.Random, text: str, vocab: list[str]) -> str:
    words = text.split(" ")
    n = max(1, round(rng.uniform(0.05, 0.10) * len(words)))
    for i in sorted(rng.sample(range(len(words)), n), reverse=True):
        op = rng.choice("sid")
        if op == "s":
            words[i] = rng.choice(vocab)
        elif op == "i":
            words.insert(i, rng.choice(vocab))
        else:
            del words[i]
    return " ".join(words)


def _typeset(text: str) -> str:
    """Curly apostrophes and quotes, en dashes: what a web page has where the corpora have ASCII."""
    return text.replace("'", "’").replace(" - ", " – ").replace(' "', " “").replace('" ', "” ")


def _code(rng: random.Random) -> str:
    import sysconfig

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    lines = rng.choice(files).read_text(encoding="utf-8", errors="replace").splitlines()
    start = rng.randrange(max(1, len(lines) - 60))
    return "\n".join(lines[start : start + rng.randint(20, 60)])


def _json(rng: random.Random) -> str:
    items = [
        {"id": rng.randint(1, 10**6), "name": rng.choice(SPAM), "price": round(rng.uniform(1, 500), 2)}
        for _ in range(rng.randint(3, 12))
    ]
    return json.dumps({"status": "ok", "page": rng.randint(1, 40), "items": items}, indent=rng.choice([None, 2]))


def build(clean_count: int, seed: int) -> list[dict]:
    """The raw corpus as records {"text", "kind", "id"}, shuffled."""
    rng = random.Random(seed)
    pools = {name: _lines(path) for name, path in DOMAIN.items()}
    total = sum(map(len, pools.values()))
    clean = []
    for name, pool in pools.items():
        k = max(1, round(clean_count * len(pool) / total))
        clean += [(name, _sentences(t)) for t in rng.sample(pool, min(k, len(pool)))]
    vocab = [w for _, t in clean[:200] for w in t.split()]
    records = []
    for name, text in clean:
        kind = f"clean:{name}"
        if rng.random() < CHROME_SHARE:
            text, kind = _chrome(rng, text), kind + "+chrome"
        if rng.random() < PII_SHARE:
            text, kind = _pii(rng, text), kind + "+pii"
        records.append({"text": text, "kind": kind})
    french = _french()
    per = len(clean) / 100
    makers = {
        "near_copy": lambda: _edit(rng, rng.choice(clean)[1], vocab),
        "exact_copy": lambda: rng.choice([str.upper, str.lower, lambda t: t.replace("\n", "\n\n")])(
            rng.choice(clean)[1]
        ),
        "boilerplate": lambda: _chrome(rng, "\n".join(rng.sample(FRAGMENTS, 4))),
        "lorem_ipsum": lambda: _chrome(rng, "\n".join([LOREM] * rng.randint(1, 4))),
        "keyword_spam": lambda: " ".join(rng.choice(SPAM) for _ in range(rng.randint(60, 200))),
        "fragment": lambda: rng.choice(FRAGMENTS),
        "code": lambda: _code(rng),
        "json": lambda: _json(rng),
        "mojibake": lambda: _typeset(rng.choice(clean)[1]).encode("utf-8").decode("cp1252", errors="replace"),
        "french": lambda: "\n".join(rng.sample(french, rng.randint(8, 20))),
    }
    for kind, count in KINDS.items():
        records += [{"text": makers[kind](), "kind": kind} for _ in range(round(count * per))]
    rng.shuffle(records)
    for i, record in enumerate(records):
        record["id"] = f"doc-{i:06d}"
    return records


def _french() -> list[str]:
    with gzip.open(ROOT / "data/translation/fra-eng/fra.txt.gz", "rt", encoding="utf-8") as file:
        return sorted({line.split("\t")[1] for line in file if len(line.split("\t")[1].split()) >= 6})


def write(records: list[dict], out: Path, shards: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with open(out / f"raw-{s:02d}.jsonl", "w", encoding="utf-8") as file:
            for record in records[s::shards]:
                file.write(json.dumps(record, ensure_ascii=False) + "\n")


def analyze(raw: Path, curated: Path) -> str:
    """Per kind of raw document: how many, how many kept, and the rules that removed the others (markdown)."""
    kinds, by_key = {}, {}
    for path in sorted(raw.glob("raw-*.jsonl")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            kind = json.loads(line)["kind"]
            kinds.setdefault(kind, {"docs": 0, "removed": {}})["docs"] += 1
            by_key[f"{path.name}:{n}"] = kind
    for line in (curated / "removed.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        rule = record["rule"].split(".")[0] if record["rule"] not in ("exact_dedup", "near_dedup") else record["rule"]
        table = kinds[by_key[record["id"]]]["removed"]
        table[rule] = table.get(rule, 0) + 1
    rows = ["| kind | documents | kept | removed by (documents) |", "|---|---:|---:|---|"]
    for kind in sorted(kinds):
        row = kinds[kind]
        gone = sum(row["removed"].values())
        why = ", ".join(f"{r} {n}" for r, n in sorted(row["removed"].items(), key=lambda kv: -kv[1]))
        rows.append(f"| {kind} | {row['docs']} | {row['docs'] - gone} ({1 - gone / row['docs']:.0%}) | {why} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out", required=True, type=Path, help="folder for raw-NN.jsonl (with --analyze: the raw folder)"
    )
    parser.add_argument("--clean", type=int, default=1500, help="clean documents sampled from data/domain")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--analyze", type=Path, metavar="CURATED", help="print the per-kind table of a curated run")
    args = parser.parse_args()
    if args.analyze:
        print(analyze(args.out, args.analyze))
        return
    records = build(args.clean, args.seed)
    write(records, args.out, args.shards)
    counts = {}
    for r in records:
        key = r["kind"].split("+")[0]
        counts[key] = counts.get(key, 0) + 1
    size = sum(len(r["text"].encode()) for r in records)
    print(f"{len(records):,} documents, {size / 1e6:.1f} MB in {args.shards} files -> {args.out}", file=sys.stderr)
    print(", ".join(f"{k} {v}" for k, v in sorted(counts.items())), file=sys.stderr)


if __name__ == "__main__":
    main()
