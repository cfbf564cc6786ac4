"""mtdp extract safety: source identity, file changes, locking, output checks, NaN, odd names, lists."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtdp_hub.errors import FeatureFileError, InvalidOptionError, MtdpError, OutputExistsError
from mtdp_hub.features import FeatureExtractor, extract_features, extract_source, make_source, read_features
from mtdp_hub.features import run as run_mod

FAST = dict(img_size=32, num_workers=0, progress=False, batch_size=8)
MODEL = 'random:test_resnet'


def _write_rgb(path: Path, size=40, seed=0, value=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    if value is None:
        a = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    else:
        a = np.full((size, size, 3), value, np.uint8)
    Image.fromarray(a).save(path)


# ---------------------------------------------------------------------------- B2: source identity
def test_rerun_with_another_input_folder_is_refused_naming_both(tmp_path):
    _write_rgb(tmp_path / 'one' / 'a' / 'x.png', seed=0)
    _write_rgb(tmp_path / 'two' / 'a' / 'x.png', seed=1)
    out = tmp_path / 'f.safetensors'
    extract_features(MODEL, tmp_path / 'one', out, **FAST)
    with pytest.raises(FeatureFileError, match=r'(?s)one.*two|two.*one') as e:
        extract_features(MODEL, tmp_path / 'two', out, **FAST)
    assert str(out) in str(e.value)
    stats = extract_features(MODEL, tmp_path / 'two', out, overwrite=True, **FAST)
    assert stats['n_new'] == 1


def test_changed_file_is_extracted_again(tmp_path):
    _write_rgb(tmp_path / 'in' / 'a' / 'x.png', seed=0)
    _write_rgb(tmp_path / 'in' / 'a' / 'y.png', seed=1)
    out = tmp_path / 'f.safetensors'
    extract_features(MODEL, tmp_path / 'in', out, **FAST)
    before = read_features(out)
    _write_rgb(tmp_path / 'in' / 'a' / 'x.png', size=48, seed=5)  # other size and content
    st = os.stat(tmp_path / 'in' / 'a' / 'x.png')
    os.utime(tmp_path / 'in' / 'a' / 'x.png', ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    stats = extract_features(MODEL, tmp_path / 'in', out, **FAST)
    after = read_features(out)
    assert (stats['n_new'], stats['n_skipped_done']) == (1, 1)
    assert after.paths == ['a/x.png', 'a/y.png']
    assert not np.allclose(after.features[0], before.features[0])
    np.testing.assert_array_equal(after.features[1], before.features[1])


# ---------------------------------------------------------------------------- B5: lock
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, '-c', 'pass'])
    p.wait()
    return p.pid


def test_output_locked_by_a_live_process_is_refused(tmp_path):
    _write_rgb(tmp_path / 'in' / 'a' / 'x.png')
    out = tmp_path / 'f.safetensors'
    lock = tmp_path / '.f.safetensors.lock'
    lock.write_text(f'{os.getppid()} {socket.gethostname()}')
    with pytest.raises((OutputExistsError, FeatureFileError), match=rf'(?s)f\.safetensors.*{os.getppid()}'):
        extract_features(MODEL, tmp_path / 'in', out, **FAST)
    assert not out.exists() and lock.exists()
    lock.write_text(f'{_dead_pid()} {socket.gethostname()}')  # stale: taken over
    assert extract_features(MODEL, tmp_path / 'in', out, **FAST)['n_new'] == 1
    assert not lock.exists()


def test_lock_is_held_during_the_run_and_removed_on_error(tmp_path, monkeypatch):
    _write_rgb(tmp_path / 'in' / 'a' / 'x.png')
    out = tmp_path / 'f.safetensors'
    seen = []

    def failing_write(path, ff):
        seen.append((tmp_path / '.f.safetensors.lock').read_text())
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(run_mod, 'write_features', failing_write)
    with pytest.raises(FeatureFileError):
        extract_features(MODEL, tmp_path / 'in', out, **FAST)
    assert seen and seen[0].split()[0] == str(os.getpid())
    assert not (tmp_path / '.f.safetensors.lock').exists()


# ---------------------------------------------------------------------------- B18: output checks
def _no_model(monkeypatch):
    def boom(*a, **k):
        raise AssertionError('the model must not be loaded')

    monkeypatch.setattr(run_mod, 'FeatureExtractor', boom)


@pytest.mark.parametrize('name', ['f.npy', 'f', 'f.json'])
def test_bad_output_suffix_refused_before_work(tmp_path, monkeypatch, name):
    _write_rgb(tmp_path / 'in' / 'a' / 'x.png')
    _no_model(monkeypatch)
    with pytest.raises(InvalidOptionError, match=rf'{name}.*\.safetensors'):
        extract_features(MODEL, tmp_path / 'in', tmp_path / name, **FAST)


def test_output_that_is_a_folder_refused_before_work(tmp_path, monkeypatch):
    _write_rgb(tmp_path / 'in' / 'a' / 'x.png')
    (tmp_path / 'f.safetensors').mkdir()
    _no_model(monkeypatch)
    with pytest.raises(FeatureFileError, match=r'f\.safetensors.*folder'):
        extract_features(MODEL, tmp_path / 'in', tmp_path / 'f.safetensors', **FAST)


@pytest.mark.parametrize('suffix', ['.safetensors', '.parquet'])
def test_corrupt_or_foreign_output_refused_before_work_unless_overwrite(tmp_path, monkeypatch, suffix):
    import torch
    from safetensors.torch import save_file

    _write_rgb(tmp_path / 'in' / 'a' / 'x.png')
    corrupt, foreign = tmp_path / f'c{suffix}', tmp_path / f'o{suffix}'
    corrupt.write_bytes(b'\x00garbage' * 10)
    if suffix == '.safetensors':
        save_file({'w': torch.zeros(2)}, str(foreign))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({'x': [1, 2]}), str(foreign))
    with monkeypatch.context() as m:
        _no_model(m)
        for path in (corrupt, foreign):
            with pytest.raises(FeatureFileError, match=rf'{path.name}.*overwrite'):
                extract_features(MODEL, tmp_path / 'in', path, **FAST)
            with pytest.raises(FeatureFileError, match=path.name):
                read_features(path)
    assert extract_features(MODEL, tmp_path / 'in', corrupt, overwrite=True, **FAST)['n_new'] == 1


def test_unwritable_parent_refused_before_work(tmp_path, monkeypatch):
    _write_rgb(tmp_path / 'in' / 'a' / 'x.png')
    ro = tmp_path / 'ro'
    ro.mkdir()
    real_access = os.access
    # root ignores permission bits: fake the answer of a read-only mount for this folder only
    monkeypatch.setattr(
        run_mod.os, 'access', lambda p, mode: False if Path(p) == ro else real_access(p, mode)
    )
    _no_model(monkeypatch)
    with pytest.raises(FeatureFileError, match=r'ro.*not writable'):
        extract_features(MODEL, tmp_path / 'in', ro / 'f.safetensors', **FAST)


def test_write_error_becomes_feature_file_error_and_keeps_progress(tmp_path, monkeypatch):
    for i in range(3):
        _write_rgb(tmp_path / 'in' / 'a' / f'{i}.png', seed=i)
    out = tmp_path / 'f.safetensors'
    real, calls = run_mod.write_features, []

    def flaky(path, ff):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(28, 'No space left on device')
        real(path, ff)

    monkeypatch.setattr(run_mod, 'write_features', flaky)
    with pytest.raises(FeatureFileError, match=r'f\.safetensors.*No space left'):
        extract_features(MODEL, tmp_path / 'in', out, save_every=1, **dict(FAST, batch_size=1))
    assert read_features(out).paths == ['a/0.png']


# ---------------------------------------------------------------------------- B13: non-finite
def test_non_finite_features_stop_naming_images_and_keep_progress(tmp_path):
    _write_rgb(tmp_path / 'in' / 'a' / '0.png', seed=0)
    _write_rgb(tmp_path / 'in' / 'a' / '1.png', value=255)  # the one that goes NaN
    _write_rgb(tmp_path / 'in' / 'a' / '2.png', seed=2)
    ext = FeatureExtractor(MODEL, img_size=32, device='cpu')
    forward = ext._forward

    def nan_on_white(x):
        out = forward(x).clone()
        out[x.mean(dim=(1, 2, 3)) > 0.9] = float('nan')
        return out

    ext._forward = nan_on_white
    out = tmp_path / 'f.safetensors'
    src = make_source(tmp_path / 'in')
    with pytest.raises(FeatureFileError, match=r'a/1\.png') as e:
        extract_source(ext, src, out, num_workers=0, progress=False, batch_size=1)
    assert isinstance(e.value, MtdpError) and 'finite' in str(e.value)
    ff = read_features(out)
    assert ff.paths == ['a/0.png'] and np.isfinite(ff.features).all()


# ---------------------------------------------------------------------------- B19: non-UTF-8 names
@pytest.mark.skipif(sys.platform != 'linux', reason='arbitrary bytes in file names')
@pytest.mark.parametrize('suffix', ['.parquet', '.safetensors'])
def test_non_utf8_file_name_is_kept_and_resumes(tmp_path, suffix):
    root = tmp_path / 'in'
    _write_rgb(root / 'a' / 'ok.png')
    raw = os.path.join(os.fsencode(root / 'a'), b'caf\xe9.png')
    _write_rgb(Path(os.fsdecode(raw)), seed=3)
    out = tmp_path / f'f{suffix}'
    stats = extract_features(MODEL, root, out, **FAST)
    ff = read_features(out)
    assert stats['n_new'] == 2 and stats['n_failed'] == 0
    assert sorted(ff.paths) == ['a/caf\\xe9.png', 'a/ok.png']
    again = extract_features(MODEL, root, out, **FAST)
    assert again['n_new'] == 0 and again['n_skipped_done'] == 2


# ---------------------------------------------------------------------------- B20: file lists
def test_duplicated_list_line_gives_one_row(tmp_path):
    _write_rgb(tmp_path / 'x.png')
    _write_rgb(tmp_path / 'y.png', seed=1)
    (tmp_path / 'list.txt').write_text('x.png\ny.png\nx.png\n')
    src = make_source(tmp_path / 'list.txt')
    assert src.keys == ['x.png', 'y.png']
    stats = extract_features(MODEL, tmp_path / 'list.txt', tmp_path / 'f.safetensors', **FAST)
    assert stats['n_input'] == 2 and read_features(tmp_path / 'f.safetensors').paths == ['x.png', 'y.png']


def test_duplicated_list_line_with_other_label_refused_naming_lines(tmp_path):
    (tmp_path / 'list.csv').write_text('path,label\nx.png,A\ny.png,B\nx.png,B\n')
    with pytest.raises(InvalidOptionError, match=r'list\.csv.*x\.png.*line 4'):
        make_source(tmp_path / 'list.csv')


def test_list_names_with_commas_and_tabs(tmp_path):
    (tmp_path / 'list.csv').write_text('path,label\n"a,b.png",T\nc.png,N\n"d\te.png",T\n')
    src = make_source(tmp_path / 'list.csv')
    assert src.keys == ['a,b.png', 'c.png', 'd\te.png'] and src.label_names == ['T', 'N', 'T']
    (tmp_path / 'list.tsv').write_text('a,b.png\tT\nc.png\n')
    src = make_source(tmp_path / 'list.tsv')
    assert src.keys == ['a,b.png', 'c.png'] and src.label_names == ['T', None]
    (tmp_path / 'list.txt').write_text('a,b.png\nc d.png\ne.png\tL\n')
    src = make_source(tmp_path / 'list.txt')
    assert src.keys == ['a,b.png', 'c d.png', 'e.png'] and src.label_names == [None, None, 'L']


# ---------------------------------------------------------------------------- B4: labels
def test_label_is_the_first_folder_under_the_root(tmp_path):
    _write_rgb(tmp_path / 'in' / 'other' / 'slide7' / 'x.png')
    _write_rgb(tmp_path / 'in' / 'tumor' / 'y.png')
    _write_rgb(tmp_path / 'in' / 'z.png')
    src = make_source(tmp_path / 'in')
    assert src.keys == ['other/slide7/x.png', 'tumor/y.png', 'z.png']
    assert src.label_names == ['other', 'tumor', None]
