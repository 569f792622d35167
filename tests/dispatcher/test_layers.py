"""The dispatcher's layers point one way, counted transitively.

The Kubernetes client (``dispatcher/kube/``) and the Redis side are the bottom layers: the
pipeline (intake, launch, acks, ends, reconciliation, wiring) and the executors use them,
never the reverse. A direct-import check misses an edge through a third module (kube ->
metrics -> failures -> executors was one), so each module's whole import closure is
checked: every import statement in the source, also inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
KUBE = "dispatcher.kube"
REDIS = ("dispatcher.store.queue", "dispatcher.store.lua", "dispatcher.store.retry",
         "dispatcher.store.errors", "dispatcher.observability.queue_state")
PIPELINE = ("dispatcher.intake", "dispatcher.launcher", "dispatcher.acks", "dispatcher.ends",
            "dispatcher.failures", "dispatcher.reconciler", "dispatcher.rejects",
            "dispatcher.preflight", "dispatcher.dispatch_state", "dispatcher.service",
            "dispatcher.app", "dispatcher.cli")
EXECUTORS = "dispatcher.executors"


def modules(root: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` under ``root``, by dotted name."""
    found = {}
    for path in sorted((root / package.replace(".", "/")).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def direct_imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The known modules one file imports (``from pkg import mod`` names ``pkg.mod``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out |= {f"{node.module}.{alias.name}" for alias in node.names}
    # Importing a.b.c runs a/__init__ and a/b/__init__ too.
    with_parents = {".".join(name.split(".")[:i]) for name in out
                    for i in range(1, name.count(".") + 2)}
    return with_parents & set(known)


def closure(start: str, known: dict[str, Path]) -> dict[str, str]:
    """Every module ``start`` loads, each with the module that first imports it (so a
    failure can print the chain)."""
    via: dict[str, str] = {start: ""}
    todo = [start]
    while todo:
        name = todo.pop()
        for target in sorted(direct_imports(known[name], known)):
            if target not in via:
                via[target] = name
                todo.append(target)
    return via


def chain(target: str, via: dict[str, str]) -> str:
    hops = [target]
    while via[hops[-1]]:
        hops.append(via[hops[-1]])
    return " -> ".join(reversed(hops))


def above(name: str) -> bool:
    return name in PIPELINE or name == EXECUTORS or name.startswith(EXECUTORS + ".")


def bottom_layer_modules() -> list[str]:
    known = modules(REPO, "dispatcher")
    return sorted(m for m in known if m == KUBE or m.startswith(KUBE + ".") or m in REDIS)


@pytest.mark.parametrize("module", bottom_layer_modules())
def test_the_bottom_layers_load_neither_the_pipeline_nor_the_executors(module: str) -> None:
    known = modules(REPO, "dispatcher")
    via = closure(module, known)
    inverted = [chain(name, via) for name in sorted(via) if above(name)]
    assert not inverted, f"{module} loads a layer above it: {inverted}"


def test_the_layer_lists_name_modules_that_exist() -> None:
    """A renamed module must not drop out of the check unnoticed."""
    known = modules(REPO, "dispatcher")
    assert set(REDIS + PIPELINE + (KUBE, EXECUTORS)) <= set(known)


def test_an_edge_through_a_third_module_is_found(tmp_path: Path) -> None:
    """The closure follows chains (the shape of the inversion this check exists for)."""
    files = {"pkg/__init__.py": "",
             "pkg/low/__init__.py": "",
             "pkg/low/client.py": "from pkg.metrics import Metrics\n",
             "pkg/metrics.py": "from pkg import reasons\n",
             "pkg/reasons.py": "def f():\n    from pkg.high.base import End\n",
             "pkg/high/__init__.py": "",
             "pkg/high/base.py": "End = 1\n"}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    known = modules(tmp_path, "pkg")
    via = closure("pkg.low.client", known)
    assert chain("pkg.high.base", via) == \
        "pkg.low.client -> pkg.metrics -> pkg.reasons -> pkg.high.base"
