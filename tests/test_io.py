"""resnext_det.io: atomic single-file writes and all-or-nothing groups of files."""

from __future__ import annotations

import errno
import gc
import io
import json
import os
import stat
import subprocess
import sys

import pytest
import torch

from resnext_det.io import (
    AtomicWriteError,
    atomic_write,
    staged_files,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from resnext_det.training import TrainingCheckpointer
from resnext_det.weights.io import save_checkpoint


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


def test_a_writer_that_replaces_its_temporary_file_still_gets_the_umask_mode(tmp_path, umask_027):
    # safetensors' save_file writes a new 0600 file over the path it is given (issue 27).
    from safetensors.torch import save_file

    out = tmp_path / "w.safetensors"
    with staged_files([out]) as (tmp,):
        save_file({"x": torch.zeros(2)}, str(tmp))
    assert stat.S_IMODE(out.stat().st_mode) == 0o640


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


# ---------------------------------------------------------------------------------------------
# Issue 15 item 4: a full disk is "no space left on device" with the path, at any fill level.


class _DiskFullAfter(io.RawIOBase):
    """A raw file on a disk that holds ``room`` more bytes: a write gets what fits, then ENOSPC
    (what write(2) does on a full disk)."""

    def __init__(self, fd: int, room: int):
        self.fd, self.room = fd, room

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return os.lseek(self.fd, offset, whence)

    def write(self, data) -> int:
        if self.room <= 0:
            _enospc()
        n = os.write(self.fd, memoryview(data)[: self.room])
        self.room -= n
        return n

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
        super().close()


def _linear():
    torch.manual_seed(0)
    return torch.nn.Linear(400, 375)  # 600 KB of weights: more than half the small tmpfs


def _staged(path, write):
    with staged_files([path, path.with_name(path.name + ".json")]) as (t, side):
        write(str(t))
        side.write_text("{}")


# What checkpoints, convert_weights (.pth and .pkl), reports and exports write, each given the
# path of a "model.pth".
WRITERS = {
    "checkpoint": lambda path: TrainingCheckpointer(_linear(), str(path.parent)).save(path.stem),
    "convert .pth": lambda path: save_checkpoint({"model": _linear().state_dict()}, path),
    "convert .pkl": lambda path: save_checkpoint(
        {"model": _linear().state_dict()}, path.with_suffix(".pkl")
    ),
    "json": lambda path: write_json_atomic(path, {"x": list(range(100_000))}),
    # export_backbone's way: torch opens the path itself (no file object to watch)
    "staged, torch.save by path": lambda path: _staged(
        path, lambda t: torch.save(_linear().state_dict(), t)
    ),
}
FILE_OBJECT_WRITERS = [n for n in sorted(WRITERS) if not n.startswith("staged")]


def _written(tmp_path, name):
    return tmp_path / ("model.pkl" if name == "convert .pkl" else "model.pth")


def _assert_names_the_path(exc, paths) -> None:
    assert exc.errno == errno.ENOSPC, exc
    assert "No space left on device" in str(exc), str(exc)
    assert any(str(p) in str(exc) for p in paths), str(exc)


@pytest.mark.parametrize("name", FILE_OBJECT_WRITERS)
def test_full_disk_reports_no_space_with_the_path_at_every_fill_level(tmp_path, monkeypatch, name):
    """Fault-injected: the disk fills after ``room`` bytes, swept from 0 to just below the
    file's size. Each write is an AtomicWriteError (ENOSPC) naming the path (torch's zip writer
    alone says "unexpected pos" at some levels); the previous file stays, no temporary is left."""
    write, target = WRITERS[name], _written(tmp_path, name)
    write(tmp_path / "model.pth")  # the previous file (and the size of a whole one)
    before = target.read_bytes()
    size = len(before)
    rooms = sorted({0, 1, 8, 63, 64, 65, 511, 512, 4095, 4096, 4097, 65536, size // 2, size - 1})
    real_fdopen = os.fdopen
    for room in rooms:

        def full_after(fd, *args, room=room, **kwargs):
            return io.BufferedWriter(_DiskFullAfter(fd, room))

        monkeypatch.setattr(os, "fdopen", full_after)
        with pytest.raises(AtomicWriteError) as e:
            write(tmp_path / "model.pth")
        monkeypatch.setattr(os, "fdopen", real_fdopen)
        _assert_names_the_path(e.value, [target])
        assert target.read_bytes() == before, room
        assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p], (room, os.listdir(tmp_path))


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs (needs root and mount); skipped where it cannot be mounted."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)  # -l: a leaked fd


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_full_disk_on_a_small_tmpfs_at_every_fill_level(small_tmpfs, name):
    """A real full disk: a filler takes the 1 MiB tmpfs to each of 24 levels, then a write of
    about 600 KB. At every level the write succeeds or says no space left with its path; the
    previous file stays and no temporary is left."""
    write, target = WRITERS[name], _written(small_tmpfs, name)
    outcomes = []
    for level in range(24):
        # torch.save(path) that failed keeps its file open in a reference cycle until collected,
        # and the space of an unlinked open file is not free
        gc.collect()
        for p in small_tmpfs.iterdir():
            p.unlink()
        (small_tmpfs / "old").write_bytes(b"o" * 1000)
        (small_tmpfs / "filler").write_bytes(b"x" * (level * 1024 * 1024 // 24))
        try:
            write(small_tmpfs / "model.pth")
            outcomes.append("ok")
        except AtomicWriteError as exc:
            _assert_names_the_path(exc, [target, small_tmpfs / "last_checkpoint"])
            outcomes.append("full")
        assert (small_tmpfs / "old").read_bytes() == b"o" * 1000
        assert not [p for p in os.listdir(small_tmpfs) if ".tmp-" in p], level
    assert "ok" in outcomes and outcomes.count("full") >= 8, outcomes


# ---------------------------------------------------------------------------------------------
# Issue 15 item 11: a group of files is all-or-nothing even when its last rename fails.


def test_staged_files_last_rename_failing_leaves_every_file_as_it_was(tmp_path):
    """A folder where the last file (comparison.png) should go: the rename onto it fails after
    the first three succeeded; those three are put back (old content, or gone when new)."""
    names = ["comparison.json", "comparison.md", "runs.csv", "comparison.png"]
    paths = [tmp_path / n for n in names]
    paths[0].write_text("old json")
    paths[1].write_text("old md")  # runs.csv is new: it must not appear
    paths[3].mkdir()
    (paths[3] / "inside").write_text("keep")
    before = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    changed = r"comparison\.png \(none of the group was changed"
    with pytest.raises(AtomicWriteError, match=changed), staged_files(paths) as temps:
        for t in temps:
            t.write_text("new")
    after = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(os.listdir(tmp_path)) == ["comparison.json", "comparison.md", "comparison.png"]


def test_staged_files_rename_failing_in_the_middle_restores_without_hard_links(
    tmp_path, monkeypatch
):
    """The same with a filesystem that has no hard links (the old files are renamed aside), and
    the failure on the second of three renames."""
    paths = [tmp_path / n for n in ("a", "b", "c")]
    for p in paths:
        p.write_text(f"old {p.name}")
    real_replace, refused = os.replace, []

    def no_link(*args, **kwargs):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    def replace(src, dst):
        if os.fspath(dst) == os.fspath(paths[1]) and not refused:  # the staged file onto b
            refused.append(src)
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(os, "replace", replace)
    changed = r"Permission denied: .*b \(none of the group"
    with pytest.raises(AtomicWriteError, match=changed), staged_files(paths) as temps:
        for t in temps:
            t.write_text("new")
    monkeypatch.undo()
    assert [p.read_text() for p in paths] == ["old a", "old b", "old c"]
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "c"]
