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
    "llmkit.units": 0,
    "llmkit.cpu_kernels": 0,  # the C kernels' build and load (stdlib: llmkit plan asks whether they exist)
    "llmkit.config": 0,
    "llmkit.config_tables": 0,  # the TOML loader of run, fine-tuning and sweep configs
    "llmkit.plan": 0,
    "llmkit.prompts": 0,
    "llmkit.tools": 0,
    "llmkit.closed_schema": 0,
    "llmkit.data": 0,
    "llmkit.data.curate": 0,
    "llmkit.data.builtin": 0,
    "llmkit.data.sources": 0,
    "llmkit.models": 1,
    "llmkit.devices": 1,  # device and dtype names ("auto", "bf16") resolved in one place
    "llmkit.data.tokenizer": 1,
    "llmkit.data.tokenizer_train": 1,
    "llmkit.data.datasets": 1,
    "llmkit.data.shards": 1,
    "llmkit.data.fast_bpe": 1,
    "llmkit.runconfig": 1,
    "llmkit.curate": 1,  # numpy, datasketch, py3langid; stats reads data.tokenizer (L1); matplotlib for the funnel
    "llmkit.objectives": 2,
    "llmkit.inference": 2,
    "llmkit.quantize": 2,
    "llmkit.lora": 2,
    "llmkit.checkpoint": 2,
    "llmkit.quantize_checkpoint": 2,
    "llmkit.hf": 2,
    "llmkit.gguf": 2,
    "llmkit.hub": 2,  # models by name from the Hugging Face Hub (huggingface_hub, imported on that path only)
    "llmkit.summary": 2,
    "llmkit.train": 3,
    "llmkit.evaluate": 3,
    "llmkit.finetune": 3,
    "llmkit.predict": 3,
    "llmkit.viz": 3,
    "llmkit.retrieval": 3,
    "llmkit.chat": 3,
    "llmkit.scale": 3,
    "llmkit.cli": 4,
    "llmkit.serve": 4,
    "llmkit.__main__": 4,
}
TOP = {"llmkit.cli", "llmkit.serve"}  # nothing outside them imports them (but `python -m llmkit`)
ENTRY = "llmkit.__main__"
STDLIB_BACKPORTS = {"__future__", "tomli"}  # tomli: tomllib before Python 3.11, imported only there
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
            assert root in sys.stdlib_module_names or root in STDLIB_BACKPORTS, f"L0 {me} imports {root}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "cli").glob("*.py")), ids=lambda p: module_name(p))
def test_cli_modules_share_only_helpers(path):
    # a command's logic that another command needs belongs in the library; cli/_*.py hold argparse helpers
    me = module_name(path)
    for name in imports_of(path):
        parts = name.split(".")
        if parts[:2] == ["llmkit", "cli"] and len(parts) > 2 and name != me:
            assert parts[2].startswith("_"), f"{me} imports {name}: move what both commands need into llmkit"


def unit_of(module: str) -> str:
    """The package or top-level module of llmkit that ``module`` belongs to: llmkit.quantize.layers -> quantize."""
    return module.split(".")[1]


def unit_graph() -> dict[str, dict[str, str]]:
    """unit -> {imported unit: one module that imports it}, counting every import (inside functions too)."""
    graph: dict[str, dict[str, str]] = {}
    for path in MODULES:
        me = module_name(path)
        if me == "llmkit":  # the lazy re-exports of the package __init__ are no dependency of a unit
            continue
        for name in imports_of(path):
            if name.startswith("llmkit.") and unit_of(name) != unit_of(me):
                graph.setdefault(unit_of(me), {}).setdefault(unit_of(name), me)
    return graph


def find_cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (depth-first search, white/grey/black)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle():
    assert find_cycle({"a": {"b": "x"}, "b": {"c": "y"}}) is None
    assert find_cycle({"a": {"b": "x"}, "b": {"c": "y"}, "c": {"a": "z"}}) == ["a", "b", "c", "a"]


def test_no_import_cycles_between_packages():
    # a cycle between packages (even through a function-level import) means neither can be read,
    # tested or layered without the other: one direction only
    graph = unit_graph()
    cycle = find_cycle(graph)
    assert cycle is None, (
        "import cycle: "
        + " -> ".join(f"{a} (in {graph[a][b]})" for a, b in zip(cycle[:-1], cycle[1:], strict=True))
        + f" -> {cycle[-1]}"
    )


def is_module(name: str) -> bool:
    """Whether ``name`` is a module of llmkit: a .py file, or a folder with an __init__.py."""
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def modules_imported(path: Path) -> set[str]:
    """The llmkit modules ``path`` imports, inside functions too. ``from llmkit.pkg import sub`` names the
    submodule alone: importing it also runs pkg's __init__, but counting that would put every package whose
    __init__ re-exports a submodule in a cycle with it; ``from llmkit.pkg import name`` names pkg."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("llmkit."):
                while not is_module(name):
                    name = name.rsplit(".", 1)[0]
                found.add(name)
    return found


def module_graph() -> dict[str, dict[str, str]]:
    """module -> {imported module: the importing module}, every import counted (inside functions too)."""
    graph: dict[str, dict[str, str]] = {}
    for path in MODULES:
        me = module_name(path)
        for target in sorted(modules_imported(path) - {me}):
            graph.setdefault(me, {})[target] = me
    return graph


def test_modules_imported_names_submodules():
    # llmkit/quantize/layers.py: `from llmkit.quantize import tensors` is the submodule, not the package
    # (whose __init__ imports layers); `from llmkit.quantize.spec import QuantSpec` is the module spec
    found = modules_imported(PACKAGE / "quantize" / "layers.py")
    assert {"llmkit.quantize.tensors", "llmkit.quantize.spec"} <= found and "llmkit.quantize" not in found
    # an import inside a function counts: llmkit/cli/serve.py imports the server when it runs
    assert "llmkit.serve.app" in modules_imported(PACKAGE / "cli" / "serve.py")


def test_no_import_cycles_between_modules():
    # inside one package too (serve/app.py <-> serve/embeddings.py was one, hidden in a function-level
    # import): a module in a cycle cannot be read, tested or loaded without the others; one direction only
    cycle = find_cycle(module_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_l0_modules_import_without_torch():
    code = "import sys, llmkit, llmkit.config, llmkit.errors, llmkit.data.builtin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
