"""The registered models give exactly the original mtdp pooled features (<= 1e-5)."""

import pytest
import timm
import torch

import mtdp_hub  # noqa: F401

ARCHES = [('resnet50', 'mtdp_resnet50', 2048), ('densenet121', 'mtdp_densenet121', 1024)]


@pytest.mark.parametrize('arch,name,dim', ARCHES)
def test_features_equal_original(original_checkpoint, arch, name, dim):
    ckpt = original_checkpoint(arch)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(ckpt.path))).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
    ref = ckpt.reference(x)
    assert out.shape == (2, dim)
    assert (out - ref).abs().max().item() <= 1e-5


def test_densenet_has_no_final_relu(original_checkpoint):
    ckpt = original_checkpoint('densenet121')
    model = timm.create_model(
        'mtdp_densenet121', pretrained=True, pretrained_cfg_overlay=dict(file=str(ckpt.path))
    ).eval()
    with torch.no_grad():
        maps = model.forward_features(torch.randn(1, 3, 64, 64))
    assert (maps < 0).any(), 'norm5 output must not pass through a ReLU'
    plain = timm.create_model('densenet121', num_classes=0).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert (plain.forward_features(torch.randn(1, 3, 64, 64)) >= 0).all()


@pytest.mark.parametrize('arch,name,dim', ARCHES)
def test_fresh_head_keeps_pretrained_backbone(original_checkpoint, arch, name, dim):
    ckpt = original_checkpoint(arch)
    model = timm.create_model(
        name, pretrained=True, num_classes=5, pretrained_cfg_overlay=dict(file=str(ckpt.path))
    ).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (2, 5)
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
    assert (feats - ckpt.reference(x)).abs().max().item() <= 1e-5
