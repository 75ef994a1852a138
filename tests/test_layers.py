"""Keep the layers of docs/architecture.md honest by scanning every import under llmkit/."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "llmkit"

# module prefix -> layer; the longest matching prefix wins
LAYERS = {
    "llmkit": 0,  # the package __init__ only re-exports lazily
    "llmkit.errors": 0,
    "llmkit.files": 0,
    "llmkit.model_card": 0,
    "llmkit.config": 0,
    "llmkit.plan": 0,
    "llmkit.prompts": 0,
    "llmkit.data": 0,
    "llmkit.data.curate": 0,
    "llmkit.data.builtin": 0,
    "llmkit.data.sources": 0,
    "llmkit.models": 1,
    "llmkit.data.tokenizer": 1,
    "llmkit.data.tokenizer_train": 1,
    "llmkit.data.datasets": 1,
    "llmkit.data.shards": 1,
    "llmkit.data.fast_bpe": 1,
    "llmkit.objectives": 2,
    "llmkit.inference": 2,
    "llmkit.quantize": 2,
    "llmkit.checkpoint": 2,
    "llmkit.hf": 2,
    "llmkit.summary": 2,
    "llmkit.train": 3,
    "llmkit.evaluate": 3,
    "llmkit.viz": 3,
    "llmkit.cli": 4,
    "llmkit.serve": 4,
    "llmkit.__main__": 4,
}
TOP = {"llmkit.cli", "llmkit.serve"}  # nothing outside them imports them (but `python -m llmkit`)
ENTRY = "llmkit.__main__"
CALLS_TOP = {("llmkit.cli", "llmkit.serve")}  # `llmkit serve` runs the server: the one L4 -> L4 import


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    assert best is not None, f"{module} has no layer: add it to LAYERS and docs/architecture.md"
    return LAYERS[best]


def imports_of(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names if node.module.startswith("llmkit")]
    return names


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_respect_layers(path):
    me = module_name(path)
    mine = layer_of(me)
    for name in imports_of(path):
        root = name.split(".")[0]
        assert root != "transformers", f"{me} imports transformers (a test-only dependency)"
        if root == "llmkit":
            target = name
            # `from llmkit.x import Name`: Name may be a symbol, not a module; judge by the module
            while (
                target not in LAYERS
                and not (PACKAGE.parent / (target.replace(".", "/") + ".py")).exists()
                and not (PACKAGE.parent / target.replace(".", "/")).is_dir()
            ):
                target = target.rsplit(".", 1)[0]
            in_top = any(target == t or target.startswith(t + ".") for t in TOP)
            same_top = any(me.startswith(t) and target.startswith(t) for t in TOP)
            same_top = same_top or any(me.startswith(a) and target.startswith(b) for a, b in CALLS_TOP)
            assert not in_top or same_top or me == ENTRY, f"{me} imports {target}, which nothing may import"
            assert layer_of(target) <= mine, f"{me} (L{mine}) imports {target} (L{layer_of(target)})"
        elif mine == 0:
            assert root in sys.stdlib_module_names or root == "__future__", f"L0 {me} imports {root}"


def test_l0_modules_import_without_torch():
    code = "import sys, llmkit, llmkit.config, llmkit.errors, llmkit.data.builtin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
