"""``mtdp convert``: an original ``mtdp`` checkpoint -> a Hugging Face model folder with its heads."""

from __future__ import annotations

import os
import pickletools
import zipfile
from pathlib import Path

import timm

from ._io import refuse_output_holding, sha256_file
from .errors import CheckpointError
from .export import export_folder
from .state_dict import (
    checkpoint_filter_fn,
    guess_architecture,
    is_mtdp_layout,
    plain_torch_error,
    read_state_dict,
    split_mtdp_checkpoint,
)

__all__ = ['convert_mtdp_checkpoint', 'ORIGINAL_ARCHITECTURES', 'is_training_checkpoint', 'plain_torch_error']

ORIGINAL_ARCHITECTURES = {'resnet50': 'mtdp_resnet50', 'densenet121': 'mtdp_densenet121'}


# Top-level keys of a ``python -m training`` checkpoint (training/state.py: ``run_state``).
_TRAINING_KEYS = frozenset(
    {'iteration', 'model', 'optimizer', 'scheduler', 'sampler', 'tasks', 'pool_markdown'}
)


def _pickle_strings(path: Path, limit: int = 1 << 22) -> set[str]:
    """The strings in the pickle of a torch zip archive, read with :mod:`pickletools` (nothing runs)."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith('/data.pkl') or n == 'data.pkl'), None)
            if name is None or archive.getinfo(name).file_size > limit:
                return set()
            data = archive.read(name)
        return {arg for _, arg, _ in pickletools.genops(data) if isinstance(arg, str)}
    except (OSError, zipfile.BadZipFile, ValueError, KeyError):
        return set()


def is_training_checkpoint(path: str | os.PathLike) -> bool:
    """True for a checkpoint written by ``python -m training`` (training/checkpoint.py), told by its
    top-level keys without loading it."""
    return _TRAINING_KEYS <= _pickle_strings(Path(path))


def _training_checkpoint_error(src: Path) -> CheckpointError:
    run = src.resolve().parent.parent if src.resolve().parent.name == 'checkpoints' else Path('RUN_FOLDER')
    return CheckpointError(
        f'{src} is a checkpoint of a python -m training run, not an original mtdp checkpoint: export it with '
        f'python -m training export --run {run} --checkpoint {src} --out FOLDER'
    )


def convert_mtdp_checkpoint(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    model_name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Turn an original ``mtdp`` checkpoint into a Hugging Face model folder with its task heads.

    Args:
        src: the original ``.pth`` (read with ``weights_only=True``).
        out_dir: the folder to write (see :func:`mtdp_hub.export.export_folder`).
        model_name: the registry row it corresponds to, e.g. ``mtdp_resnet50.mtdp22``; guessed
            from the keys when omitted.
        overwrite: replace an existing ``out_dir``; never one that holds ``src`` (refused always).
    """
    refuse_output_holding(out_dir, src, 'the source checkpoint')
    if is_training_checkpoint(src):
        raise _training_checkpoint_error(Path(src))
    state_dict = read_state_dict(src)
    if not is_mtdp_layout(state_dict):
        raise CheckpointError(f'{src}: not an original mtdp checkpoint (no features./heads. keys)')
    backbone, heads = split_mtdp_checkpoint(state_dict)
    if model_name is None:
        found = guess_architecture(backbone)
        if found not in ORIGINAL_ARCHITECTURES:
            raise CheckpointError(
                f'{src}: cannot tell the architecture ({found or "unknown keys"}); pass model_name'
            )
        model_name = f'{ORIGINAL_ARCHITECTURES[found]}.mtdp22'
    model = timm.create_model(model_name, pretrained=False)
    model.pretrained_cfg = {**model.pretrained_cfg, 'file': str(src)}  # names the file in errors
    model.load_state_dict(checkpoint_filter_fn(backbone, model), strict=True)
    model.pretrained_cfg.pop('file')
    rows = '\n'.join(f'| `{task}` | {head.out_features} |' for task, head in heads.items())
    card_extra = (
        f'## Conversion\n\nConverted by mtdp-hub from the original checkpoint `{Path(src).name}` '
        f'(SHA-256 `{sha256_file(src)}`). Its {len(heads)} task heads are in `heads.safetensors` '
        f'(load them with `mtdp_hub.export.load_heads`).\n\n| head | classes |\n|---|---|\n{rows}\n'
    )
    return export_folder(
        model.eval(), out_dir, heads=heads, card_extra=card_extra, model_name=model_name, overwrite=overwrite
    )
