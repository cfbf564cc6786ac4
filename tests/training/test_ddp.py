"""torchrun on CPU (gloo): 2 ranks end with identical weights; an elastic restart after a rank is
killed resumes from the last checkpoint and ends where an uninterrupted 2-rank run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import yaml

import training.checkpoint as ckpt
from training.config import from_dict, to_dict

from .conftest import REPO_ROOT, tiny_config_dict

pytestmark = pytest.mark.slow


def torchrun(config_file, extra_env=None, max_restarts=0, timeout=120):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO_ROOT), 'HF_HUB_OFFLINE': '1'}
    env.update(extra_env or {})
    cmd = [
        sys.executable,
        '-m',
        'torch.distributed.run',
        '--nproc_per_node=2',
        '--standalone',
        f'--max-restarts={max_restarts}',
        '-m',
        'training',
        '--config',
        str(config_file),
    ]
    # Own process group: on a timeout the ranks die with torchrun instead of outliving the test.
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f'torchrun did not finish in {timeout} s:\n{err[-3000:]}')
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope='module')
def ddp_runs(tmp_path_factory):
    """The same 2-rank run twice: uninterrupted, and with rank 1 SIGKILLed after iteration 7 and one
    elastic restart allowed (a second failure, e.g. a restarted rank that cannot reconnect, fails the test)."""
    from .conftest import write_task

    base = tmp_path_factory.mktemp('ddp')
    write_task(base / 'data' / 'alpha', {'train': {'a': 6, 'b': 6}, 'val': {'a': 3, 'b': 3}}, seed=1)
    write_task(
        base / 'data' / 'beta', {'train': {'x': 4, 'y': 4, 'z': 4}, 'val': {'x': 2, 'y': 2, 'z': 2}}, seed=2
    )
    pool = base / 'pool.yaml'
    pool.write_text('tasks:\n  - root: data/alpha\n  - root: data/beta\n')
    results = {}
    for name, env, restarts in (('plain', {}, 0), ('elastic', {'MTDP_TRAINING_FAULT': '1:7'}, 1)):
        d = tiny_config_dict(pool, base / 'runs', schedule={'iterations': 10, 'warmup_iterations': 2})
        d['run']['name'] = name
        cfg = from_dict(d).validate()
        config_file = base / f'{name}.yaml'
        config_file.write_text(yaml.safe_dump(to_dict(cfg)))
        proc = torchrun(config_file, env, restarts)
        results[name] = (proc, base / 'runs' / name)
    return results


def test_two_ranks_end_with_identical_weights(ddp_runs):
    proc, run_dir = ddp_runs['plain']
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / 'summary.json').read_text())
    assert summary['world_size'] == 2 and len(summary['rank_weights_sha256']) == 2
    assert summary['rank_weights_sha256'][0] == summary['rank_weights_sha256'][1] == summary['weights_sha256']
    state = ckpt.latest_checkpoint(run_dir / 'checkpoints')[1]
    assert state['iteration'] == 10 and state['world_size'] == 2


def test_elastic_restart_resumes_from_last_checkpoint_and_matches(ddp_runs):
    proc, run_dir = ddp_runs['elastic']
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / 'summary.json').read_text())
    assert summary['resumed_from'] == 4  # checkpoints every 4 iterations; rank 1 died after 7
    assert summary['rank_weights_sha256'][0] == summary['rank_weights_sha256'][1]
    plain = json.loads((ddp_runs['plain'][1] / 'summary.json').read_text())
    assert summary['weights_sha256'] == plain['weights_sha256']
