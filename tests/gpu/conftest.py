"""The GPU suite: every test here is marked ``gpu`` and takes the ``gpu_device`` fixture.

Without CUDA the tests skip (never a failure); ``--gpu-device cpu`` runs their logic on the CPU,
where a test that only means something on CUDA (nvJPEG, NCCL, bf16 kernels) skips by itself.
"""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    for item in items:
        if 'tests/gpu/' in item.nodeid.replace('\\', '/'):
            item.add_marker(pytest.mark.gpu)


@pytest.fixture
def gpu_device(request) -> torch.device:
    """``cuda`` when present (or as ``--gpu-device`` says), else the test is skipped."""
    chosen = request.config.getoption('--gpu-device')
    if chosen is None:
        if not torch.cuda.is_available():
            pytest.skip('no CUDA device (run with --gpu-device cpu to exercise the logic on the CPU)')
        chosen = 'cuda'
    if chosen.startswith('cuda') and not torch.cuda.is_available():
        pytest.skip(f'--gpu-device {chosen} but no CUDA device is present')
    return torch.device(chosen)


def needs_cuda(device: torch.device) -> None:
    """Skip a test that only means something on a CUDA device."""
    if device.type != 'cuda':
        pytest.skip('meaningful on CUDA only')
