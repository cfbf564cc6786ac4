"""torch.hub.load on this repository (source='local')."""

import importlib.util
import re

import torch

from tests.conftest import REPO_ROOT


def test_hub_load_local_pretrained(original_checkpoint):
    ckpt = original_checkpoint('resnet50')
    model = torch.hub.load(
        str(REPO_ROOT),
        'mtdp_resnet50',
        source='local',
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(ckpt.path)),
    ).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (model(x) - ckpt.reference(x)).abs().max() <= 1e-5


def test_hub_entry_points_and_kwargs_pass_through():
    model = torch.hub.load(
        str(REPO_ROOT), 'mtdp_densenet121', source='local', pretrained=False, num_classes=3
    ).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_hubconf_declares_dependencies_and_documented_entry_points():
    spec = importlib.util.spec_from_file_location('hubconf', REPO_ROOT / 'hubconf.py')
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert hubconf.dependencies == ['torch', 'timm', 'safetensors', 'huggingface_hub']
    for name in ('mtdp_resnet50', 'mtdp_densenet121'):
        assert callable(getattr(hubconf, name)) and getattr(hubconf, name).__doc__
    assert 'no final ReLU' in hubconf.mtdp_densenet121.__doc__


def test_hubconf_and_readme_name_the_repository_of_setup_cfg():
    """One GitHub repository name everywhere: setup.cfg's url, hubconf's docstring, the README."""
    url = next(
        line for line in (REPO_ROOT / 'setup.cfg').read_text().splitlines() if line.startswith('url =')
    )
    repo = url.split('github.com/')[1].strip()
    hubconf = (REPO_ROOT / 'hubconf.py').read_text()
    readme = (REPO_ROOT / 'README.md').read_text()
    assert f"torch.hub.load('{repo}'" in hubconf and f"torch.hub.load('{repo}'" in readme
    named = set(re.findall(r"torch\.hub\.load\('([\w.-]+/[\w.-]+)'", hubconf + readme))
    assert named == {repo}
