"""The part markers are the one way a test says it needs Flux (conftest.py decides the skip): a test that runs a
Flux launch path without the marker would fail on a machine without flux-core instead of skipping. This check
reads every test module, so it fails on any machine, Flux or not, as soon as such a test is written."""

import ast
import importlib
import re
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
# Running a Flux launch path for real: through the runner, the CLI, or a loaded Flux config.
RUNS_FLUX = re.compile(r"""run_tasks\(\s*(["']flux(-jobs)?["']|PATH\b)|["']--path["'],\s*["']flux(-jobs)?["']|"""
                       r"""parsl\.load\(\s*flux_\w*config\(""")


def _marks(obj) -> list[str]:
    marks = getattr(obj, "pytestmark", [])
    return [m.name for m in (marks if isinstance(marks, list) else [marks])]


def _flux_tests_without_the_marker(path: Path) -> list[str]:
    source = path.read_text()
    tree = ast.parse(source)
    module = importlib.import_module(path.stem)
    unmarked = []
    for scope, owner in [(tree, module)] + [(c, getattr(module, c.name, None)) for c in tree.body
                                              if isinstance(c, ast.ClassDef)]:
        inherited = _marks(module) + (_marks(owner) if owner is not module else [])
        for node in scope.body:
            if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test_")):
                continue
            body = "\n".join(ast.get_source_segment(source, stmt) or "" for stmt in node.body)
            if RUNS_FLUX.search(body) and "flux" not in inherited + _marks(getattr(owner, node.name, None)):
                unmarked.append(f"{path.name}::{node.name}")
    return unmarked


def test_every_test_that_runs_a_flux_path_is_marked_flux():
    unmarked = [t for p in sorted(TESTS.glob("test_*.py")) if p.name != Path(__file__).name
                for t in _flux_tests_without_the_marker(p)]
    assert unmarked == [], f"mark these @pytest.mark.flux (conftest.py then skips them where Flux is absent): {unmarked}"


def test_the_check_itself_finds_an_unmarked_flux_test(tmp_path, monkeypatch):
    (tmp_path / "test_fake_flux.py").write_text(
        "import pytest\n\ndef test_a(site):\n    run_tasks('flux-jobs', site, [])\n\n"
        "@pytest.mark.flux\ndef test_b(site):\n    run_tasks('flux', site, [])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _flux_tests_without_the_marker(tmp_path / "test_fake_flux.py") == ["test_fake_flux.py::test_a"]


@pytest.mark.flux
def test_the_marker_skips_with_the_reason_where_flux_is_absent():
    """Runs only where Flux works: conftest's skip let it through, so its own check passes here."""
    from fluxmpi.launch.flux.install import check_flux
    assert check_flux().version
