"""Shared fixtures: original-layout mtdp checkpoints built here, a 127.0.0.1 HTTP server, an
offline Hugging Face cache, and the shared H&E patches. Nothing here reaches the network."""

from __future__ import annotations

import os

# Before timm / huggingface_hub are imported: they read these once, at import.
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_HUB_DISABLE_TELEMETRY', '1')

import http.server  # noqa: E402
import io  # noqa: E402
import shutil  # noqa: E402
import threading  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / 'shared' / 'data'
ASSETS = REPO_ROOT / 'tests' / 'assets'
KATHER_ASSETS = ASSETS / 'kather2016'  # 24 real H&E tiles, 8 classes x 3 (CC BY 4.0, see its README)

torch.set_num_threads(min(2, torch.get_num_threads()))


# --- the original mtdp modules, rebuilt from torchvision as mtdp/models/*.py and components.py did ---
class NoHeadResNet(torchvision.models.ResNet):
    """mtdp's ResNet backbone: torchvision ResNet whose forward stops at layer4 (no pool, no fc)."""

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class NoHeadDenseNet(torchvision.models.DenseNet):
    """mtdp's DenseNet backbone: ``self.features(x)``, i.e. up to norm5 with no final ReLU."""

    def forward(self, x):
        return self.features(x)


class Head(nn.Module):
    """mtdp's task head: global average pool + 1x1 convolution."""

    def __init__(self, n_features, n_classes):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Conv2d(n_features, n_classes, kernel_size=1, bias=True)

    def forward(self, x):
        return self.linear(self.pool(x)).flatten(1)


class MultiHead(nn.Module):
    def __init__(self, features, n_features, tasks):
        super().__init__()
        self.features = features
        self.heads = nn.ModuleDict({name: Head(n_features, n) for name, n in tasks.items()})

    def pooled(self, x):
        """What ``build_model(..., pool=True)`` gave, flattened: the features to reproduce."""
        return nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1)


def build_original(arch: str, seed: int = 0, tasks=None) -> MultiHead:
    """An original-layout MultiHead with random weights and non-trivial BN statistics."""
    torch.manual_seed(seed)
    tasks = tasks or {'ulg_bonemarrow': 8, 'glomeruli_no_aug': 2, 'ulg_lbtd_tissus': 10}
    if arch == 'resnet50':
        features, n = NoHeadResNet(torchvision.models.resnet.Bottleneck, [3, 4, 6, 3]), 2048
    elif arch == 'densenet121':
        features, n = NoHeadDenseNet(32, (6, 12, 24, 16), 64), 1024
    else:
        raise ValueError(arch)
    model = MultiHead(features, n, tasks)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.num_batches_tracked.fill_(1000)
        # Small last-BN scales in each residual branch keep the features at the scale of trained
        # ones (O(1)), so an absolute tolerance of 1e-5 means what it says.
        for name, m in model.named_modules():
            if name.endswith('bn3'):
                m.weight.uniform_(0.0, 0.2)
    return model.eval()


ORIGINAL_NAMES = {
    'resnet50': 'resnet50-mh-best-191205-141200.pth',
    'densenet121': 'densenet121-mh-best-191205-141200.pth',
}


@dataclass
class OriginalCheckpoint:
    arch: str
    path: Path
    model: MultiHead

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.pooled(x)


_CACHE: dict[str, tuple[MultiHead, bytes]] = {}


@pytest.fixture
def original_checkpoint(tmp_path_factory):
    """Factory: ``original_checkpoint('resnet50')`` -> an OriginalCheckpoint saved as mtdp did.

    Saved in the legacy (non-zip) ``torch.save`` format of torch 1.3, which the 2019 files use.
    Each test gets its own copy (tests tamper with them), deleted when the test ends: a ResNet50
    file is ~100 MB and the suite makes dozens.
    """
    made: list[Path] = []

    def make(arch: str) -> OriginalCheckpoint:
        if arch not in _CACHE:
            model = build_original(arch)
            buffer = io.BytesIO()
            torch.save(model.state_dict(), buffer, _use_new_zipfile_serialization=False)
            _CACHE[arch] = (model, buffer.getvalue())
        model, data = _CACHE[arch]
        folder = tmp_path_factory.mktemp(f'{arch}-ckpt')
        made.append(folder)
        path = folder / ORIGINAL_NAMES[arch]
        path.write_bytes(data)
        return OriginalCheckpoint(arch, path, model)

    yield make
    for folder in made:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def http_server():
    """A real HTTP server on 127.0.0.1 serving ``server.files[path] = bytes``; counts requests."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            server.requests.append(self.path)
            data = server.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header('Content-Length', str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    server.files, server.requests = {}, []
    server.url = f'http://127.0.0.1:{server.server_address[1]}'
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def populate_hf_cache(cache_dir: Path, repo_id: str, folder: Path, commit: str = 'a' * 40) -> Path:
    """Lay out ``folder`` as huggingface_hub's cache holds a downloaded repo (refs/main -> snapshot)."""
    repo = Path(cache_dir) / f'models--{repo_id.replace("/", "--")}'
    (repo / 'refs').mkdir(parents=True, exist_ok=True)
    (repo / 'refs' / 'main').write_text(commit)
    snapshot = repo / 'snapshots' / commit
    shutil.copytree(folder, snapshot, dirs_exist_ok=True)
    return snapshot


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f'shared data not found at {SHARED_DATA}')
    return SHARED_DATA


def pytest_addoption(parser):
    parser.addoption(
        '--gpu-device',
        default=None,
        help='device for the tests marked gpu (tests/gpu/): cuda when one is present; '
        "'cpu' runs the suite's logic on the CPU (tests that only make sense on CUDA still skip)",
    )
