"""The curation report: documents, characters and words in and out, the funnel rule by rule, each source's
kept fraction, the top removal reasons with examples; as text, OUT/report.json and OUT/funnel.png.

A removed document counts under the first rule it failed (the rules run in CurateConfig's order), so
the funnel's steps add up. Characters and words of removed documents are counted as read (for the
dedup steps: as kept, after normalization, C4's line removal and PII redaction); the last step, "kept",
is what OUT/kept/ holds.
"""

from __future__ import annotations

import json
from pathlib import Path

from llmkit.curate.config import SECTIONS
from llmkit.files import atomic_file, atomic_write

FUNNEL_STEPS = ["empty", *[name for name in SECTIONS if name not in ("normalize", "pii")]]
_ZERO = {"docs": 0, "chars": 0, "words": 0}


def _add(a: dict, b: dict) -> dict:
    return {k: a.get(k, 0) + b.get(k, 0) for k in _ZERO}


def _fraction(part: dict, whole: dict) -> dict:
    return {k: (part[k] / whole[k] if whole[k] else 0.0) for k in _ZERO}


def build_report(stats: list[dict], options, dups: dict, seconds: float) -> dict:
    """Sum the shards' stats into the report (a plain dict, as report.json holds it)."""
    total_in, total_out, rules, sources, pii, examples = dict(_ZERO), dict(_ZERO), {}, {}, {}, {}
    lines_dropped, size = 0, 0
    for shard in stats:
        src = sources.setdefault(shard["source"], {"in": dict(_ZERO), "out": dict(_ZERO)})
        shard_in, shard_out = shard["in"].get("all", _ZERO), shard["kept"].get("all", _ZERO)
        total_in, total_out = _add(total_in, shard_in), _add(total_out, shard_out)
        src["in"], src["out"] = _add(src["in"], shard_in), _add(src["out"], shard_out)
        for rule, row in shard["removed"].items():
            rules[rule] = _add(rules.get(rule, _ZERO), row)
        for rule, found in shard["examples"].items():
            examples.setdefault(rule, []).extend(found[: 3 - len(examples.get(rule, []))])
        for kind, n in shard["pii"].items():
            pii[kind] = pii.get(kind, 0) + n
        lines_dropped += shard["lines_dropped"]
        size += shard["bytes"]
    for src in sources.values():
        src["kept_fraction"] = _fraction(src["out"], src["in"])
    funnel, remaining = [{"step": "raw", **total_in}], dict(total_in)
    for step in FUNNEL_STEPS:
        removed = dict(_ZERO)
        for rule, row in rules.items():
            if rule.split(".")[0] == step:
                removed = _add(removed, row)
        if removed["docs"] or step in (options.config.enabled_rules() if hasattr(options, "config") else []):
            remaining = {k: remaining[k] - removed[k] for k in _ZERO}
            funnel.append({"step": step, "removed": removed, **remaining})
    funnel.append({"step": "kept", **total_out})
    top = sorted(rules.items(), key=lambda kv: (-kv[1]["docs"], kv[0]))
    return {
        "sources": list(sources),
        "workers": getattr(options, "workers", 1),
        "seconds": round(seconds, 3),
        "bytes": size,
        "mb_per_s": round(size / 1e6 / seconds, 3) if seconds > 0 else None,
        "in": total_in,
        "out": total_out,
        "kept_fraction": _fraction(total_out, total_in),
        "funnel": funnel,
        "rules": {rule: {**row, "fraction_of_docs": row["docs"] / max(1, total_in["docs"])} for rule, row in top},
        "per_source": sources,
        "top_reasons": [{"rule": rule, **row, "examples": examples.get(rule, [])} for rule, row in top[:10]],
        "pii_redacted": pii,
        "c4_lines_dropped": lines_dropped,
        "dedup": {k: dups.get(k, 0) for k in ("documents", "candidates", "near_pairs")},
        "config": options.config.to_dict() if hasattr(options, "config") else {},
    }


def render(report: dict, out: Path | None = None) -> str:
    """The report as terminal text: totals, the funnel, per source, the top reasons with one example each."""
    i, o, f = report["in"], report["out"], report["kept_fraction"]
    lines = [
        f"in:  {i['docs']:,} documents, {i['chars']:,} characters, {i['words']:,} words",
        f"out: {o['docs']:,} documents ({f['docs']:.1%}), {o['chars']:,} characters ({f['chars']:.1%}), "
        f"{o['words']:,} words ({f['words']:.1%})",
        "",
        f"{'step':<20}{'removed docs':>14}{'remaining docs':>16}{'remaining words':>17}",
    ]
    for row in report["funnel"]:
        removed = row.get("removed", {}).get("docs", "")
        lines.append(f"{row['step']:<20}{removed!s:>14}{row['docs']:>16,}{row['words']:>17,}")
    lines += ["", "per source (kept documents, words):"]
    for name, src in report["per_source"].items():
        kf = src["kept_fraction"]
        lines.append(f"  {name}: {src['out']['docs']:,}/{src['in']['docs']:,} ({kf['docs']:.1%}), {kf['words']:.1%}")
    lines += ["", "top removal reasons:"]
    for row in report["top_reasons"]:
        example = row["examples"][0]["text"][:90].replace("\n", " ") if row["examples"] else ""
        lines.append(f"  {row['rule']:<42}{row['docs']:>8,} docs  e.g. {example!r}")
    if report["pii_redacted"]:
        lines.append("PII redacted: " + ", ".join(f"{k} {v:,}" for k, v in sorted(report["pii_redacted"].items())))
    speed = f" ({report['mb_per_s']:.2f} MB/s)" if report["mb_per_s"] else ""
    where = f" -> {out}" if out is not None else ""
    lines.append(f"curated {report['bytes'] / 1e6:,.1f} MB in {report['seconds']:.1f} s{speed}{where}")
    return "\n".join(lines)


def write_report(out: Path, report: dict) -> None:
    """OUT/report.json and OUT/funnel.png, each written atomically."""
    atomic_write(out / "report.json", json.dumps(report, indent=1, ensure_ascii=False))
    plot_funnel(report, out / "funnel.png")


def plot_funnel(report: dict, path: Path) -> None:
    """Horizontal bars: documents and words remaining after each step, as a share of the raw corpus."""
    from matplotlib.figure import Figure

    rows = report["funnel"]
    steps = [row["step"] for row in rows]
    fig = Figure(figsize=(8, 0.45 * len(rows) + 1.2))
    ax = fig.subplots()
    y = range(len(rows))
    for offset, key, color in ((-0.2, "docs", "#0072B2"), (0.2, "words", "#E69F00")):
        whole = rows[0][key] or 1
        shares = [row[key] / whole for row in rows]
        ax.barh([v + offset for v in y], shares, height=0.4, color=color, label=key)
        for v, share in zip(y, shares, strict=True):
            ax.text(share + 0.01, v + offset, f"{share:.1%}", va="center", fontsize=7)
    ax.set_yticks(list(y), steps)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.15)
    ax.set_xlabel("share of the raw corpus remaining after each step")
    ax.set_title("curation funnel")
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
