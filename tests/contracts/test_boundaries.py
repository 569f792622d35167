"""The layers point one way: dispatcher -> contracts <- runner_image.

Each deployable ships only its own package plus ``contracts``, so an import across the
boundary would fail in its image at run time. Two checks: every import statement in the
source (also inside functions and ``TYPE_CHECKING`` blocks), and what importing every module
really loads (catches ``importlib.import_module`` with a literal name).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("contracts", "dispatcher", "runner_image")
# What each package may import of the project's own packages.
ALLOWED = {
    "contracts": {"contracts"},
    "dispatcher": {"dispatcher", "contracts"},
    "runner_image": {"runner_image", "contracts"},
}
# contracts ships in both images: only the project's base dependencies (pyproject
# [project].dependencies) and the standard library are installed in both.
CONTRACTS_THIRD_PARTY = {"pydantic", "pydantic_settings", "redis"}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module's file, relative to the repository
    line: int
    target: str  # the absolute dotted name imported

    @property
    def top(self) -> str:
        return self.target.split(".", 1)[0]

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.target}"


def _package_of(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        return ".".join(parts)
    return ".".join(parts[:-1])


def imports_of(path: Path, root: Path = REPO) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = str(path.relative_to(root))
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(rel, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = _package_of(path, root).split(".")
                base = base[: len(base) - (node.level - 1)]
                if node.module is None:  # `from . import x`: x is a module of the package
                    found += [Import(rel, node.lineno, ".".join([*base, alias.name]))
                              for alias in node.names]
                    continue
                target = ".".join([*base, node.module])
            else:
                target = node.module or ""
            found.append(Import(rel, node.lineno, target))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append(Import(rel, node.lineno, node.args[0].value))
    return found


def sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def test_the_import_walk_sees_imports_of_every_form(tmp_path: Path) -> None:
    # The checker itself must not be blind: a module with each form of import.
    (tmp_path / "runner_image").mkdir()
    probe = tmp_path / "runner_image" / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "import dispatcher.queue\n"
        "from dispatcher import metrics\n"
        "from . import db\n"
        "if TYPE_CHECKING:\n"
        "    from dispatcher.settings import DispatcherSettings\n"
        "def f():\n"
        "    import importlib\n"
        "    importlib.import_module('dispatcher.app')\n"
    )
    targets = {i.target for i in imports_of(probe, root=tmp_path)}
    assert {"dispatcher.queue", "dispatcher", "runner_image.db", "dispatcher.settings",
            "dispatcher.app"} <= targets


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_down_the_layers(package: str) -> None:
    own = set(PACKAGES)
    offending = [str(i) for path in sources(package) for i in imports_of(path)
                 if i.top in own and i.top not in ALLOWED[package]]
    assert not offending, (
        f"{package} must import only {sorted(ALLOWED[package])} of the project's packages "
        f"(each image ships only its own package plus contracts); move what both sides share "
        f"into contracts/: " + "; ".join(offending))


def test_contracts_need_only_the_base_dependencies() -> None:
    allowed = set(sys.stdlib_module_names) | CONTRACTS_THIRD_PARTY | {"contracts", "__future__"}
    offending = [str(i) for path in sources("contracts") for i in imports_of(path)
                 if i.top not in allowed]
    assert not offending, (
        "contracts ships in both images, which share only pyproject's base dependencies "
        f"{sorted(CONTRACTS_THIRD_PARTY)}: " + "; ".join(offending))


@pytest.mark.parametrize("package", ["contracts", "runner_image", "dispatcher"])
def test_importing_every_module_loads_no_other_deployable(package: str) -> None:
    # A fresh interpreter: what importing the package's modules actually pulls in.
    modules = [".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
               for p in sources(package) if p.name != "__main__.py"]  # __main__ runs on import
    forbidden = sorted(set(PACKAGES) - ALLOWED[package])
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r})))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing {package} loaded {loaded}"
