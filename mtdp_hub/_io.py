"""Files that are either whole or absent: one way to write them, swap folders, clean leftovers.

Every output of the project (weights downloads, exported folders, feature files, training
checkpoints, run reports) goes through :func:`atomic_path` or :func:`atomic_replace_dir`:
the data is written under a temporary name beside the target (same file system), flushed to
disk, renamed over the target (atomic on POSIX), and the folder entry is flushed too. A reader
sees the old file or the new one, never half of one. A failure removes the temporary file.

Temporary names are ``.{target}.partial-{pid}-{token}``, so :func:`clean_leftovers` can remove
the ones whose process has died (a SIGKILL gives no chance to clean) without touching the
files of a process still writing. New files respect the umask, as files written directly do.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

from .errors import UnsafeOutputError

__all__ = [
    'PARTIAL_MARK',
    'atomic_path',
    'commit_file',
    'partial_file',
    'atomic_write_text',
    'atomic_replace_dir',
    'recover_dir',
    'clean_leftovers',
    'refuse_output_holding',
    'fsync_dir',
    'sha256_file',
    'try_lock',
]

PARTIAL_MARK = '.partial-'
_PARTIAL = re.compile(r'^\..+\.partial-(?P<pid>\d+)-[0-9a-f]+')
# The target renamed aside during a folder swap: ``.{name}.partial-{pid}-{token}.old``, paired with
# the new folder ``.{name}.partial-{pid}-{token}`` (complete: it is only renamed aside once it is).
_OLD = re.compile(r'^\.(?P<name>.+)\.partial-(?P<pid>\d+)-[0-9a-f]+\.old$')


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _partial_name(target: Path, suffix: str = '') -> Path:
    return target.with_name(f'.{target.name}{PARTIAL_MARK}{os.getpid()}-{secrets.token_hex(4)}{suffix}')


def partial_file(near: str | os.PathLike, *, suffix: str = '') -> Path:
    """Create an empty temporary file beside ``near`` (mode 0666 less the umask) and return its path.

    ``suffix`` is appended for libraries that pick the format from the name. The caller either
    :func:`commit_file` s it or removes it.
    """
    near = Path(near)
    near.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial_name(near, suffix)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return tmp


# Test hook: called with the temporary path once it is complete, just before the rename.
before_rename = None


def commit_file(tmp: Path, target: str | os.PathLike) -> Path:
    """Flush the complete temporary file ``tmp`` to disk and rename it over ``target``."""
    target = Path(target)
    _fsync_file(tmp)
    if before_rename is not None:
        before_rename(tmp)
    os.replace(tmp, target)
    fsync_dir(target.parent)
    return target


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, suffix: str = '') -> Iterator[Path]:
    """Yield a temporary path beside ``target``; when the block ends without error, move it there.

    The caller writes the temporary path (any library that takes a file name); see
    :func:`partial_file` for ``suffix``.
    """
    tmp = partial_file(target, suffix=suffix)
    try:
        yield tmp
        commit_file(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(target: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding='utf-8')
    return Path(target)


@contextlib.contextmanager
def atomic_replace_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty folder beside ``target``; when the block succeeds, it takes ``target``'s place.

    An existing ``target`` is renamed aside, the new folder renamed in, and only then the old
    one deleted: renames only, so a failure at any point leaves a complete folder in place, and a
    kill between the two renames is repaired by :func:`recover_dir` (called here first).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    tmp = _partial_name(target)
    os.mkdir(tmp, 0o777)
    try:
        yield tmp
        for path in tmp.rglob('*'):
            if path.is_file() and not path.is_symlink():
                _fsync_file(path)
        fsync_dir(tmp)
        _swap_in(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(tmp: Path, target: Path) -> None:
    old = tmp.with_name(tmp.name + '.old') if target.exists() else None
    if old is not None:
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def recover_dir(target: str | os.PathLike) -> Path | None:
    """Repair a folder swap of :func:`atomic_replace_dir` killed between its two renames.

    When ``target`` is missing and a dead process left it renamed aside (``.old``), the new
    complete folder of that swap is moved in if it is there, else the old folder is put back.
    Returns ``target`` when it did so, else ``None`` (nothing to do, or the swap is still running).
    """
    target = Path(target)
    if target.exists() or target.is_symlink() or not target.parent.is_dir():
        return None
    olds = []
    for path in target.parent.iterdir():
        m = _OLD.match(path.name)
        if m and m['name'] == target.name and path.is_dir() and not path.is_symlink():
            if not _alive(int(m['pid'])):
                olds.append(path)
    if not olds:
        return None
    old = max(olds, key=lambda p: p.stat().st_mtime)
    new = old.with_name(old.name.removesuffix('.old'))
    os.replace(new if new.is_dir() and not new.is_symlink() else old, target)
    fsync_dir(target.parent)
    return target


def refuse_output_holding(out: str | os.PathLike, keep: str | os.PathLike, what: str) -> None:
    """Raise :class:`UnsafeOutputError` when the output ``out`` is ``keep`` or a folder above it.

    Replacing ``out`` would delete ``keep`` (an input: a run folder, a checkpoint, a source file).
    Paths are compared resolved, so links and ``..`` do not hide it.
    """
    out_r, keep_r = Path(out).resolve(), Path(keep).resolve()
    if out_r == keep_r or out_r in keep_r.parents:
        raise UnsafeOutputError(
            f'{out}: refusing to write the output here: replacing it would delete {what} {keep}'
        )


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def try_lock(path: str | os.PathLike) -> tuple[Path | None, str | None]:
    """Create the lock file ``path`` exclusively, holding ``"<pid> <host>"``.

    Returns ``(path, None)`` when taken (the caller removes it when done), else ``(None, holder)``
    naming the process that holds it. A lock whose process died on this host is taken over; one
    from another host is always honoured (its process cannot be checked from here).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            try:
                pid, holder_host = path.read_text().split()
                pid = int(pid)
            except (OSError, ValueError):
                return None, 'another process (its lock file is being written)'
            if holder_host != host or _alive(pid):
                return None, f'process {pid} on {holder_host}'
            path.unlink(missing_ok=True)  # stale: its process died
            continue
        with os.fdopen(fd, 'w') as f:
            f.write(f'{os.getpid()} {host}')
        return path, None
    return None, 'another process (the lock kept reappearing)'


def clean_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders that dead processes left in ``folder``; returns them.

    Only names made by this module are considered, and only those whose writing process is no
    longer running (on this machine). A folder swap killed half-way is first repaired with
    :func:`recover_dir`, so the only copy of a folder is never removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    for path in list(folder.iterdir()):
        if (m := _OLD.match(path.name)) is not None:
            recover_dir(folder / m['name'])
    removed = []
    for path in folder.iterdir():
        m = _PARTIAL.match(path.name)
        if m is None or _alive(int(m['pid'])):
            continue
        if (o := _OLD.match(path.name)) is not None and not (folder / o['name']).exists():
            continue  # the only copy of its folder (recover_dir could not put it back)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
