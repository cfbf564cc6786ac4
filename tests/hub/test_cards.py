"""Model cards: one per released row, valid HF front matter, and the facts they state kept true.

Every number a card states about the model itself (parameters, GMACs) is measured here; every
number from the paper is checked against the other tables of the cards (train sizes against the
task pool, the FE summary against the results table).
"""

import re

import pytest
import timm
import torch
import yaml
from timm.models import get_pretrained_cfg
from torch.utils.flop_counter import FlopCounterMode

import mtdp_hub
from mtdp_hub.export import render_card
from tests.conftest import REPO_ROOT

CARDS = REPO_ROOT / 'model_cards'
CARD_FILES = {'mtdp_resnet50': 'mtdp_resnet50.md', 'mtdp_densenet121': 'mtdp_densenet121.md'}
# The paper's abbreviations in the results tables -> the task's name in task_pool.md.
RESULT_TASKS = {
    'BoMa': 'BoneMarrow',
    'MoLb': 'MouseLba',
    'HuLba': 'HumanLba',
    'Lung': 'Lung',
    'Nec': 'Necrosis',
    'PrPa': 'ProliferativePattern',
    'CeIn': 'CellInclusion',
    'Glom': 'Glomeruli',
    'Br1': 'Breast1',
    'Br2': 'Breast2',
}


def _card(arch):
    return (CARDS / CARD_FILES[arch]).read_text(encoding='utf-8')


def _front_matter(text):
    assert text.startswith('---\n')
    return yaml.safe_load(text.split('---\n')[1])


def _pool_rows():
    """The 22 rows of the task table: (number, name, classes, train, val, test, total)."""
    rows = []
    for line in (CARDS / 'task_pool.md').read_text(encoding='utf-8').splitlines():
        if re.match(r'^\| \d+ \| [A-Z]', line) and line.count('|') == 9:
            cells = [c.strip() for c in line.split('|')[1:-1]]
            train, val, test = (0 if s.strip() == 'none' else int(s) for s in cells[6].split('/'))
            rows.append(
                (int(cells[0]), cells[1].split(' (')[0], int(cells[5]), train, val, test, int(cells[7]))
            )
    return rows


def _public_source_ids():
    text = (CARDS / 'task_pool.md').read_text(encoding='utf-8')
    table = text.split('**Public sources and their terms.**')[1]
    return [
        i for line in table.splitlines() if line.startswith('| ') for i in re.findall(r'`([\w-]+)`', line)
    ]


def _result_rows(text):
    """``{abbreviation: [cells]}`` of the card's paper results table."""
    rows = re.findall(r'^\| (?:ACC|AUC) \| (\w+) \| (.*) \|$', text, flags=re.M)
    return {name: [c.strip() for c in cells.split('|')] for name, cells in rows}


@pytest.mark.parametrize('row', mtdp_hub.list_models(pretrained=True))
def test_card_per_row(row):
    card = render_card(row, row.split('.')[0], 0)
    meta = _front_matter(card)
    arch = row.split('.')[0]
    assert meta['library_name'] == 'timm' and meta['license'] == 'mit'
    assert meta['pipeline_tag'] == 'image-feature-extraction' and 'pathology' in meta['tags']
    assert meta['base_model'] == f'timm/{arch.removeprefix("mtdp_")}.tv_in1k'
    cfg = get_pretrained_cfg(row)
    assert f'# {row}' in card and cfg.hf_hub_id in card
    for section in (
        '## Where the weights are',
        '## Model details',
        '## How to use',
        '## Intended use',
        '## Out-of-scope uses',
        '## Training data',
        '## Preprocessing',
        '## Results (from the paper',
        '## Limitations',
        '## Licence',
        '## Citation',
    ):
        assert section in card, section
    assert 'BreakHis' in card and 'all splits' in card
    assert '| **Total** |' in card and '882800' in card and '<!-- include' not in card
    for field in ('**Parameters**', '**GMACs at 224 px**', '**Input scale.**', '**Stains.**'):
        assert field in card, field


@pytest.mark.parametrize('arch', CARD_FILES)
def test_card_claims_only_what_happened(arch):
    """No claim that the Hub copy exists or that the real files were converted by this package."""
    card = _card(arch)
    assert 'without any change to their values' not in card
    assert f'not published as of mtdp-hub {mtdp_hub.__version__}' in card
    assert 'The real file has not been converted by mtdp-hub yet' in card
    assert re.search(r'not re-measured by\s+mtdp-hub', card)  # the results are the authors' numbers
    assert f'version = {{{mtdp_hub.__version__}}}' in card  # the software citation


def test_densenet_card_says_import_is_needed():
    card = _card('mtdp_densenet121')
    assert 'import mtdp_hub' in card and 'without the final ReLU' in card


@pytest.mark.parametrize(
    'arch,start,top1',
    [('mtdp_resnet50', 'resnet50.tv_in1k', '76.13'), ('mtdp_densenet121', 'densenet121.tv_in1k', '74.43')],
)
def test_imagenet_start_is_the_architectures_own(arch, start, top1):
    card = _card(arch)
    assert f'`{start}`, {top1} % top-1' in card
    other = {'76.13', '74.43'} - {top1}
    assert not any(o in card for o in other)


@pytest.mark.parametrize('arch', CARD_FILES)
def test_datasets_are_the_public_pool_sources(arch):
    datasets = _front_matter(_card(arch))['datasets']
    assert datasets == _public_source_ids() and len(datasets) == 12
    # BreakHis was held out of the pool; the in-house and leave-out tasks are not public data sets.
    assert not any(name in d for d in datasets for name in ('breakhis', 'bone', 'glomeruli', 'lba', 'breast'))


def test_task_table_sums():
    rows = _pool_rows()
    assert len(rows) == 22 and [r[0] for r in rows] == list(range(1, 23))
    assert sum(r[2] for r in rows) == 81
    assert all(r[3] + r[4] + r[5] == r[6] for r in rows)
    assert sum(r[6] for r in rows) == 882800


@pytest.mark.parametrize('arch', CARD_FILES)
def test_results_train_size_is_train_plus_val(arch):
    pool = {r[1]: r for r in _pool_rows()}
    rows = _result_rows(_card(arch))
    assert sorted(rows) == sorted(RESULT_TASKS)
    for abbrev, cells in rows.items():
        task = pool[RESULT_TASKS[abbrev]]
        assert int(cells[0]) == task[3] + task[4], abbrev


@pytest.mark.parametrize('arch', CARD_FILES)
def test_fe_summary_matches_the_table(arch):
    """'multi-task beats ImageNet on N of 10 tasks' is what the FE columns of the table show."""
    card = _card(arch)
    rows = _result_rows(card).values()
    wins = sum(float(c[3].split(' ± ')[0]) > float(c[2]) for c in rows)  # FE multi-task vs FE ImageNet
    assert f'multi-task beats ImageNet on {wins} of 10 tasks' in card


@pytest.mark.parametrize('arch', CARD_FILES)
def test_params_and_gmacs_are_the_models(arch):
    card = _card(arch)
    params = int(re.search(r'\*\*Parameters\*\*: ([\d,]+)', card)[1].replace(',', ''))
    gmacs = float(re.search(r'\*\*GMACs at 224 px\*\*: ([\d.]+)', card)[1])
    # On the meta device: shapes only, no arithmetic, so counting takes well under a second.
    with torch.device('meta'):
        model = timm.create_model(arch).eval()  # num_classes=0: the backbone as loaded
    assert sum(p.numel() for p in model.parameters()) == params
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 224, 224, device='meta'))
    assert round(counter.get_total_flops() / 2 / 1e9, 2) == gmacs


def test_docs_cite_only_the_repository():
    """README, cards, docs and hubconf point to nothing outside the repository's own files."""
    files = [REPO_ROOT / 'README.md', REPO_ROOT / 'hubconf.py', *CARDS.glob('*.md')]
    files += sorted((REPO_ROOT / 'docs').glob('*.md'))
    for path in files:
        text = path.read_text(encoding='utf-8')
        for outside in (
            'reproduction-notes',
            'reproduction notes',
            '../shared',
            'shared/docs',
            'shared/data',
        ):
            assert outside not in text, f'{path.name} refers to {outside}'


def test_readme_names_the_model_tables_repos_as_unpublished():
    """The README's Hub repos are the model table's, and it says that they are not published yet."""
    readme = (REPO_ROOT / 'README.md').read_text(encoding='utf-8')
    top = readme.split('## Models')[0]
    for row in mtdp_hub.list_models(pretrained=True):
        assert get_pretrained_cfg(row).hf_hub_id in top
    assert 'has not published its copies yet' in top and 'unreachable since' in top
    assert 'loadable in one line' not in readme
