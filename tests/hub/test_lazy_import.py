"""``import mtdp_hub`` loads neither torch nor timm, and still registers the models once timm is imported."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.slow  # a fresh interpreter importing torch: ~6 s on 2 shared cores
def test_models_register_when_timm_is_imported_after_mtdp_hub():
    code = (
        'import sys\n'
        'import mtdp_hub\n'
        "before = [m for m in ('torch', 'timm') if m in sys.modules]\n"
        'from timm.models import create_model, is_model\n'
        "print(before, is_model('mtdp_resnet50'), type(create_model('mtdp_densenet121')).__name__)\n"
        'print(sorted(mtdp_hub.list_models()))\n'
    )
    env = {**os.environ, 'PYTHONPATH': str(REPO_ROOT), 'OMP_NUM_THREADS': '1'}
    out = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        '[] True MtdpDenseNet',
        "['mtdp_densenet121', 'mtdp_resnet50']",
    ]
