"""Former name of :mod:`mtdp_hub.evaluation`, kept so that old imports keep working.

``mtdp_hub.transfer.<module>`` resolves to the module that now holds its code; new code should
import :mod:`mtdp_hub.evaluation`, :mod:`mtdp_hub.features` and :mod:`mtdp_hub.tasks`.
"""

from __future__ import annotations

import sys
import types

from .. import tasks as _tasks
from ..cli import evaluate as _cli
from ..evaluation import finetune, linear, metrics, protocol, report
from ..features import runtime as _runtime
from ..features import specs as _specs


def _merged(name: str, *modules: types.ModuleType, extra: dict | None = None) -> types.ModuleType:
    module = types.ModuleType(f'{__name__}.{name}', f'Re-exports for the former {__name__}.{name}.')
    for m in modules:
        module.__dict__.update({k: getattr(m, k) for k in getattr(m, '__all__', ())})
    module.__dict__.update(extra or {})
    return module


backbones = _merged('backbones', _specs, _runtime)
tasks = _merged('tasks', _tasks, extra={'load_task': protocol.load_task})
evaluate = protocol
cli = _cli

for _name, _module in {
    'backbones': backbones,
    'tasks': tasks,
    'evaluate': protocol,
    'finetune': finetune,
    'linear': linear,
    'metrics': metrics,
    'report': report,
    'cli': _cli,
}.items():
    sys.modules[f'{__name__}.{_name}'] = _module
