"""What a benchmark ran on, recorded with every result."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from typing import Any

import timm
import torch


def cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    info = {
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'cpu': cpu_model(),
        'cores_available': len(os.sched_getaffinity(0))
        if hasattr(os, 'sched_getaffinity')
        else os.cpu_count(),
        'torch_threads': torch.get_num_threads(),
        'python': sys.version.split()[0],
        'torch': torch.__version__,
        'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    info['timm'] = timm.__version__
    return info


def emit(result: dict[str, Any], path: str | None = None) -> None:
    """Print the result as JSON (and write it to ``path`` when given)."""
    result = {**result, 'machine': machine_info()}
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        with open(path, 'w') as f:
            f.write(text + '\n')
