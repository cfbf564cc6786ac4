"""Weight loading: ``create_model(pretrained=True)`` from the cache (safetensors) vs the original pickled ``.pth``.

Builds a random checkpoint in the original mtdp layout (legacy torch.save format, 22 heads), converts
it once with ``mtdp convert``, then times, alternating in one process:
  - ``timm.create_model('local-dir:<converted folder>', pretrained=True)``  (safetensors)
  - ``timm.create_model('mtdp_resnet50', pretrained=True, pretrained_cfg_overlay=dict(file=<.pth>))``
    (pickle read with weights_only=True + key remapping)
  - ``torch.load(<.pth>, weights_only=True)`` alone, and ``safetensors.torch.load_file`` alone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file

import mtdp_hub  # noqa: F401
from mtdp_hub.convert import convert_mtdp_checkpoint

from .machine import emit


def original_checkpoint(arch: str, path: Path, n_tasks: int = 22) -> None:
    backbone = timm.create_model(arch.removeprefix('mtdp_'), num_classes=1000)
    sd = {f'features.{k}': v for k, v in backbone.state_dict().items()}
    if arch == 'mtdp_densenet121':
        sd = {f'features.{k}': v for k, v in sd.items()}
        sd = {k.replace('features.features.classifier', 'features.classifier'): v for k, v in sd.items()}
    for t in range(n_tasks):
        sd[f'heads.task{t}.linear.weight'] = torch.randn(4, backbone.num_features, 1, 1)
        sd[f'heads.task{t}.linear.bias'] = torch.randn(4)
    torch.save(sd, path, _use_new_zipfile_serialization=False)


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument('--arch', default='mtdp_resnet50', choices=['mtdp_resnet50', 'mtdp_densenet121'])
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--json', default=None, help='also write the result here')
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        pth = Path(tmp) / 'original.pth'
        original_checkpoint(args.arch, pth)
        folder = convert_mtdp_checkpoint(pth, Path(tmp) / 'export')
        runs = {
            'create_model_safetensors_s': lambda: timm.create_model(f'local-dir:{folder}', pretrained=True),
            'create_model_original_pth_s': lambda: timm.create_model(
                args.arch, pretrained=True, pretrained_cfg_overlay=dict(file=str(pth))
            ),
            'read_safetensors_s': lambda: load_file(str(folder / 'model.safetensors')),
            'read_pth_weights_only_s': lambda: torch.load(pth, map_location='cpu', weights_only=True),
        }
        for fn in runs.values():  # warm-up: imports, page cache
            fn()
        samples = {name: [] for name in runs}
        for _ in range(args.repeats):  # interleaved, so drift hits every variant alike
            for name, fn in runs.items():
                samples[name] += timed(fn, 1)
        sizes = {
            'pth_mb': pth.stat().st_size / 2**20,
            'safetensors_mb': (folder / 'model.safetensors').stat().st_size / 2**20,
        }
    result = {name: statistics.median(v) for name, v in samples.items()}
    result['speedup_create_model'] = (
        result['create_model_original_pth_s'] / result['create_model_safetensors_s']
    )
    result['speedup_read'] = result['read_pth_weights_only_s'] / result['read_safetensors_s']
    emit(
        {'benchmark': 'weight_loading', 'arch': args.arch, 'repeats': args.repeats, **sizes, **result},
        args.json,
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
