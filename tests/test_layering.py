"""mtdp_hub's layers: every import points down, no cycle, no training code, nothing heavy at import."""

import subprocess
import sys

import pytest

from tests import import_graph
from tests.conftest import REPO_ROOT


def test_every_import_of_the_installed_package_points_down():
    g = import_graph.graph()
    assert {
        'mtdp_hub.models',
        'mtdp_hub.features.run',
        'mtdp_hub.evaluation.protocol',
        'mtdp_hub.cli',
    } <= set(g)
    assert import_graph.upward_imports(g) == []
    assert import_graph.foreign_imports(g) == []


def test_no_import_cycle_even_through_function_bodies():
    assert import_graph.cycles(import_graph.graph()) == []


def test_the_checks_find_what_they_look_for(tmp_path):
    # A function-level import that closes a circle, and imports pointing up a layer or out of the package.
    g = {
        'mtdp_hub.convert': {'mtdp_hub.export'},
        'mtdp_hub.export': {'mtdp_hub.weights'},
        'mtdp_hub.weights': {'mtdp_hub.convert', 'training.loop'},
        'mtdp_hub.features.run': {'mtdp_hub.evaluation'},
        'mtdp_hub.evaluation': set(),
        'mtdp_hub.cli': {'mtdp_hub.evaluation'},
    }
    assert import_graph.cycles(g) == [
        ['mtdp_hub.convert', 'mtdp_hub.export', 'mtdp_hub.weights', 'mtdp_hub.convert']
    ]
    assert import_graph.upward_imports(g) == [
        'mtdp_hub.features.run (features) imports mtdp_hub.evaluation (evaluation)'
    ]
    assert import_graph.foreign_imports(g) == ['mtdp_hub.weights imports training.loop']
    source = tmp_path / 'm.py'
    source.write_text(
        'def f():\n    from .. import tasks\n    from ..features import run\n    import torch\n'
    )
    known = {'mtdp_hub.tasks', 'mtdp_hub.features', 'mtdp_hub.features.run'}
    assert import_graph.imports_of('mtdp_hub.evaluation.m', source, known) == {
        'mtdp_hub.tasks',
        'mtdp_hub.features.run',
        'torch',
    }


def test_third_party_imports_are_declared_and_extras_are_imported_lazily():
    assert import_graph.undeclared_imports() == []
    requires = (REPO_ROOT / 'setup.cfg').read_text().split('install_requires =')[1].split('\n\n')[0]
    names = {line.strip().split('>')[0].split('=')[0] for line in requires.splitlines() if line.strip()}
    assert {n.replace('Pillow', 'PIL') for n in names} == import_graph.REQUIRED


@pytest.mark.slow
def test_import_pulls_no_heavy_modules():
    code = (
        'import sys, mtdp_hub, mtdp_hub.cli, mtdp_hub.hub\n'
        'mtdp_hub.cli.build_parser()\n'
        "bad = [m for m in ('training', 'sklearn', 'datasets', 'matplotlib', 'pyarrow', 'pandas')"
        ' if m in sys.modules]\n'
        'print(bad)\n'
    )
    out = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '[]'
