"""
The layers, checked: every module of the agent imports only from its own package or from layers below it.

Data flows one way through the stages (sources → worker → rules → executor → guard → targets → decisions → sinks
→ ledger), and the plug-ins (actions, target kinds, sources) are each one module plus a registry line. That only
stays true if no stage reaches up: a target kind that imported the executor, or config.py importing the actions
(it did, so the whole file's model now lives in configfile.py, above them). Every import counts, at module level,
inside functions and under ``TYPE_CHECKING`` alike.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

# Top to bottom. A module may import its own package's modules and anything in a lower layer.
LAYERS: list[tuple[str, ...]] = [
    ("agent.__main__",),
    ("agent.cli",),
    ("agent.demo",),
    ("agent.app",),
    ("agent.sources", "agent.server", "agent.intents"),
    ("agent.worker", "agent.evacuation", "agent.capping", "agent.advice"),
    ("agent.reconciler",),
    ("agent.rules", "agent.executor"),
    ("agent.guard", "agent.decisions", "agent.configfile", "agent.report"),  # report: reads the ledger
    ("agent.actions", "agent.sinks", "agent.ledger", "agent.cost"),
    ("agent.targets",),
    ("agent.claims", "agent.calendar", "agent.warmup", "agent.errors", "agent.supervisor", "agent.kube", "agent.logs"),
    ("agent.devcluster", "agent.config", "agent.metrics", "agent.notices"),
    ("agent.structs", "agent.durations"),
]
AGENT = ROOT / "agent"


def module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> tuple[int, str]:
    """The layer's index and the entry (package) the module belongs to, by the longest matching prefix."""
    best: tuple[int, str] | None = None
    for index, entries in enumerate(LAYERS):
        for entry in entries:
            if (module == entry or module.startswith(entry + ".")) and (best is None or len(entry) > len(best[1])):
                best = (index, entry)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "agent" or name.startswith("agent.")}


def test_every_module_imports_only_its_own_package_or_layers_below() -> None:
    violations = []
    modules = sorted(AGENT.rglob("*.py"))
    assert len(modules) > 30
    for path in modules:
        importer = module_of(path)
        if importer == "agent":  # the package's own __init__: its version, nothing of the stages
            assert imports_of(path) == set()
            continue
        level, package = layer_of(importer)
        for imported in sorted(imports_of(path)):
            if imported == "agent":
                continue
            their_level, their_package = layer_of(imported)
            if their_package == package:
                continue
            if their_level <= level:
                violations.append(f"{importer} (layer {level}) imports {imported} (layer {their_level})")
    assert violations == []


def test_the_settings_import_no_plug_in() -> None:
    plug_ins = ("agent.actions", "agent.targets", "agent.sources")
    assert not [name for name in imports_of(AGENT / "config.py") if name.startswith(plug_ins)]


def test_the_check_catches_an_upward_import(tmp_path: Path) -> None:
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("def f():\n    from agent.executor import Executor\n")
    assert imports_of(sneaky) == {"agent.executor"}
    assert layer_of("agent.executor")[0] < layer_of("agent.targets.scaledobject")[0]
