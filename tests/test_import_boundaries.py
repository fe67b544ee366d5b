"""The import rule of the package map (README, "Where code goes"), read from the source itself.

Every `import` and `from ... import` of every module is read by syntax tree, those inside functions
and methods too, so a lazy import cannot hide a dependency. A second check imports each leaf in a
fresh interpreter to see which heavy third-party libraries load eagerly.

    presto_common   imports nothing of the project
    presto_ref      presto_common
    runtime         presto_common
    export          presto_common, presto_ref, runtime
    calibration     presto_common, presto_ref, runtime, export
    benchmarks      presto_common, presto_ref (eager baselines), and only the public faces of
                    runtime and export: `import runtime` / `from runtime import Name`, never a
                    submodule, a private name, or a private attribute of another object
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("presto_common", "presto_ref", "runtime", "export", "calibration", "benchmarks")
ALLOWED = {
    "presto_common": set(),
    "presto_ref": {"presto_common"},
    "runtime": {"presto_common"},
    "export": {"presto_common", "presto_ref", "runtime"},
    "calibration": {"presto_common", "presto_ref", "runtime", "export"},
    "benchmarks": {"presto_common", "presto_ref", "runtime", "export"},
}
# Packages that benchmarks may only reach through their top-level names.
PUBLIC_ONLY = {"benchmarks": {"runtime", "export"}}


def imports(path: Path) -> list[tuple[int, str, tuple[str, ...]]]:
    """(line, module, imported names) for every import statement of a file, at any depth."""
    package = path.relative_to(ROOT).parts[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative imports stay inside their own package
                module = package
            found.append((node.lineno, module, tuple(a.name for a in node.names)))
    return found


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def violations(package: str) -> list[str]:
    bad = []
    public_only = PUBLIC_ONLY.get(package, set())
    for path in sources(package):
        where = path.relative_to(ROOT)
        for line, module, names in imports(path):
            root = module.split(".")[0]
            if root == package or root not in PACKAGES:
                continue
            if root not in ALLOWED[package]:
                bad.append(f"{where}:{line} imports {module}")
            elif root in public_only:
                if module != root:
                    bad.append(f"{where}:{line} imports the submodule {module}; use `{root}`'s API")
                bad += [
                    f"{where}:{line} imports the private name {root}.{n}"
                    for n in names
                    if n.startswith("_")
                ]
    return bad


# Private names of other libraries that have no public equivalent, allowed with the reason.
THIRD_PARTY_PRIVATE = {
    ("torch", "_scaled_mm"): "torch's only FP8 GEMM (export/quant_torch.py runs the DiT with it)",
}


def private_attributes(package: str) -> list[str]:
    """Uses of `obj._name` on anything but self/cls (reaching into another object's privates),
    but for THIRD_PARTY_PRIVATE's `module._name`."""
    bad = []
    for path in sources(package):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                and not (
                    isinstance(node.value, ast.Name)
                    and (node.value.id, node.attr) in THIRD_PARTY_PRIVATE
                )
            ):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} uses .{node.attr}")
    return bad


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_follow_the_package_map(package: str) -> None:
    assert not violations(package), "\n".join(violations(package))


def test_benchmarks_use_no_private_attributes_of_the_runtime() -> None:
    found = private_attributes("benchmarks")
    assert not found, "\n".join(found)


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = "def f():\n    from export.build import main\n    import calibration\n"
    path = ROOT / "runtime" / "_boundary_probe.py"
    path.write_text(source)
    try:
        found = violations("runtime")
    finally:
        path.unlink()
    assert any("_boundary_probe.py:2 imports export.build" in b for b in found)
    assert any("_boundary_probe.py:3 imports calibration" in b for b in found)


def test_the_checker_holds_benchmarks_to_public_faces() -> None:
    probe = ROOT / "benchmarks" / "_boundary_probe.py"
    probe.write_text("from runtime.pipeline import Pipeline\nfrom runtime import _secret\n")
    try:
        found = violations("benchmarks")
    finally:
        probe.unlink()
    assert any("imports the submodule runtime.pipeline" in b for b in found)
    assert any("private name runtime._secret" in b for b in found)


def loaded_modules(package: str) -> set[str]:
    code = (
        "import importlib, pkgutil, sys\n"
        f"pkg = importlib.import_module({package!r})\n"
        "for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return {m.split(".")[0] for m in out.stdout.split()}


HEAVY = {"onnx", "tensorrt", "tensorrt_rtx", "onnxruntime", "polygraphy"}


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("presto_common", set(PACKAGES) - {"presto_common"} | HEAVY),
        ("presto_ref", set(PACKAGES) - {"presto_common", "presto_ref"} | HEAVY),
        ("runtime", set(PACKAGES) - {"presto_common", "runtime"} | HEAVY - {"onnxruntime"}),
    ],
)
def test_leaves_load_no_heavy_libraries_on_import(package: str, forbidden: set[str]) -> None:
    leaked = loaded_modules(package) & forbidden
    assert not leaked, f"importing {package} loaded {sorted(leaked)}"
