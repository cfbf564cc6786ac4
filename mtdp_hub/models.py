"""Multi-task pre-trained pathology backbones (Mormont et al. 2021) registered with timm.

``mtdp_resnet50`` is timm's ``resnet50``; ``mtdp_densenet121`` is timm's ``densenet121`` without
the ReLU after ``features.norm5``: the original ``mtdp`` DenseNet features stop at that batch norm,
and its task heads were trained on those pre-ReLU maps. Both default to ``num_classes=0``, so the
forward pass returns the globally average-pooled features of the original models.

Where the weights come from is this module's one table (``default_cfgs``) plus ``WEIGHT_SHA256``;
turning a table row into a verified local file is :mod:`mtdp_hub.weights`, and adapting the
original checkpoint layout is :mod:`mtdp_hub.state_dict`.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg
from timm.models._pretrained import PretrainedCfg
from timm.models.densenet import DenseNet
from timm.models.resnet import Bottleneck, ResNet
from torch import nn

from .catalog import HF_ORG, RELEASES
from .errors import CheckpointError
from .state_dict import checkpoint_filter_fn, read_state_dict
from .weights import ENV_WEIGHTS_DIR, WeightSource, fetch_weights

__all__ = ['MtdpDenseNet', 'default_cfgs', 'WEIGHT_SHA256', 'ORIGINAL_FILES', 'HF_ORG']

PAPER_URL = 'https://arxiv.org/abs/2005.02561'
ORIGIN_URL = 'https://github.com/waliens/multitask-dipath'
# File name under which each original checkpoint was published (and cached by ``mtdp``); from the
# catalog, where each release is described once. Both original URLs end in ``/download``, so the
# name never comes from the URL.
ORIGINAL_FILES = {name: release.original_file for name, release in RELEASES.items()}

# SHA-256 of every weight file a pretrained tag can be fetched as, keyed by
# ``<model>.<tag>/<file name>``. ``None`` means not recorded yet: the file is accepted and its
# hash is logged so that it can be filled in here. timm's PretrainedCfg is a dataclass that
# rejects unknown keys, hence a table of its own beside ``default_cfgs``.
WEIGHT_SHA256: dict[str, str | None] = {
    'mtdp_resnet50.mtdp22/resnet50-mh-best-191205-141200.pth': None,
    'mtdp_resnet50.mtdp22/model.safetensors': None,
    'mtdp_densenet121.mtdp22/densenet121-mh-best-191205-141200.pth': None,
    'mtdp_densenet121.mtdp22/model.safetensors': None,
}


def _cfg(url: str = '', **kwargs: Any) -> dict[str, Any]:
    return {
        'url': url,
        'num_classes': 0,
        'input_size': (3, 224, 224),
        'pool_size': (7, 7),
        # mtdp's own preprocessing: Resize(224) + CenterCrop(224), torchvision's bilinear default.
        'crop_pct': 1.0,
        'crop_mode': 'center',
        'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'license': 'mit',
        'paper_name': 'Multi-task pre-training of deep neural networks for digital pathology',
        'paper_ids': 'arXiv:2005.02561',
        'origin_url': ORIGIN_URL,
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        'mtdp_resnet50.mtdp22': _cfg(
            url=RELEASES['mtdp_resnet50.mtdp22'].url,
            hf_hub_id=RELEASES['mtdp_resnet50.mtdp22'].hf_hub_id,
            first_conv='conv1',
            classifier='fc',
            description='ResNet50 pre-trained on 22 pathology tasks (~880k patches), multi-task, '
            "from torchvision ImageNet weights. Released by the paper's authors (Dec 2019).",
        ),
        'mtdp_densenet121.mtdp22': _cfg(
            url=RELEASES['mtdp_densenet121.mtdp22'].url,
            hf_hub_id=RELEASES['mtdp_densenet121.mtdp22'].hf_hub_id,
            first_conv='features.conv0',
            classifier='classifier',
            description='DenseNet121 (features end at norm5, no final ReLU) pre-trained on 22 pathology '
            "tasks (~880k patches), multi-task. Released by the paper's authors (Dec 2019).",
        ),
    }
)


class MtdpDenseNet(DenseNet):
    """timm DenseNet whose features end at ``norm5``'s batch norm, with no ReLU, as in ``mtdp``."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.features.norm5.act = nn.Identity()


def _create_mtdp(
    model_cls: type[nn.Module], variant: str, pretrained: bool = False, **kwargs: Any
) -> nn.Module:
    """Build ``variant``; for registry weights, fetch and verify the file first and hand it to timm.

    Loading itself stays in timm: a verified local file goes in as ``pretrained_cfg_overlay=
    dict(file=...)``, and a ``file=`` the caller gives is used as it is (both are opened with
    ``weights_only=True`` first when they are pickles). ``hf-hub:`` and ``local-dir:`` models (our
    exports: safetensors) are timm's own sources and are left to it.
    """
    kwargs.setdefault('num_classes', 0)
    if pretrained:
        cfg = resolve_pretrained_cfg(
            variant,
            pretrained_cfg=kwargs.get('pretrained_cfg'),
            pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'),
        )
        if cfg.source not in ('hf-hub', 'local-dir') and not cfg.state_dict:
            path = cfg.file
            if not path:
                path = fetch_weights(
                    f'{variant}.{cfg.tag}', weight_sources(cfg), cache_dir=kwargs.get('cache_dir')
                )
                kwargs['pretrained_cfg_overlay'] = {
                    **(kwargs.get('pretrained_cfg_overlay') or {}),
                    'file': str(path),
                }
            if not str(path).endswith('.safetensors'):
                # A pickle is opened here with weights_only=True before timm sees it, whatever timm's
                # own default: a file that asks to run code, or a truncated one, stops with its name.
                read_state_dict(path)
    try:
        return build_model_with_cfg(
            model_cls,
            variant,
            pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            **kwargs,
        )
    except CheckpointError:
        raise
    except Exception as e:
        if not any(frame.name == 'load_pretrained' for frame in traceback.extract_tb(e.__traceback__)):
            raise
        # timm's readers do not say which file failed; a truncated download must be named.
        cfg = resolve_pretrained_cfg(
            variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay')
        )
        where = cfg.file or cfg.hf_hub_id or cfg.url
        raise CheckpointError(f'{where}: cannot load weights for {variant}: {type(e).__name__}: {e}') from e


@register_model
def mtdp_resnet50(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet50 multi-task pre-trained on 22 pathology tasks; pooled 2048-d features by default."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3))
    return _create_mtdp(ResNet, 'mtdp_resnet50', pretrained, **dict(model_args, **kwargs))


@register_model
def mtdp_densenet121(pretrained: bool = False, **kwargs: Any) -> MtdpDenseNet:
    """DenseNet121 multi-task pre-trained on 22 pathology tasks; pooled 1024-d pre-ReLU features."""
    model_args = dict(growth_rate=32, block_config=(6, 12, 24, 16))
    return _create_mtdp(
        MtdpDenseNet,
        'mtdp_densenet121',
        pretrained,
        feature_cfg=dict(flatten_sequential=True),
        **dict(model_args, **kwargs),
    )


def expected_sha256(model_tag: str, file_name: str) -> str | None:
    """The recorded SHA-256 of ``file_name`` as a source of ``model_tag`` (``arch.tag``)."""
    return WEIGHT_SHA256.get(f'{model_tag}/{file_name}')


def weight_sources(cfg: PretrainedCfg) -> list[WeightSource]:
    """Where the weights of one table row can come from, in the order they are tried."""
    model_tag = f'{cfg.architecture}.{cfg.tag}'
    original = ORIGINAL_FILES.get(model_tag)
    hub_file = cfg.hf_hub_filename or 'model.safetensors'
    sources = []
    local_dir = os.environ.get(ENV_WEIGHTS_DIR)
    if local_dir:
        if original:
            sources.append(
                WeightSource('local-dir', local_dir, original, expected_sha256(model_tag, original))
            )
        sha = expected_sha256(model_tag, hub_file)
        sources.append(WeightSource('local-dir', local_dir, f'{model_tag}.safetensors', sha))
        sources.append(WeightSource('local-dir', str(Path(local_dir) / model_tag), hub_file, sha))
    if cfg.hf_hub_id:
        sources.append(WeightSource('hf-hub', cfg.hf_hub_id, hub_file, expected_sha256(model_tag, hub_file)))
    if cfg.url:
        name = original or Path(cfg.url).name
        sources.append(WeightSource('url', cfg.url, name, expected_sha256(model_tag, name)))
    return sources
