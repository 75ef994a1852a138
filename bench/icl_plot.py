"""One picture of several `llmkit eval` runs: accuracy against the shot count, a line per results.json,
with the chance line (the figure in docs/prompting.md).

    .venv/bin/python bench/icl_plot.py runs/eval/sst2-smollm2/results.json \
        runs/eval/rt-smollm2/results.json --out docs/images/icl_smollm2.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="results.json files of classification runs")
    parser.add_argument("--metric", default="accuracy")
    parser.add_argument("--title", default="")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    chance = None
    for path in args.results:
        report = json.loads(path.read_text(encoding="utf-8"))
        shots = [r["shots"] for r in report["results"]]
        values = [r["metrics"][args.metric] for r in report["results"]]
        n = report["results"][0]["n"]
        ax.plot(shots, values, marker="o", label=f"{report['task']} (n={n})")
        chance = report.get("chance", chance)
    if chance is not None:
        ax.axhline(chance, color="black", linestyle="--", linewidth=1, label="chance")
    ax.set_xlabel("demonstrations in the prompt (shots)")
    ax.set_ylabel(args.metric)
    ax.set_ylim(0.4, 1.0)
    ax.set_title(args.title or f"{report['model']}: {args.metric} by shots")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
