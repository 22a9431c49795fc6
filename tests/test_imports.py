"""The shape of the source tree, read with ast (nothing is imported): who may import whom, and size limits.

- the runtime imports nothing from the exporter, the trainer, bench or the CLI (it ships alone, lean);
- bench imports nothing from the trainer (the benchmark sets live in bench; the trainer reads them there);
- no import cycle between packages, lazy imports inside functions included;
- no module over 400 lines and no function body over 80 lines (its signature, decorators and docstring not
  counted: click options make a command's signature long) in the packages and scripts/ (tests/ and the
  one-off measurements of experiments/ are exempt; experiments/harness.py is kept to it all the same).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Folder -> import name (pyproject.toml's package-dir); eaglex/ itself holds the CLI and the shared errors.
PACKAGES = {
    "runtime": "eaglex.runtime",
    "exporter": "eaglex.exporter",
    "bench": "eaglex.bench",
    "plugins": "eaglex.plugins",
    "trainer": "eaglex.train",
    "eaglex": "eaglex",
}
SIZED_FOLDERS = [*PACKAGES, "scripts"]
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 80


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT)
    parts = [PACKAGES[relative.parts[0]].removeprefix("eaglex").lstrip("."), *relative.parts[1:]]
    parts[-1] = parts[-1].removesuffix(".py")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["eaglex", *[p for p in parts if p]])


def component(name: str) -> str | None:
    """The package an eaglex module belongs to: runtime, exporter, bench, plugins, train, cli or core."""
    parts = name.split(".")
    if parts[0] != "eaglex":
        return None
    if len(parts) > 1 and parts[1] == "__main__":
        return "cli"  # the entry point: the CLI inside its interrupt boundary
    if len(parts) == 1 or parts[1] == "errors":
        return "core"
    return parts[1] if parts[1] in ("runtime", "exporter", "bench", "plugins", "train", "cli") else "core"


def package_files() -> Iterator[Path]:
    for folder in PACKAGES:
        yield from sorted((ROOT / folder).rglob("*.py"))


@cache
def imports() -> dict[str, set[str]]:
    """Every eaglex module each package module imports, at the top or inside a function."""
    found: dict[str, set[str]] = {}
    for path in package_files():
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolved against the importing module's package
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets |= {f"{base}.{alias.name}" for alias in node.names} | {base}
        found[name] = {t for t in targets if t.split(".")[0] == "eaglex"}
    return found


def package_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for source, targets in imports().items():
        edges.setdefault(component(source), set()).update(
            c for c in map(component, targets) if c not in (None, component(source))
        )
    return edges


def offenders(source: str, forbidden: set[str]) -> list[str]:
    return sorted(
        f"{module} imports {target}"
        for module, targets in imports().items()
        if component(module) == source
        for target in targets
        if component(target) in forbidden
    )


def test_the_tree_is_read():
    assert module_name(ROOT / "trainer" / "loop.py") == "eaglex.train.loop"
    assert module_name(ROOT / "eaglex" / "cli" / "run.py") == "eaglex.cli.run"
    assert "eaglex.runtime.backends.base" in imports()["eaglex.runtime.generate"]
    assert "eaglex.exporter.attention" in imports()["eaglex.exporter.graphs"]  # a relative import
    assert {"runtime", "exporter", "bench", "train"} <= package_edges()["cli"]


def test_runtime_imports_no_exporter_trainer_bench_or_cli():
    assert offenders("runtime", {"exporter", "train", "bench", "cli"}) == []


def test_bench_imports_nothing_from_the_trainer():
    assert offenders("bench", {"train", "cli"}) == []


def test_no_import_cycles_between_packages():
    edges = package_edges()
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt in path:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif len(path) < len(edges) + 1:
                visit(nxt, [*path, nxt])

    for start in sorted(edges):
        visit(start, [start])
    assert cycles == []


def sized_files() -> list[Path]:
    files = [p for folder in SIZED_FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))]
    return [*files, ROOT / "experiments" / "harness.py"]


@pytest.mark.parametrize("path", sized_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_and_function_sizes(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path.name}: split it along its ideas"
    long = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]  # the docstring
            lines = node.end_lineno - body[0].lineno + 1
            if lines > MAX_FUNCTION_LINES:
                long.append(f"{node.name} ({lines} lines)")
    assert long == []
