"""The pretrained table: every row complete, every weight file hashed, defaults as documented."""

import dataclasses

import pytest
import timm
from timm.models import get_pretrained_cfg

import mtdp_hub
from mtdp_hub import models

ROWS = ['mtdp_densenet121.mtdp22', 'mtdp_resnet50.mtdp22']
MANDATORY = (
    'url',
    'hf_hub_id',
    'architecture',
    'tag',
    'input_size',
    'interpolation',
    'crop_pct',
    'crop_mode',
    'mean',
    'std',
    'first_conv',
    'classifier',
    'license',
    'paper_ids',
    'paper_name',
    'origin_url',
    'description',
)


def test_import_registers_models():
    assert mtdp_hub.list_models() == ['mtdp_densenet121', 'mtdp_resnet50']
    assert mtdp_hub.list_models(pretrained=True) == ROWS
    assert timm.is_model('mtdp_resnet50') and timm.is_model_pretrained('mtdp_densenet121')


@pytest.mark.parametrize('row', ROWS)
def test_row_schema(row):
    cfg = get_pretrained_cfg(row)
    values = dataclasses.asdict(cfg)
    missing = [k for k in MANDATORY if values.get(k) in (None, '', ())]
    assert not missing, f'{row} lacks {missing}'
    assert cfg.num_classes == 0
    assert cfg.mean == (0.485, 0.456, 0.406) and cfg.std == (0.229, 0.224, 0.225)
    assert cfg.input_size == (3, 224, 224) and cfg.crop_pct == 1.0 and cfg.interpolation == 'bilinear'
    assert cfg.license == 'mit' and cfg.paper_ids == 'arXiv:2005.02561'
    assert cfg.hf_hub_id == f'{models.HF_ORG}/{row}'
    assert cfg.url.endswith('/download') and cfg.url.startswith('https://dox.uliege.be/')


@pytest.mark.parametrize('row', ROWS)
def test_every_weight_source_has_a_hash_entry(row):
    cfg = get_pretrained_cfg(row)
    names = {s.file_name for s in models.weight_sources(cfg)}
    assert names == {models.ORIGINAL_FILES[row], 'model.safetensors'}
    for name in names:
        assert f'{row}/{name}' in models.WEIGHT_SHA256
    for digest in models.WEIGHT_SHA256.values():
        assert digest is None or (len(digest) == 64 and int(digest, 16) >= 0)


def test_original_files_distinct_although_urls_share_a_basename():
    urls = [get_pretrained_cfg(row).url for row in ROWS]
    assert {u.rsplit('/', 1)[1] for u in urls} == {'download'}
    assert len(set(models.ORIGINAL_FILES.values())) == len(ROWS)


@pytest.mark.parametrize('name,dim', [('mtdp_resnet50', 2048), ('mtdp_densenet121', 1024)])
def test_defaults_and_fresh_head(name, dim):
    assert timm.create_model(name).num_classes == 0
    assert timm.create_model(name).num_features == dim
    head = timm.create_model(name, num_classes=5).get_classifier()
    assert (head.in_features, head.out_features) == (dim, 5)
