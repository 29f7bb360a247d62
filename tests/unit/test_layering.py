"""Which first-party package may import which (README, Layout): walks every module's imports with `ast`
(nothing is imported), lazy imports inside functions and `TYPE_CHECKING` blocks included."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ingest", "devices", "simulator")
FIRST_PARTY = (*PACKAGES, "tests", "bench")

# Module prefix → first-party prefixes its modules may import; the longest matching prefix decides.
# The same table as the README's Layout section. `tests/` and `bench/` may import anything, and
# nothing may import them (they appear in no row).
ALLOWED: dict[str, tuple[str, ...]] = {
    "devices.protocol": ("devices.protocol",),
    "devices": ("devices",),
    "simulator": ("simulator", "devices"),
    "ingest": ("ingest", "devices"),
    "ingest.dev": ("ingest", "devices", "simulator"),  # the demo drives a simulated fleet
}
# What `depin run` loads (ingest/service.py and everything it imports) never reaches the dev-only
# parts (local brokers, local chain, demo); outside `ingest.dev`, only the CLI's `demo` command
# imports them.
PRODUCTION_ROOT = "ingest.service"
DEV_ONLY = "ingest.dev"
DEV_IMPORTERS = ("ingest.cli",)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_package(name: str) -> bool:
    return (ROOT / Path(*name.split(".")) / "__init__.py").is_file()


def _imports(name: str, path: Path, known: set[str]) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import in the file, at any depth."""
    package = name if _is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield node.lineno, sub if sub in known else base  # `from pkg import module`


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _rule(module: str) -> tuple[str, ...]:
    best = max((p for p in ALLOWED if _matches(module, p)), key=len)
    return ALLOWED[best]


def _first_party_edges() -> list[tuple[str, int, str]]:
    modules = _modules()
    known = set(modules)
    return [
        (name, line, target)
        for name, path in modules.items()
        for line, target in _imports(name, path, known)
        if target.split(".")[0] in FIRST_PARTY
    ]


def test_every_import_follows_the_table() -> None:
    edges = _first_party_edges()
    assert edges, "the walk found no first-party imports at all"
    bad = sorted(
        {
            f"{name}:{line} imports {target}"
            for name, line, target in edges
            if not any(_matches(target, p) for p in _rule(name))
        }
    )
    assert not bad, "imports against the layering table (README, Layout):\n" + "\n".join(bad)


def _unit(module: str) -> str:
    return "devices.protocol" if _matches(module, "devices.protocol") else module.split(".")[0]


def test_no_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for name, _, target in _first_party_edges():
        if _unit(name) != _unit(target):
            graph.setdefault(_unit(name), set()).add(_unit(target))
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError("import cycle: " + " → ".join([*path[path.index(node) :], node]))
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, [*path, node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])


def _closure(root: str) -> set[str]:
    """Every first-party module `root` imports, directly or through others."""
    modules = _modules()
    known = set(modules)
    seen: set[str] = set()
    todo = [root]
    while todo:
        name = todo.pop()
        if name in seen or name not in known:
            continue
        seen.add(name)
        todo += [t for _, t in _imports(name, modules[name], known) if t.split(".")[0] in FIRST_PARTY]
    return seen


def test_device_sdk_needs_no_service() -> None:
    """A device maker's closure: the signing SDK pulls in its keys and the protocol, nothing else."""
    seen = _closure("devices.sdk")
    extra = {m for m in seen if not _matches(m, "devices.protocol")} - {"devices.sdk", "devices.keys"}
    assert not extra, f"devices.sdk reaches {sorted(extra)}"


def test_depin_run_needs_no_dev_parts() -> None:
    """A production install runs without the demo's brokers, chains or their optional packages."""
    seen = _closure(PRODUCTION_ROOT)
    assert len(seen) > 10, f"the walk from {PRODUCTION_ROOT} found only {sorted(seen)}"
    dev = sorted(m for m in seen if _matches(m, DEV_ONLY))
    assert not dev, f"{PRODUCTION_ROOT} reaches {dev}"
    importers = sorted(
        {
            f"{name}:{line} imports {target}"
            for name, line, target in _first_party_edges()
            if _matches(target, DEV_ONLY) and not _matches(name, DEV_ONLY) and name not in DEV_IMPORTERS
        }
    )
    assert not importers, f"only {DEV_IMPORTERS} may import {DEV_ONLY} from outside it: {importers}"


def test_the_walk_sees_lazy_imports(tmp_path: Path) -> None:
    """The walk must catch an import inside a function (the cycle the old layout hid there)."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from ingest.service import run\n    import simulator.fleet\n")
    found = [t for _, t in _imports("devices.m", src, set())]
    assert found == ["ingest.service", "simulator.fleet"]
    assert not any(_matches(t, p) for t in found for p in _rule("devices.m"))


def test_protocol_needs_only_cbor2_and_h3() -> None:
    """What a device build links: the protocol's third-party imports (the README's table says so)."""
    modules = _modules()
    known = set(modules)
    outside = sorted(
        {
            f"{name} imports {target}"
            for name, path in modules.items()
            if _matches(name, "devices.protocol")
            for _, target in _imports(name, path, known)
            if target.split(".")[0] not in {*sys.stdlib_module_names, *FIRST_PARTY, "cbor2", "h3"}
        }
    )
    assert not outside, outside


def test_metrics_are_defined_in_one_place() -> None:
    """Every Prometheus metric lives in ingest/metrics.py (docs/DESIGN.md §10), so /metrics has one
    list to read: no other module imports a metric type from prometheus_client."""
    kinds = {"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum"}
    outside = sorted(
        f"{name}:{node.lineno} imports {alias.name}"
        for name, path in _modules().items()
        if name != "ingest.metrics"
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prometheus_client")
        for alias in node.names
        if alias.name in kinds
    )
    assert not outside, outside
