"""The README's examples run as written: its ```python blocks, and the `python -m` commands of its
```bash blocks (the module imports, `--help` exits 0 and lists every flag the README passes).

Run: `.venv/bin/python -m pytest tests/test_readme.py`

The Python blocks run in order, one namespace per README section, in a temporary folder that holds
the README's set-up build (`artifacts/tiny`, ONNX only: all that `Pipeline(..., device="cpu")`
needs). A block whose first line is `# needs: REASON` (e.g. `# needs: cuda`) is skipped with that
reason, so the README says visibly which examples this machine cannot run.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
NEEDS = re.compile(r"#\s*needs:\s*(.+)")
PACKAGES = {p.parent.name for p in README.parent.glob("*/__init__.py")}
FLAG = re.compile(r"^--[a-z][a-z0-9-]*")


def _blocks(lang: str) -> list[tuple[str, int, str]]:
    """(section title, line number, code) of every ```lang block, in README order."""
    text = README.read_text(encoding="utf-8")
    blocks = []
    for m in FENCE.finditer(text):
        if m.group(1) != lang:
            continue
        before = text[: m.start()]
        titles = re.findall(r"^#+ (.+)$", FENCE.sub("", before), re.M)  # not `# comments`
        blocks.append((titles[-1] if titles else "", before.count("\n") + 1, m.group(2)))
    return blocks


def _sections() -> dict[str, list[tuple[int, str]]]:
    sections: dict[str, list[tuple[int, str]]] = {}
    for title, line, code in _blocks("python"):
        sections.setdefault(title, []).append((line, code))
    return sections


def _commands() -> list[tuple[str, list[str]]]:
    """(module, flags) of every `python -m MODULE ...` in a ```bash block, comments left out."""
    found = []
    for _, _, code in _blocks("bash"):
        joined = code.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("#"):
                continue
            for part in re.split(r"&&|;|\|\|", line):
                words = shlex.split(part)
                if "-m" not in words:
                    continue
                i = words.index("-m")
                if not words[0].endswith(("python", "python3")):
                    continue
                if words[i + 1].split(".")[0] not in PACKAGES:
                    continue  # python -m pytest: not ours
                flags = [FLAG.match(w).group(0) for w in words[i + 2 :] if FLAG.match(w)]
                found.append((words[i + 1], flags))
    return found


def needs(code: str) -> str | None:
    """What a block needs that this machine may lack, from its first line `# needs: REASON`."""
    first = code.lstrip("\n").split("\n", 1)[0]
    m = NEEDS.match(first)
    return m.group(1).strip() if m else None


def test_needs_marker() -> None:
    assert needs("# needs: cuda\nimport torch\n") == "cuda"
    assert needs('# device="cuda" runs a build\'s CUDA packages\n') is None


@pytest.fixture(scope="session")
def readme_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder with the README's set-up build, `artifacts/tiny` (ONNX, 5 s)."""
    from export import build

    root = tmp_path_factory.mktemp("readme")
    out = root / "artifacts" / "tiny"
    args = ["--preset", "tiny", "--durations-s", "5", "--backends", "onnx", "--no-verify"]
    assert build.main([*args, "--out", str(out), "-q"]) == 0, "the README's set-up build failed"
    return root


@pytest.mark.parametrize("section", list(_sections()))
def test_python_examples(section: str, readme_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(readme_dir)
    namespace: dict = {"__name__": "__readme__"}
    for line, code in _sections()[section]:
        reason = needs(code)
        if reason:  # the blocks after it build on it, so the rest of the section goes too
            pytest.skip(f"README line {line} needs {reason}")
        _run_block(code, line, namespace)


def _run_block(code: str, line: int, namespace: dict) -> None:
    """Run a block statement by statement. A bare expression whose comment starts with a Python
    value (`audio.shape  # (1, 2, 230 * 960): stereo ...`) must equal that value; so must the shape
    of `name = ...  # (1, 32, 230)`."""
    import ast

    lines = code.splitlines()
    for stmt in ast.parse(code).body:
        where = f"README.md:{line + stmt.lineno}"
        if isinstance(stmt, ast.Expr):
            value = eval(compile(ast.Expression(stmt.value), where, "eval"), namespace)  # noqa: S307
        else:
            exec(compile(ast.Module([stmt], []), where, "exec"), namespace)  # noqa: S102
            targets = getattr(stmt, "targets", [])
            if len(targets) != 1 or not isinstance(targets[0], ast.Name):
                continue
            value = namespace[targets[0].id]
            value = getattr(value, "shape", value)
        comment = lines[stmt.end_lineno - 1][stmt.end_col_offset :].strip()
        if not comment.startswith("#"):
            continue
        claim = comment[1:].split(":")[0].strip()
        try:
            expected = eval(claim, {})  # noqa: S307
        except (SyntaxError, NameError):
            continue  # a prose comment, not a value
        assert value == expected, f"{where}: README says {claim}, the code gives {value!r}"


COMMANDS = _commands()


@pytest.mark.parametrize("module", sorted({m for m, _ in COMMANDS}))
def test_cli_help_lists_readme_flags(module: str) -> None:
    mod = importlib.import_module(module)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        mod.main(["--help"])
    assert exit_.value.code == 0, f"python -m {module} --help exited {exit_.value.code}"
    help_text = out.getvalue()
    used = sorted({f for m, flags in COMMANDS if m == module for f in flags})
    missing = [f for f in used if not re.search(rf"{re.escape(f)}\b(?!-)", help_text)]
    assert not missing, (
        f"README passes {missing} to python -m {module}; its --help has no such flag"
    )


def test_readme_has_examples() -> None:
    assert _sections(), "no ```python blocks found in README.md"
    assert {"export.build", "runtime.generate"} <= {m for m, _ in COMMANDS}


def test_expression_comments_are_checked() -> None:
    _run_block("x = (1, 2)\nx  # (1, 2): a pair\nx  # prose, not a value\n", 0, {})
    with pytest.raises(AssertionError, match=r"README says \(1, 3\)"):
        _run_block("x = (1, 2)\nx  # (1, 3)\n", 0, {})
    with pytest.raises(AssertionError, match=r"README says \(2,\)"):
        _run_block("import numpy\nx = numpy.zeros(3)  # (2,): a shape\n", 0, {})
