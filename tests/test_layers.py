"""The package's import graph: no cycles, and the toy world stays above the capabilities.

Every ``import`` in ``mechunlearn/`` counts, also those inside functions (a lazy import is
still an arrow), except imports under ``if __name__ == "__main__":`` (script entry points,
never run on import). The deprecated aliases listed in :data:`ALIASES` exist for one
release to keep old import paths working; the lazy imports inside an alias module's
module-level ``__getattr__`` (names served on first access, e.g. ``mechunlearn.hooks.apply``
from ``mechunlearn.interventions``) are arrows of the graph, but not of the cycle check:
they run only after both modules are imported, and they go away with the alias.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "mechunlearn"
#: old path -> new home; each re-exports the new module with a DeprecationWarning
ALIASES = {
    "mechunlearn.pipeline": "mechunlearn.studies.pipeline",
    "mechunlearn.demo": "mechunlearn.studies.demo",
    "mechunlearn.attribution.evaluate": "mechunlearn.studies.attribution_eval",
    "mechunlearn.attribution.counterfactual": "mechunlearn.studies.counterfactual",
    "mechunlearn.unlearn.compare": "mechunlearn.studies.compare_edits",
    "mechunlearn.unlearn": "mechunlearn.studies",  # __getattr__ alias of compare/CompareConfig
    "mechunlearn.unlearn.attack": "mechunlearn.robustness.relearn",
    "mechunlearn.store": "mechunlearn.storage",  # store + moments + extract
    "mechunlearn.sharded_store": "mechunlearn.storage.sharded",
    "mechunlearn.retrieval": "mechunlearn.storage",  # retrieval + faiss_index + attribute
    "mechunlearn.distributed": "mechunlearn.storage.distributed",
    "mechunlearn.datasets": "mechunlearn.data",
    "mechunlearn.cli_tools": "mechunlearn.cli",  # the commands moved into the cli/ package
    "mechunlearn.distributed_cli": "mechunlearn.cli.distributed",
    "mechunlearn.hooks": "mechunlearn.interventions",  # __getattr__ alias of Intervention/Compose/apply
}
#: the rooms allowed to import mechunlearn.toyworld
ABOVE = ("mechunlearn.studies", "mechunlearn.toyworld", "mechunlearn.cli")


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _is_main_guard(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def _alias_getattr(tree: ast.Module) -> set[int]:
    """Nodes inside a module-level ``def __getattr__`` (a deprecated-name alias)."""
    return {id(n) for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "__getattr__"
            for n in ast.walk(f)}


def graph(alias_getattr: bool = True) -> dict[str, set[str]]:
    """``{module: modules it imports}`` inside the package (``alias_getattr=False``: without
    the imports in the ``__getattr__`` of the modules listed in :data:`ALIASES`)."""
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rsplit(".", 1)[0] if "." in name else ""
        return name or None

    edges: dict[str, set[str]] = defaultdict(set)
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        tree = ast.parse(p.read_text())
        skip = {id(n) for g in ast.walk(tree) if _is_main_guard(g) for n in ast.walk(g)}
        if not alias_getattr and m in ALIASES:
            skip |= _alias_getattr(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    b = ".".join(base) + (f".{node.module}" if node.module else "")
                else:
                    b = node.module or ""
                targets = [f"{b}.{a.name}" if f"{b}.{a.name}" in mods else b for a in node.names]
            for t in targets:
                r = resolve(t) if t.startswith("mechunlearn") else None
                if r and r != m:
                    edges[m].add(r)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    edges = graph(alias_getattr=False)
    assert sum(len(v) for v in edges.values()) > 100  # the scan really sees the package
    assert cycles(edges) == []
    # the exemption is narrow: with the alias __getattr__ arrows, hooks <-> interventions cycle
    assert cycles(graph()) != []


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_toy_world_only_above_the_capabilities() -> None:
    edges = graph()
    assert any(t.startswith("mechunlearn.toyworld") for t in edges["mechunlearn.studies.demo"])
    bad = {m: sorted(t for t in ts if t.startswith("mechunlearn.toyworld"))
           for m, ts in edges.items()
           if not m.startswith(ABOVE) and m not in ALIASES}
    assert {m: t for m, t in bad.items() if t} == {}
    # aliases point at studies only, never at the toy world directly
    for alias, home in ALIASES.items():
        assert not any(t.startswith("mechunlearn.toyworld") for t in edges.get(alias, ())), alias
        assert any(t.startswith(home) for t in edges.get(alias, ())), alias
