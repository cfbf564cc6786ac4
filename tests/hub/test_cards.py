"""Model cards: one per released row, valid HF front matter, numbers and settings kept in step."""

import re

import pytest
import yaml
from timm.models import get_pretrained_cfg

import mtdp_hub
from mtdp_hub.export import render_card
from tests.conftest import REPO_ROOT

CARDS = REPO_ROOT / 'model_cards'
NOTES = REPO_ROOT.parent / 'shared' / 'docs' / 'reproduction-notes.md'


def _front_matter(text):
    assert text.startswith('---\n')
    return yaml.safe_load(text.split('---\n')[1])


@pytest.mark.parametrize('row', mtdp_hub.list_models(pretrained=True))
def test_card_per_row(row):
    card = render_card(row, row.split('.')[0], 0)
    meta = _front_matter(card)
    assert meta['library_name'] == 'timm' and meta['license'] == 'mit'
    assert meta['pipeline_tag'] == 'image-feature-extraction' and 'pathology' in meta['tags']
    cfg = get_pretrained_cfg(row)
    assert f'# {row}' in card and cfg.hf_hub_id in card
    for section in (
        '## Intended use',
        '## Training data',
        '## Preprocessing',
        '## Results',
        '## Limitations',
        '## Citation',
    ):
        assert section in card
    assert 'BreakHis' in card and 'all splits' in card
    assert '| **Total** |' in card and '882800' in card and '<!-- include' not in card


def test_densenet_card_says_import_is_needed():
    card = (CARDS / 'mtdp_densenet121.md').read_text()
    assert 'import mtdp_hub' in card and 'without the final ReLU' in card


def test_task_table_sums():
    rows = [
        line.split('|')
        for line in (CARDS / 'task_pool.md').read_text().splitlines()
        if re.match(r'^\| \d+ \|', line)
    ]
    assert len(rows) == 22
    assert sum(int(r[6]) for r in rows) == 81
    assert sum(int(r[8]) for r in rows) == 882800


def _result_rows(text, arch):
    section = text.split(f'**{arch}**')[1] if arch in ('DenseNet121', 'ResNet50') else text
    return re.findall(r'^\| (ACC|AUC) \| (\w+) \|.*$', section, flags=re.M)


@pytest.mark.parametrize(
    'card,arch', [('mtdp_resnet50.md', 'ResNet50'), ('mtdp_densenet121.md', 'DenseNet121')]
)
def test_results_match_the_paper_tables(card, arch):
    if not NOTES.is_file():
        pytest.skip('reproduction notes not available')
    notes = NOTES.read_text().split(f'**{arch}**\n')[1].split('\n\n**')[0]
    expected = [line for line in notes.splitlines() if line.startswith(('| ACC', '| AUC'))]
    text = (CARDS / card).read_text()
    found = [line for line in text.splitlines() if line.startswith(('| ACC', '| AUC'))]
    assert found == expected and len(found) == 10
