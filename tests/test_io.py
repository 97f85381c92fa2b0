"""resnext_det.io: atomic single-file writes and all-or-nothing groups of files."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest

from resnext_det.io import (
    AtomicWriteError,
    atomic_write,
    staged_files,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_writes_and_permissions_follow_the_umask(tmp_path, umask_027):
    out = tmp_path / "sub" / "a.json"  # the directory is created
    assert write_json_atomic(out, {"b": [1, "é"]}) == out
    assert out.read_bytes() == '{"b":[1,"é"]}\n'.encode()
    write_json_atomic(out, {"b": 1}, indent=1)
    assert json.loads(out.read_text()) == {"b": 1} and "\n " in out.read_text()
    write_text_atomic(tmp_path / "t.md", "x\n")
    write_bytes_atomic(tmp_path / "b.bin", b"\x00\x01")
    with staged_files([tmp_path / "s1", tmp_path / "s2"]) as temps:
        for t in temps:
            t.write_text("s")
    for p in (out, tmp_path / "t.md", tmp_path / "b.bin", tmp_path / "s1", tmp_path / "s2"):
        # As open(path, "w") would make them: 0o666 & ~umask, not mkstemp's private 0o600.
        assert stat.S_IMODE(p.stat().st_mode) == 0o640, p
    assert sorted(os.listdir(tmp_path)) == ["b.bin", "s1", "s2", "sub", "t.md"]


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
def test_failed_write_keeps_the_old_file_and_names_the_path(tmp_path, monkeypatch, where):
    out = tmp_path / "a.bin"
    out.write_bytes(b"old")

    def half_then_full(f):
        f.write(b"partial")
        _enospc()

    if where != "write":
        monkeypatch.setattr(os, where, _enospc)
    with pytest.raises(AtomicWriteError, match=r"Could not write .*a\.bin: No space left.*full"):
        atomic_write(out, half_then_full if where == "write" else lambda f: f.write(b"new"))
    monkeypatch.undo()
    assert out.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.bin"]


def test_other_errors_propagate_and_clean_up(tmp_path):
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "a.json", {"x": object()})
    assert os.listdir(tmp_path) == []


def test_staged_files_are_all_or_nothing(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("old a")
    with pytest.raises(ValueError, match="boom"), staged_files([a, b]) as (ta, tb):
        ta.write_text("new a")
        raise ValueError("boom")
    assert a.read_text() == "old a" and sorted(os.listdir(tmp_path)) == ["a"]

    no_space = r"Could not write .*a, .*b: No space"
    with pytest.raises(AtomicWriteError, match=no_space) as e, staged_files([a, b]) as (ta, tb):
        ta.write_text("new a")
        _enospc()
    assert e.value.errno == errno.ENOSPC
    assert a.read_text() == "old a" and sorted(os.listdir(tmp_path)) == ["a"]

    with staged_files([a, b]) as (ta, tb):
        ta.write_text("new a")
        tb.write_text("new b")
    assert (a.read_text(), b.read_text()) == ("new a", "new b")
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]


def test_not_durable_skips_fsync(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", _enospc)  # would fail if called
    write_bytes_atomic(tmp_path / "a.png", b"png", durable=False)
    assert (tmp_path / "a.png").read_bytes() == b"png"
