"""One way to write files: whole or absent, umask respected, leftovers of dead processes cleaned."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mtdp_hub import _io


def _dead_pid() -> int:
    return int(
        subprocess.run(
            [sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True
        ).stdout
    )


def test_atomic_path_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / 'out.bin'
    target.write_bytes(b'old')
    with pytest.raises(RuntimeError), _io.atomic_path(target) as tmp:
        tmp.write_bytes(b'half of the new')
        raise RuntimeError('killed while writing')
    assert target.read_bytes() == b'old' and os.listdir(tmp_path) == ['out.bin']
    with _io.atomic_path(target) as tmp:
        tmp.write_bytes(b'new')
    assert target.read_bytes() == b'new' and os.listdir(tmp_path) == ['out.bin']


def test_new_files_and_folders_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        _io.atomic_write_text(tmp_path / 'a.txt', 'x')
        with _io.atomic_replace_dir(tmp_path / 'folder') as tmp:
            (tmp / 'f').write_text('y')
    finally:
        os.umask(old)
    assert (tmp_path / 'a.txt').stat().st_mode & 0o777 == 0o644
    assert (tmp_path / 'folder').stat().st_mode & 0o777 == 0o755


def test_replace_dir_keeps_the_old_folder_when_the_new_one_fails(tmp_path):
    target = tmp_path / 'export'
    with _io.atomic_replace_dir(target) as tmp:
        (tmp / 'model').write_text('v1')
    with pytest.raises(ValueError), _io.atomic_replace_dir(target) as tmp:
        (tmp / 'model').write_text('v2, half')
        raise ValueError('export failed')
    assert (target / 'model').read_text() == 'v1' and os.listdir(tmp_path) == ['export']
    with _io.atomic_replace_dir(target) as tmp:
        (tmp / 'model').write_text('v2')
    assert (target / 'model').read_text() == 'v2' and os.listdir(tmp_path) == ['export']


def test_clean_leftovers_removes_only_what_dead_processes_left(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    stale_file = tmp_path / f'.feats.safetensors{_io.PARTIAL_MARK}{dead}-00ff'
    stale_dir = tmp_path / f'.export{_io.PARTIAL_MARK}{dead}-00aa'
    running = tmp_path / f'.feats.safetensors{_io.PARTIAL_MARK}{alive}-00ff'
    mine = tmp_path / '.hidden-but-not-ours'
    stale_file.write_bytes(b'x')
    stale_dir.mkdir()
    running.write_bytes(b'x')
    mine.write_bytes(b'x')
    assert sorted(_io.clean_leftovers(tmp_path)) == sorted([stale_file, stale_dir])
    assert running.exists() and mine.exists() and not stale_file.exists() and not stale_dir.exists()


def _killed_swap(tmp_path, *, new_complete: bool):
    """The layout a kill between the two renames leaves: target renamed to .old, new folder not in."""
    dead = _dead_pid()
    tmp = tmp_path / f'.export{_io.PARTIAL_MARK}{dead}-00aa'
    old = tmp.with_name(tmp.name + '.old')
    old.mkdir()
    (old / 'model').write_text('v1')
    if new_complete:
        tmp.mkdir()
        (tmp / 'model').write_text('v2')
    return tmp_path / 'export'


def test_clean_leftovers_restores_the_only_copy_of_a_killed_swap(tmp_path):
    target = _killed_swap(tmp_path, new_complete=False)
    _io.clean_leftovers(tmp_path)
    assert (target / 'model').read_text() == 'v1' and os.listdir(tmp_path) == ['export']


@pytest.mark.parametrize('new_complete, expected', [(False, 'v1'), (True, 'v2')])
def test_recover_dir_restores_or_finishes_a_killed_swap(tmp_path, new_complete, expected):
    target = _killed_swap(tmp_path, new_complete=new_complete)
    assert _io.recover_dir(target) == target
    assert (target / 'model').read_text() == expected
    _io.clean_leftovers(tmp_path)
    assert os.listdir(tmp_path) == ['export']


def test_next_replace_recovers_a_killed_swap_first(tmp_path):
    target = _killed_swap(tmp_path, new_complete=False)
    with pytest.raises(ValueError), _io.atomic_replace_dir(target):
        raise ValueError('export failed')
    assert (target / 'model').read_text() == 'v1'


def test_recover_dir_leaves_a_live_swap_alone(tmp_path):
    old = tmp_path / f'.export{_io.PARTIAL_MARK}{os.getpid()}-00aa.old'
    old.mkdir()
    assert _io.recover_dir(tmp_path / 'export') is None and old.is_dir()
    assert _io.clean_leftovers(tmp_path) == [] and old.is_dir()


def test_failed_second_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    target = tmp_path / 'export'
    with _io.atomic_replace_dir(target) as tmp:
        (tmp / 'model').write_text('v1')
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError('disk gone')
        return real(src, dst)

    monkeypatch.setattr(_io.os, 'replace', flaky)
    with pytest.raises(OSError), _io.atomic_replace_dir(target) as tmp:
        (tmp / 'model').write_text('v2')
    assert (target / 'model').read_text() == 'v1' and os.listdir(tmp_path) == ['export']
