"""Single-file independence has a price: code that two scripts share is copied. This test
proves the copies agree. Any top-level function or class defined under the same name in two
scripts must have identical source, unless the name is listed below with the reason why
the scripts legitimately differ."""

import ast
import itertools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in ROOT.glob("*.py"))

# Names that every script defines for itself.
DIFFER_BY_DESIGN = {
    "Args": "each script has its own flags",
    "train": "each script has its own training loop",
    "check_args": "each script validates its own flags",
}


def top_level_sources(path):
    text = path.read_text()
    tree = ast.parse(text)
    return {
        node.name: ast.get_source_segment(text, node)
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.ClassDef)
    }


def test_scripts_exist():
    assert {p.name for p in SCRIPTS} >= {"ppo_cartpole.py"}


@pytest.mark.parametrize(
    "a,b", list(itertools.combinations(SCRIPTS, 2)), ids=lambda p: getattr(p, "stem", p)
)
def test_same_name_same_source(a, b):
    sa, sb = top_level_sources(a), top_level_sources(b)
    for name in sorted((sa.keys() & sb.keys()) - DIFFER_BY_DESIGN.keys()):
        assert sa[name] == sb[name], f"{name} differs between {a.name} and {b.name}"


def test_no_script_imports_another():
    stems = {p.stem for p in SCRIPTS}
    for path in SCRIPTS:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [(node.module or "").split(".")[0]]
            else:
                continue
            assert not stems & set(names), f"{path.name} imports {stems & set(names)}"


def test_shared_helpers_present_everywhere():
    """The CLI, checkpoint and error-handling helpers are in every script."""
    for path in SCRIPTS:
        names = top_level_sources(path).keys()
        for helper in ("flag", "parse_args", "save_atomic", "main"):
            assert helper in names, f"{path.name} lacks {helper}()"
