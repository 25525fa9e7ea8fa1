"""Torture suite: break things on purpose and prove that nothing is lost.

Every test checks one invariant: every file acknowledged before the fault is
in a final archive exactly once, byte-identical; no archive is left
unreadable after recovery; no partial or garbage entry is ever ingested;
entries already in an archive are never lost.

Quick mode (the default, run by CI) takes a few minutes; long mode
(``pytest --long`` or ``REAR_TORTURE=long``) runs thousands of trials.  The
run ends with one summary line, ``torture: ...``, printed by conftest.py.

Faults are real: processes are killed with SIGKILL, a size-limited tmpfs
fills up, and power loss is simulated by recording every file operation rear
performs and rebuilding, for every prefix of that sequence, the states a
crash could leave on disk (after ALICE, OSDI 2014, and LazyFS).
"""

import collections
import errno
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib

import pytest

import rear
from test_rear import (BAD_PATHS, WRITER_SCRIPT, Acknowledged, archives_of, inbox_temp_zips,
                       read_archive, run_child, unzip_test, write_raw_temp_zip)

COUNTS = collections.Counter()

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:   # the fuzz tests skip with a reason
    given = None


# ---------------------------------------------------------------- the invariant


def logical_key(archive, member):
    """Rolled-over name-N.zip counts as name.zip, a conflict name.~N~ as name."""
    archive = re.sub(r"-\d+\.zip$", ".zip", archive)
    member = re.sub(r"\.~\d+~$", "", member)
    return archive + "/" + member


def check_archives(base, must_have, allowed):
    """The invariant, over every final archive under ``base``.

    ``must_have`` and ``allowed`` map "dest/member" to sets of contents: each
    content in must_have is archived exactly once; every archived entry has a
    content from allowed (nothing torn, nothing invented).  Every archive is
    read by Info-ZIP unzip -t and by zipfile with CRC checks.
    """
    found = collections.defaultdict(list)
    for archive, members in archives_of(base).items():
        for member, data in members.items():
            found[logical_key(archive, member)].append(data)
    for key, contents in found.items():
        if len(contents) != len(set(contents)):
            COUNTS["corrupt"] += 1
            pytest.fail("%s is archived twice with the same content" % key)
        for data in contents:
            if data not in allowed.get(key, ()):
                COUNTS["corrupt"] += 1
                pytest.fail("%s holds content nobody wrote (%d bytes)" % (key, len(data)))
    for key, contents in must_have.items():
        for data in contents:
            if data not in found.get(key, ()):
                COUNTS["lost"] += 1
                pytest.fail("acknowledged %s was lost" % key)


def as_sets(files):
    sets = collections.defaultdict(set)
    for key, data in files.items():
        sets[key].add(data)
    return sets


def recover_and_check(base, must_have, allowed, **scavenge_options):
    stats = rear.scavenge(base, flush=True, rotation_span=3600, **scavenge_options)
    assert stats.errors == [], "recovery reported %s" % stats.errors
    assert inbox_temp_zips(base) == []
    check_archives(base, must_have, allowed)


# ---------------------------------------------------------------- recording and faulting file operations


class FaultyOS:
    """Stands in for rear's ``os`` module.

    Every call is performed for real.  Calls that change files under
    ``root`` are counted and recorded as operations for the power-loss model;
    the ``fail_at``-th such call raises OSError(``fail_errno``) instead of
    running, and the ``kill_at``-th kills the process with SIGKILL.
    """

    def __init__(self, root, fail_at=None, fail_errno=errno.EIO, kill_at=None):
        self.root = os.path.abspath(root)
        self.fail_at = fail_at
        self.fail_errno = fail_errno
        self.kill_at = kill_at
        self.count = 0
        self.failed = None
        self.ops = []
        self._fds = {}

    def __getattr__(self, name):
        return getattr(os, name)

    def _rel(self, path):
        path = os.path.abspath(os.fspath(path))
        if path == self.root:
            return ""
        if path.startswith(self.root + os.sep):
            return path[len(self.root) + 1:]
        return None

    def _step(self, what):
        self.count += 1
        if self.count == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.count == self.fail_at:
            self.failed = what
            raise OSError(self.fail_errno, "%s (injected)" % os.strerror(self.fail_errno))

    def mark(self, acknowledged):
        """Record that these (name, data) pairs are acknowledged from here on."""
        self.ops.append(("ack", list(acknowledged)))

    def open(self, path, flags, mode=0o777, **kwargs):
        rel = self._rel(path)
        if rel is None:
            return os.open(path, flags, mode, **kwargs)
        existed = os.path.lexists(path)
        creates = bool(flags & os.O_CREAT) and not existed
        truncates = bool(flags & os.O_TRUNC) and existed
        if creates or truncates:
            self._step("open %s" % rel)
        fd = os.open(path, flags, mode, **kwargs)
        info = os.fstat(fd)
        self._fds[fd] = (rel, info.st_ino, stat.S_ISDIR(info.st_mode))
        if creates:
            self.ops.append(("create", rel, info.st_ino))
        elif truncates:
            self.ops.append(("truncate", info.st_ino, 0))
        return fd

    def close(self, fd):
        self._fds.pop(fd, None)
        return os.close(fd)

    def write(self, fd, data):
        if fd not in self._fds:
            return os.write(fd, data)
        self._step("write %s" % self._fds[fd][0])
        offset = os.lseek(fd, 0, os.SEEK_CUR)
        written = os.write(fd, data)
        self.ops.append(("write", self._fds[fd][1], offset, bytes(data[:written])))
        return written

    def pwrite(self, fd, data, offset):
        if fd not in self._fds:
            return os.pwrite(fd, data, offset)
        self._step("pwrite %s" % self._fds[fd][0])
        written = os.pwrite(fd, data, offset)
        self.ops.append(("write", self._fds[fd][1], offset, bytes(data[:written])))
        return written

    def copy_file_range(self, src, dst, count, offset_src=None, offset_dst=None):
        if dst not in self._fds:
            return os.copy_file_range(src, dst, count, offset_src, offset_dst)
        self._step("copy_file_range %s" % self._fds[dst][0])
        data = os.pread(src, count, offset_src)
        written = os.pwrite(dst, data, offset_dst)
        self.ops.append(("write", self._fds[dst][1], offset_dst, data[:written]))
        return written

    def ftruncate(self, fd, size):
        if fd in self._fds:
            self._step("ftruncate %s" % self._fds[fd][0])
            self.ops.append(("truncate", self._fds[fd][1], size))
        return os.ftruncate(fd, size)

    def fsync(self, fd):
        if fd not in self._fds:
            return os.fsync(fd)
        rel, inode, is_dir = self._fds[fd]
        self._step("fsync %s" % rel)
        os.fsync(fd)
        self.ops.append(("fsyncdir", rel) if is_dir else ("fsync", inode))

    def _rename(self, function, src, dst):
        rel_src, rel_dst = self._rel(src), self._rel(dst)
        if rel_src is None:
            return function(src, dst)
        self._step("rename %s" % rel_src)
        function(src, dst)
        self.ops.append(("rename", rel_src, rel_dst))

    def replace(self, src, dst):
        return self._rename(os.replace, src, dst)

    def rename(self, src, dst):
        return self._rename(os.rename, src, dst)

    def unlink(self, path):
        rel = self._rel(path)
        if rel is not None:
            self._step("unlink %s" % rel)
        os.unlink(path)
        if rel is not None:
            self.ops.append(("unlink", rel))

    def mkdir(self, path, mode=0o777):
        rel = self._rel(path)
        if rel is not None:
            self._step("mkdir %s" % rel)
        os.mkdir(path, mode)
        if rel is not None:
            self.ops.append(("mkdir", rel))

    def makedirs(self, path, mode=0o777, exist_ok=False):
        head, tail = os.path.split(os.path.abspath(path))
        if tail and not os.path.isdir(head):
            self.makedirs(head, mode, exist_ok=True)
        try:
            self.mkdir(path, mode)
        except OSError:
            if not exist_ok or not os.path.isdir(path):
                raise


# ---------------------------------------------------------------- the power-loss model


class _File:
    def __init__(self, data=b""):
        self.data = bytearray(data)
        self.synced = bytes(data)
        self.pending = []


class _Dir:
    def __init__(self, entries=None):
        self.entries = dict(entries or {})
        self.synced = dict(self.entries)
        self.pending = []


def _apply_data(data, op, tear=None):
    if op[0] == "write":
        offset, chunk = op[1], op[2]
        if tear is not None:
            chunk = chunk[:tear]
        if len(data) < offset:
            data.extend(b"\0" * (offset - len(data)))
        data[offset:offset + len(chunk)] = chunk
    else:
        size = op[1]
        del data[size:]
        data.extend(b"\0" * (size - len(data)))


def _apply_entry(entries, op):
    if op[0] == "set":
        entries[op[1]] = op[2]
    elif op[0] == "del":
        entries.pop(op[1], None)
    else:   # an atomic same-directory rename
        entries.pop(op[1], None)
        entries[op[2]] = op[3]


class PowerLossModel:
    """What a directory tree holds durably, operation by operation.

    Writes and truncations of a file are durable once the file is fsynced;
    directory entries (create, rename, unlink, mkdir) once the directory is
    fsynced.  A power loss keeps, of what is not yet durable, a prefix of
    each directory's operations and a prefix of each file's writes, the last
    of them possibly torn (journaling filesystems commit metadata in order).
    """

    def __init__(self, root):
        self.files = {}
        self.inode_ids = {}
        self.dirs = {}
        self._next_id = 0
        for directory, subdirs, names in os.walk(root):
            rel = os.path.relpath(directory, root)
            rel = "" if rel == "." else rel
            entries = {name: ("d", os.path.join(rel, name)) for name in subdirs}
            for name in names:
                path = os.path.join(directory, name)
                with open(path, "rb") as handle:
                    entries[name] = ("f", self._new_file(os.lstat(path).st_ino, handle.read()))
            self.dirs[rel] = _Dir(entries)

    def _new_file(self, inode, data=b""):
        # Model ids, not inode numbers: a deleted file's inode is reused.
        self._next_id += 1
        self.files[self._next_id] = _File(data)
        self.inode_ids[inode] = self._next_id
        return self._next_id

    def apply(self, op):
        kind = op[0]
        if kind in ("write", "truncate"):
            data_op = ("write", op[2], op[3]) if kind == "write" else ("truncate", op[2])
            model_file = self.files[self.inode_ids[op[1]]]
            _apply_data(model_file.data, data_op)
            model_file.pending.append(data_op)
        elif kind == "fsync":
            model_file = self.files[self.inode_ids[op[1]]]
            model_file.synced = bytes(model_file.data)
            model_file.pending = []
        elif kind == "fsyncdir":
            directory = self.dirs[op[1]]
            directory.synced = dict(directory.entries)
            directory.pending = []
        elif kind in ("create", "mkdir", "unlink", "rename"):
            parent, name = os.path.split(op[1])
            directory = self.dirs[parent]
            if kind == "create":
                entry_op = ("set", name, ("f", self._new_file(op[2])))
            elif kind == "mkdir":
                self.dirs[op[1]] = _Dir()
                entry_op = ("set", name, ("d", op[1]))
            elif kind == "unlink":
                entry_op = ("del", name)
            else:
                new_parent, new_name = os.path.split(op[2])
                assert new_parent == parent, "rear renames only within a directory"
                entry_op = ("rename", name, new_name, directory.entries[name])
            _apply_entry(directory.entries, entry_op)
            directory.pending.append(entry_op)

    def crash_state(self, choose):
        """{relative path: bytes} and directories of one possible crash state.

        ``choose(n)`` picks how many of n pending operations survive;
        ``choose.tear(size)`` how much of the last surviving write does.
        """
        files, dirs, contents = {}, [], {}

        def content(file_id):
            if file_id not in contents:
                model_file = self.files[file_id]
                data = bytearray(model_file.synced)
                kept = choose(len(model_file.pending))
                for index, op in enumerate(model_file.pending[:kept]):
                    tear = choose.tear(len(op[2])) if op[0] == "write" and index == kept - 1 else None
                    _apply_data(data, op, tear)
                contents[file_id] = bytes(data)
            return contents[file_id]

        def visit(rel):
            directory = self.dirs[rel]
            entries = dict(directory.synced)
            for op in directory.pending[:choose(len(directory.pending))]:
                _apply_entry(entries, op)
            dirs.append(rel)
            for name, (kind, ref) in sorted(entries.items()):
                if kind == "f":
                    files[os.path.join(rel, name)] = content(ref)
                elif ref in self.dirs:
                    visit(ref)

        visit("")
        return files, dirs


class Choose:
    """Crash-state choices: 'drop' all that is not durable, 'keep' it all, or random."""

    def __init__(self, mode, rng=None):
        self.mode = mode
        self.rng = rng

    def __call__(self, pending):
        if self.mode == "drop":
            return 0
        if self.mode == "keep":
            return pending
        return self.rng.randint(0, pending)

    def tear(self, size):
        if self.mode != "random" or self.rng.random() < 0.5:
            return None
        return self.rng.randint(0, size)


def materialize(files, dirs, target):
    for rel in dirs:
        os.makedirs(os.path.join(target, rel), exist_ok=True)
    for rel, data in files.items():
        with open(os.path.join(target, rel), "wb") as handle:
            handle.write(data)


# ---------------------------------------------------------------- 3. power-loss crash states


def power_loss_workload(base, recorder, sync, rng):
    """Writer and scavenger doing the things whose ordering matters.

    Returns every (name, data) any writer attempted.  Acknowledgements are
    recorded where the data is durable: after each file with sync="file",
    after each seal with sync="rotation".
    """
    attempted = {}

    def batch(fs, files):
        for name, data in files.items():
            attempted[name] = data
            fs.write_bytes(name, data)
            if sync == "file":
                recorder.mark([(name, data)])
        fs.rotate()
        recorder.mark(files.items())

    def make(prefix, count):
        return {"%s/%d" % (prefix, n): rng.randbytes(rng.randint(0, 300)) + b"z" * rng.randint(0, 900)
                for n in range(count)}

    fs = rear.rear_fs(base, rotation_span=3600, sync=sync,
                      compression=rng.choice(["stored", "deflated"]))
    first = make("a.zip/new", 3)
    first.update(make("sub/b.zip/x", 2))
    first["a.zip/old/1"] = b"a different old/1"        # a conflict with the old archive
    batch(fs, first)
    rear.scavenge(base, rotation_span=3600)             # a new subdirectory, a new archive
    second = make("a.zip/more", 3)
    second.update(make("c.zip/y", 1))
    batch(fs, second)
    fs.write_bytes("a.zip/unsealed", b"never sealed")  # acknowledged only with sync=file
    attempted["a.zip/unsealed"] = b"never sealed"
    if sync == "file":
        recorder.mark([("a.zip/unsealed", b"never sealed")])
    # rolls a.zip over to a-0.zip; the unsealed temp zip is this process's own
    rear.scavenge(base, rotation_span=3600, max_size=600)
    fs.close()
    recorder.mark([("a.zip/unsealed", b"never sealed")])
    rear.scavenge(base, rotation_span=3600, max_size=600)
    return attempted


def initial_archive(base):
    """A user's existing archive (made by zipfile) whose entries must survive."""
    old = {"a.zip/old/1": b"old one", "a.zip/old/2": b"old two" * 100}
    with zipfile.ZipFile(os.path.join(base, "a.zip"), "w", zipfile.ZIP_DEFLATED) as handle:
        for name, data in old.items():
            handle.writestr(name.split("/", 1)[1], data)
    return old


@pytest.mark.parametrize("sync", ["rotation", "file"])
def test_every_power_loss_crash_state_recovers_without_loss(tmp_path, monkeypatch, long_mode,
                                                            sync):
    rng = random.Random(sync)
    base = str(tmp_path / "traced")
    os.makedirs(base)
    old = initial_archive(base)
    model = PowerLossModel(base)
    recorder = FaultyOS(base)
    monkeypatch.setattr(rear, "os", recorder)
    attempted = power_loss_workload(base, recorder, sync, rng)
    monkeypatch.undo()
    allowed = as_sets(old)
    for name, data in attempted.items():
        allowed[name].add(data)
    random_states = 12 if long_mode else 2
    acknowledged = as_sets(old)
    explored = 0
    for index in range(len(recorder.ops) + 1):
        choices = [Choose("drop"), Choose("keep")]
        choices += [Choose("random", random.Random("%s-%d-%d" % (sync, index, n)))
                    for n in range(random_states)]
        for choose in choices:
            files, dirs = model.crash_state(choose)
            state = str(tmp_path / ("state-%d" % explored))
            materialize(files, dirs, state)
            try:
                recover_and_check(state, acknowledged, allowed, max_size=600)
            except BaseException:
                last = recorder.ops[index - 1] if index else ("start",)
                print("crash state after operation %d of %d (%s %s), %s: %s"
                      % (index, len(recorder.ops), last[0],
                         [name for name, _data in last[1]] if last[0] == "ack" else last[1:2],
                         choose.mode, sorted(files)))
                raise
            shutil.rmtree(state)
            explored += 1
        if index < len(recorder.ops):
            op = recorder.ops[index]
            if op[0] == "ack":
                for name, data in op[1]:
                    acknowledged[name].add(data)
            else:
                model.apply(op)
    COUNTS["crash states"] += explored
    assert explored > 100
