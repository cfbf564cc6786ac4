"""Extraction on the device vs the CPU: the same features from the uint8, pinned, in-flight path.

The 24 real H&E tiles of ``tests/assets/kather2016`` go through ``extract_features`` on the device
(DataLoader workers decoding to uint8, pinned batches, normalisation on the device, several
batches in flight) and are compared with the CPU reference: timm's float eval transform and the
same weights in float32. fp32 (TF32 off) must agree tightly; bf16 and fp16 autocast row by row
to cosine > 0.999. ``--gpu-device cpu`` runs the fp32 and slide cases on the CPU with a smaller
model and input (the half-precision cases and the sync check skip: they mean something on CUDA).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtdp_hub.features import FeatureExtractor, extract_features, read_features
from mtdp_hub.features.pipeline import stream_features
from mtdp_hub.images import open_rgb
from tests.conftest import KATHER_ASSETS
from tests.gpu.conftest import needs_cuda


def _setup(device: torch.device) -> tuple[str, int]:
    """ResNet50 at 224 px on CUDA; ResNet18 at 64 px on the CPU (the same code paths, cheaper)."""
    return ('random:resnet50', 224) if device.type == 'cuda' else ('random:resnet18', 64)


def _cpu_reference(spec: str, size: int, paths: list[str]) -> np.ndarray:
    ext = FeatureExtractor(spec, img_size=size, device='cpu', precision='fp32')
    x = torch.stack([ext.transform(open_rgb(KATHER_ASSETS / p)) for p in paths])
    with torch.inference_mode():
        return ext.model(x).numpy()


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture
def no_tf32():
    """float32 on CUDA as on the CPU: TF32 convolutions and matmuls off for the test."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize('precision', ['fp32', 'bf16', 'fp16'])
def test_device_features_match_the_cpu_reference(gpu_device, precision, no_tf32, tmp_path):
    if precision != 'fp32':
        needs_cuda(gpu_device)
    spec, size = _setup(gpu_device)
    out = tmp_path / 'f.safetensors'
    stats = extract_features(
        spec,
        KATHER_ASSETS,
        out,
        img_size=size,
        device=str(gpu_device),
        precision=precision,
        num_workers=2,
        batch_size=4,  # 6 batches: more than are kept in flight
        progress=False,
    )
    ff = read_features(out)
    recorded = {'fp32': 'float32', 'bf16': 'bfloat16', 'fp16': 'float16'}[precision]
    assert stats['n_new'] == 24 and ff.provenance['precision'] == recorded
    ref = _cpu_reference(spec, size, ff.paths)
    assert np.isfinite(ff.features).all()
    if precision == 'fp32':
        np.testing.assert_allclose(ff.features, ref, rtol=1e-3, atol=1e-4)
    else:
        assert _cosine(ff.features, ref).min() > 0.999


def test_batches_are_queued_without_a_host_sync(gpu_device):
    """Every batch is copied in, normalised, run and copied out without the host waiting for the
    device (``torch.cuda.set_sync_debug_mode('error')`` while they are queued); the features read
    back afterwards equal the extractor's own, batch by batch."""
    needs_cuda(gpu_device)
    ext = FeatureExtractor('random:resnet18', img_size=64, device=str(gpu_device), precision='bf16')
    g = torch.Generator().manual_seed(0)
    xs = [
        torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8, generator=g).pin_memory() for _ in range(5)
    ]
    ext.device_features(xs[0].to(gpu_device))  # cuDNN / allocator warm-up outside the checked part

    def queued():
        torch.cuda.set_sync_debug_mode('error')
        try:
            yield from enumerate(xs)
        finally:
            torch.cuda.set_sync_debug_mode(0)

    got = list(stream_features(ext, queued(), depth=len(xs)))  # all queued before the first read back
    assert [t for t, _ in got] == list(range(5))
    for (_, f), x in zip(got, xs):
        np.testing.assert_allclose(f, ext(x).numpy(), rtol=1e-5, atol=1e-5)


def test_slide_tiles_on_the_device_match_the_cpu(gpu_device, no_tf32, tmp_path):
    pytest.importorskip('openslide')
    pytest.importorskip('tifffile')
    from mtdp_hub.features.slides import (
        SlideSettings,
        TileSpec,
        extract_slide,
        list_slides,
        read_slide_features,
    )
    from tests.features.slides.conftest import mosaic, write_slide

    image, _ = mosaic()
    path = write_slide(tmp_path / 'alpha.svs', image, 1.0, 'svs')
    spec, size = _setup(gpu_device)
    settings = SlideSettings(tiles=TileSpec(mpp=2.0, tile=64), qc=False)
    feats = {}
    for name, device in (('device', str(gpu_device)), ('cpu', 'cpu')):
        ext = FeatureExtractor(spec, img_size=size, device=device, precision='fp32')
        extract_slide(ext, list_slides(path)[0], tmp_path / name, settings, num_workers=2, batch_size=8)
        feats[name] = read_slide_features(tmp_path / name / 'alpha.h5')
    np.testing.assert_array_equal(feats['device'].coords, feats['cpu'].coords)
    assert len(feats['cpu'].coords) > 8
    np.testing.assert_allclose(feats['device'].features, feats['cpu'].features, rtol=1e-3, atol=1e-4)
