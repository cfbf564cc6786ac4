"""timm's model contract on the registered models."""

import pytest
import timm
import torch

import mtdp_hub  # noqa: F401

NAMES = [('mtdp_resnet50', 2048), ('mtdp_densenet121', 1024)]


@pytest.fixture(scope='module')
def models():
    torch.manual_seed(0)
    return {name: timm.create_model(name).eval() for name, _ in NAMES}


@pytest.mark.parametrize('name,dim', NAMES)
def test_forward_features_and_head(models, name, dim):
    m = models[name]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = m.forward_features(x)
        assert maps.shape == (2, dim, 2, 2)
        pooled = m.forward_head(maps, pre_logits=True)
        assert torch.allclose(pooled, maps.mean((2, 3)), atol=1e-6)
        assert torch.allclose(m(x), pooled)
    assert m.num_features == dim and m.num_classes == 0


@pytest.mark.parametrize('name,dim', NAMES)
def test_reset_classifier(name, dim):
    m = timm.create_model(name).eval()
    m.reset_classifier(7)
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    m.reset_classifier(0)
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, dim)


@pytest.mark.parametrize('name,dim', NAMES)
def test_features_only(name, dim):
    m = timm.create_model(name, features_only=True, out_indices=(1, 2, 3, 4)).eval()
    with torch.no_grad():
        outs = m(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == m.feature_info.channels()
    assert outs[-1].shape[1] == dim


@pytest.mark.parametrize('name,dim', NAMES)
def test_forward_intermediates(models, name, dim):
    m = models[name]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, inter = m.forward_intermediates(x)
        assert final.shape[1] == dim and len(inter) == 5
        assert torch.allclose(final, m.forward_features(x), atol=1e-5)  # the same final maps, same input


def test_densenet_intermediates_end_without_relu(models):
    m = models['mtdp_densenet121']
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        _, inter = m.forward_intermediates(x)
        assert torch.allclose(inter[-1], m.forward_features(x), atol=1e-6)
        assert (inter[-1] < 0).any()


@pytest.mark.parametrize('name', [n for n, _ in NAMES])
def test_resolve_data_config(name):
    cfg = timm.data.resolve_data_config(model=timm.create_model(name))
    assert cfg == {
        'input_size': (3, 224, 224),
        'interpolation': 'bilinear',
        'mean': (0.485, 0.456, 0.406),
        'std': (0.229, 0.224, 0.225),
        'crop_pct': 1.0,
        'crop_mode': 'center',
    }


@pytest.mark.parametrize('name', [n for n, _ in NAMES])
def test_torchscript(models, name):
    m = models[name]
    scripted = torch.jit.script(m)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(scripted(x), m(x), atol=1e-5)
