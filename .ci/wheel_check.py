"""CI: the built wheel, installed on its own, imports, builds both models and exports with the real card.

Run with the wheel's virtual environment, from outside the checkout (so that nothing is imported
from the source tree).
"""

import importlib.metadata
import json
import sys
import tempfile
from pathlib import Path

import timm
import torch
from packaging.requirements import Requirement

import mtdp_hub
from mtdp_hub.export import export_folder

for line in importlib.metadata.requires('mtdp-hub') or []:
    req = Requirement(line)
    if req.marker is None:  # the core requirements (extras carry a marker)
        importlib.metadata.version(req.name)  # raises PackageNotFoundError for a missing one
where = Path(mtdp_hub.__file__).resolve()
assert 'site-packages' in where.parts, f'mtdp_hub imported from {where}, not from the installed wheel'
for name, dim in (('mtdp_resnet50', 2048), ('mtdp_densenet121', 1024)):
    model = timm.create_model(name).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, dim), name
with tempfile.TemporaryDirectory() as tmp:
    out = export_folder(
        timm.create_model('mtdp_resnet50'), Path(tmp) / 'export', model_name='mtdp_resnet50.mtdp22'
    )
    card = (out / 'README.md').read_text()
    config = json.loads((out / 'config.json').read_text())
missing = [s for s in ('## Results (from the paper', '## Limitations', 'Camelyon16') if s not in card]
assert not missing and '<!-- include' not in card, (
    f'exported card lacks {missing} or has an unresolved include'
)
assert config['architecture'] == 'resnet50'
print(f'wheel OK: mtdp_hub {mtdp_hub.__version__} from {where.parent}; card {len(card)} characters')
sys.exit(0)
