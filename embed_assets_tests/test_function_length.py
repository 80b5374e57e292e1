"""No long functions hide in the package: a function over ``MAX_LINES`` lines (def to last line,
docstring included) carries a ``# long: <reason>`` comment on its ``def`` line or the line above,
and there are at most ``MAX_LONG`` of them."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "embed_assets"
MAX_LINES = 80
MAX_LONG = 5
REASON = "# long:"


def long_functions() -> list[tuple[str, int, str, bool]]:
    """``(file:line, lines, name, has_reason)`` for every function over ``MAX_LINES``."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            length = node.end_lineno - node.lineno + 1
            if length > MAX_LINES:
                # the decorator-free def line, and the line above it (decorators included)
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                beside = lines[first - 2 : node.lineno]
                where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
                found.append((where, length, node.name, any(REASON in line for line in beside)))
    return found


def test_long_functions_are_few_and_say_why():
    found = long_functions()
    unexplained = [f"{where} {name} ({n} lines)" for where, n, name, ok in found if not ok]
    assert not unexplained, f"functions over {MAX_LINES} lines without a '{REASON}' comment: {unexplained}"
    assert len(found) <= MAX_LONG, f"{len(found)} functions over {MAX_LINES} lines: {found}"


def test_the_check_sees_a_long_function(tmp_path, monkeypatch):
    """The walk finds a long function and reads its reason (so the test above can fail)."""
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "embed_assets").mkdir()
    (tmp_path / "embed_assets" / "m.py").write_text(
        f"def quiet():\n{body}\n\n# long: a table\ndef said():\n{body}\n"
    )
    monkeypatch.setattr(__name__ + ".PACKAGE", tmp_path / "embed_assets")
    assert [(name, ok) for _, _, name, ok in long_functions()] == [("quiet", False), ("said", True)]
