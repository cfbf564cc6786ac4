"""Backbones: any timm name with num_classes=0, the paper's archs, ImageNet init that fails (or falls
back) clearly when the weights are unreachable, and initialisation from a local file."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from mtdp_hub.errors import CheckpointError
from training.model import MultiTaskNet, WeightsUnavailableError, create_backbone, imagenet_weights_name


@pytest.mark.parametrize(
    'arch, features',
    [('resnet50', 2048), ('densenet121', 1024), ('mtdp_resnet50', 2048), ('mtdp_densenet121', 1024)],
)
def test_paper_backbones_pool_to_features_with_one_head_per_task(arch, features):
    net = MultiTaskNet(create_backbone(arch, 'random'), {'a': 2, 'b': 5}).eval()
    assert net.backbone.num_features == features
    assert [h.in_features for h in net.heads.values()] == [features, features]
    assert [h.out_features for h in net.heads.values()] == [2, 5]
    with torch.no_grad():
        assert net(torch.randn(2, 3, 32, 32), torch.tensor([0, 1])).shape == (2, 5)


def test_imagenet_weights_are_torchvisions():
    assert imagenet_weights_name('resnet50') == 'resnet50.tv_in1k'
    assert imagenet_weights_name('mtdp_densenet121') == 'densenet121.tv_in1k'
    assert imagenet_weights_name('mtdp_resnet50') == 'resnet50.tv_in1k'


def test_unreachable_imagenet_weights_error_or_fall_back_clearly(monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise RuntimeError('offline: no cached file')  # what the hub client raises, in short
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, 'create_model', offline)
    with pytest.raises(
        WeightsUnavailableError, match=r"'test_resnet.r160_in1k'.*model.if_weights_missing=random"
    ):
        create_backbone('test_resnet', 'imagenet', 'test_resnet.r160_in1k')
    messages = []
    net = create_backbone(
        'test_resnet', 'imagenet', 'test_resnet.r160_in1k', if_missing='random', log=messages.append
    )
    assert net.num_features > 0 and 'RANDOM weights' in messages[0]


def test_init_from_a_local_file_loads_every_weight(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model('test_resnet', num_classes=0)
    save_file(
        {k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / 'model.safetensors')
    )
    for path in (tmp_path / 'model.safetensors', tmp_path):  # a file or an exported folder
        net = create_backbone('test_resnet', str(path), log=lambda m: None)
        for k, v in source.state_dict().items():
            assert torch.equal(net.state_dict()[k], v), k
    bad = {k: v for k, v in source.state_dict().items() if 'conv1' not in k}
    save_file({k: v.contiguous() for k, v in bad.items()}, str(tmp_path / 'partial.safetensors'))
    with pytest.raises(CheckpointError, match='missing keys'):
        create_backbone('test_resnet', str(tmp_path / 'partial.safetensors'))


def test_init_from_an_original_mtdp_checkpoint(original_checkpoint):
    """Continue pre-training from the authors' released file: backbone keys taken, heads and fc dropped."""
    ckpt = original_checkpoint('resnet50')
    net = create_backbone('mtdp_resnet50', str(ckpt.path), log=lambda m: None).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (net(x) - ckpt.reference(x)).abs().max() <= 1e-5


def test_channels_last_model_exports(tmp_path):
    from mtdp_hub.export import export_folder

    net = timm.create_model('test_resnet', num_classes=0).to(memory_format=torch.channels_last).eval()
    folder = export_folder(net, tmp_path / 'export')
    again = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(again(x), net(x), atol=1e-6)
    weight = next(p for p in net.parameters() if p.dim() == 4 and p.shape[2] > 1)
    assert weight.is_contiguous(memory_format=torch.channels_last), "the caller's model is untouched"
