"""Read checkpoints safely and adapt the original ``mtdp`` layout to timm's (pure: no I/O but reading).

An original checkpoint is the whole ``MultiHead.state_dict()``: the backbone under ``features.``
(DenseNet121: ``features.features.``), torchvision's unused ImageNet ``fc``/``classifier``, and one
``heads.<task>.linear`` 1x1 convolution per task. After stripping ``features.`` once the backbone
keys are exactly timm's. The heads are kept apart as ``nn.Linear`` weights so nothing is lost.

:func:`checkpoint_filter_fn` is timm's ``pretrained_filter_fn``: besides the key mapping it checks
that every backbone tensor is present and shaped right, because timm loads non-strictly whenever
``num_classes`` differs from the pretrained config and would otherwise leave random layers behind.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from .errors import CheckpointError

__all__ = [
    'CheckpointError',
    'read_state_dict',
    'is_mtdp_layout',
    'split_mtdp_checkpoint',
    'checkpoint_filter_fn',
    'guess_architecture',
    'value_problems',
    'plain_torch_error',
]

_HEAD_KEY = re.compile(r'^heads\.(?P<task>.+)\.linear\.(?P<param>weight|bias)$')
# torchvision < 0.4 DenseNet names (``norm.1``) -> current names (``norm1``), as timm does.
_OLD_DENSENET_KEY = re.compile(
    r'^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$'
)
_IMAGENET_CLASSIFIERS = ('fc.', 'classifier.')


_FLOAT_SUFFIXES = ('.weight', '.bias', '.running_mean', '.running_var')


def value_problems(
    state_dict: Mapping[str, torch.Tensor], model_sd: Mapping[str, torch.Tensor] | None = None
) -> list[str]:
    """Keys whose values cannot be trained weights: an integer or bool tensor where a floating-point
    one belongs (per ``model_sd`` if given, else by the key's name), NaN / Inf, a negative BN
    running variance. Each entry is ``'key (why)'``."""
    problems = []
    for key, value in state_dict.items():
        ref = model_sd.get(key) if model_sd is not None else None
        wants_float = ref.is_floating_point() if ref is not None else key.endswith(_FLOAT_SUFFIXES)
        if ref is not None and not wants_float and (value.is_floating_point() or value.dtype == torch.bool):
            problems.append(f'{key} ({value.dtype}, model {ref.dtype})')
        elif wants_float and not value.is_floating_point():
            problems.append(f'{key} ({value.dtype}, not floating point)')
        elif value.is_floating_point() and not bool(torch.isfinite(value).all()):
            problems.append(f'{key} (NaN or Inf values)')
        elif key.endswith('running_var') and bool((value < 0).any()):
            problems.append(f'{key} (negative running variance)')
    return problems


_TORCH_REASON = re.compile(r'WeightsUnpickler error: (?P<why>[^\n]*?)(?: Please use |\n|$)')
_ANSI = re.compile(r'\x1b\[[0-9;]*[A-Za-z]')


def plain_torch_error(message: str) -> str:
    """``message`` without terminal colour codes, and with torch's weights-only refusal (several paragraphs,
    ending in advice to load with ``weights_only=False``) cut to its one reason."""
    message = _ANSI.sub('', message)
    head, marker, rest = message.partition('Weights only load failed')
    if not marker:
        return message
    found = _TORCH_REASON.search(rest)
    return head.rstrip() + ' ' + (found['why'].strip() if found else 'it holds objects other than tensors')


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a flat tensor dict from ``.safetensors`` or a ``.pth`` (never executing pickled code).

    Wrapped checkpoints (``{'state_dict': ...}`` or ``{'model': ...}``) are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'{path}: no such file')
    try:
        if path.suffix == '.safetensors':
            obj = load_file(str(path), device='cpu')
        else:
            obj = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f'{path}: refused to load: the file is not a plain tensor checkpoint (it asks to run or '
            f'import code, which is never done here): {plain_torch_error(str(e))}'
        ) from e
    except Exception as e:  # truncated or corrupt archives raise many types
        raise CheckpointError(
            f'{path}: cannot read checkpoint (truncated or corrupt?): {type(e).__name__}: '
            f'{plain_torch_error(str(e))}'
        ) from e
    for key in ('state_dict', 'model'):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f'{path}: expected a dict of tensors, got {type(obj).__name__}')
    bad = value_problems(obj)
    if bad:
        raise CheckpointError(f'{path}: invalid weight values in {_listed(bad)}')
    return {k.removeprefix('module.'): v for k, v in obj.items()}


def is_mtdp_layout(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for an original ``mtdp`` checkpoint (``features.``-prefixed backbone, ``heads.``)."""
    return (
        any(k.startswith('heads.') for k in state_dict)
        or 'features.conv1.weight' in state_dict
        or 'features.features.conv0.weight' in state_dict
    )


def split_mtdp_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, nn.Linear]]:
    """Split an original checkpoint into timm backbone keys and per-task ``nn.Linear`` heads.

    The ImageNet ``fc``/``classifier`` that torchvision left in the backbone never received a
    gradient during multi-task training and is dropped.
    """
    backbone: dict[str, torch.Tensor] = {}
    head_params: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if key.startswith('heads.'):
            m = _HEAD_KEY.match(key)
            if m is None:
                raise CheckpointError(
                    f'unexpected head key {key!r} (expected heads.<task>.linear.weight|bias)'
                )
            head_params.setdefault(m['task'], {})[m['param']] = value
            continue
        key = key.removeprefix('features.')
        key = _OLD_DENSENET_KEY.sub(r'\1\2', key)
        if key.startswith(_IMAGENET_CLASSIFIERS):
            continue
        backbone[key] = value
    heads = {}
    for task, params in sorted(head_params.items()):
        if set(params) != {'weight', 'bias'}:
            raise CheckpointError(f'head {task!r} lacks {({"weight", "bias"} - set(params)).pop()}')
        weight = params['weight'].reshape(params['weight'].shape[0], -1)  # [C, F, 1, 1] 1x1 conv -> [C, F]
        head = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            head.weight.copy_(weight)
            head.bias.copy_(params['bias'])
        heads[task] = head
    return backbone, heads


def guess_architecture(keys: Iterable[str]) -> str | None:
    """Name the backbone family a set of (timm-layout) keys belongs to, for error messages."""
    keys = set(keys)
    if any(k.startswith('features.denseblock') for k in keys):
        blocks = sum(1 for k in keys if k.startswith('features.denseblock3.') and k.endswith('.conv1.weight'))
        return {24: 'densenet121', 32: 'densenet169', 48: 'densenet201', 36: 'densenet161'}.get(
            blocks, 'a DenseNet'
        )
    if 'conv1.weight' in keys and any(k.startswith('layer1.') for k in keys):
        blocks = len({k.split('.')[1] for k in keys if k.startswith('layer3.')})
        bottleneck = any(k.endswith('conv3.weight') for k in keys)
        name = {
            (6, True): 'resnet50',
            (23, True): 'resnet101',
            (36, True): 'resnet152',
            (6, False): 'resnet34',
        }
        return name.get((blocks, bottleneck), 'a ResNet')
    return None


def _weights_origin(model: nn.Module) -> str:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return str(cfg.get('file') or cfg.get('hf_hub_id') or cfg.get('url') or 'the pretrained weights')


def _listed(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f', ... ({len(keys) - limit} more)' if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


def _only_in_chans_differ(a: torch.Tensor, b: torch.Tensor) -> bool:
    # timm adapts the stem to another ``in_chans`` after the filter has run.
    return a.ndim == b.ndim == 4 and a.shape[0] == b.shape[0] and a.shape[2:] == b.shape[2:]


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn``: original or timm layout in, complete timm backbone keys out.

    Raises :class:`CheckpointError` (never ``TypeError``, which timm would swallow and retry)
    naming the file and the keys when the weights do not fit the model, or hold values no trained
    model has (see :func:`value_problems`).
    """
    if is_mtdp_layout(state_dict):
        state_dict, _ = split_mtdp_checkpoint(state_dict)
    model_sd = model.state_dict()
    classifier = (getattr(model, 'pretrained_cfg', None) or {}).get('classifier') or ()
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    is_head = tuple(f'{c}.' for c in classifier)
    # A classifier the model does not have (num_classes=0) or of another size is not ours to load.
    state_dict = {
        k: v
        for k, v in state_dict.items()
        if not (k.startswith(is_head) and (k not in model_sd or model_sd[k].shape != v.shape))
    }
    origin = _weights_origin(model)
    arch = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture', type(model).__name__)
    missing = {k for k in model_sd if k not in state_dict and not k.startswith(is_head)}
    unexpected = {k for k in state_dict if k not in model_sd}
    if missing or unexpected:
        found = guess_architecture(state_dict)
        hint = f' The file holds {found} weights.' if found else ''
        raise CheckpointError(
            f'{origin} does not fit {arch}.{hint} '
            f'Missing {len(missing)} keys: {_listed(missing) or "none"}. '
            f'Unexpected {len(unexpected)} keys: {_listed(unexpected) or "none"}.'
        )
    first_conv = (getattr(model, 'pretrained_cfg', None) or {}).get('first_conv')
    in_conv = f'{first_conv}.weight' if isinstance(first_conv, str) else None
    wrong = [
        f'{k} {tuple(v.shape)} (model {tuple(model_sd[k].shape)})'
        for k, v in state_dict.items()
        if v.shape != model_sd[k].shape and not (k == in_conv and _only_in_chans_differ(v, model_sd[k]))
    ]
    if wrong:
        raise CheckpointError(f'{origin} does not fit {arch}: wrong shapes for {_listed(wrong)}')
    bad = value_problems(state_dict, model_sd)
    if bad:
        raise CheckpointError(f'{origin}: invalid weight values for {arch} in {_listed(bad)}')
    return state_dict
