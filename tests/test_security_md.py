"""SECURITY.md stays true: every test its threat model names exists."""

from __future__ import annotations

from .conftest import ROOT


def test_security_md_names_only_tests_that_exist() -> None:
    """Every test SECURITY.md names for a class of hostile input exists (here or in the module the
    table names), so the threat model cannot drift from what is tested."""
    import ast
    import re

    text = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(test_[a-z0-9_]+)`", text))
    defined = {
        node.name
        for path in (ROOT / "tests").glob("test_*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef)
    }
    assert len(named) > 50
    assert sorted(named - defined) == []
