"""mtdp_hub stays light: importing it pulls in no training code and no heavy optional library."""
import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_import_pulls_no_heavy_modules():
    code = ('import sys, mtdp_hub, mtdp_hub.cli, mtdp_hub.hub\n'
            'mtdp_hub.cli.build_parser()\n'
            "bad = [m for m in ('training', 'sklearn', 'datasets', 'matplotlib', 'pyarrow', 'pandas')"
            ' if m in sys.modules]\n'
            'print(bad)\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '[]'


def test_package_never_names_training():
    for path in (REPO_ROOT / 'mtdp_hub').rglob('*.py'):
        text = path.read_text()
        assert 'import training' not in text and 'from training' not in text, path
