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

import errno
import io
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import zipfile
import zlib

import pytest

import rear
from tests.support import (BAD_PATHS, SCAVENGER_LOOP_SCRIPT, WriterContents, archives_of,
                           as_sets, check_archives, inbox_temp_zips, make_faithful_tree,
                           mounted, read_archive, run_child, run_in_threads,
                           start_torture_writer, torture_content, write_raw_temp_zip)

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:   # the fuzz tests skip with a reason
    given = None


# ---------------------------------------------------------------- the invariant (check_archives in support)


def recover_and_check(tally, base, must_have, allowed, **scavenge_options):
    stats = rear.scavenge(base, flush=True, rotation_span=3600, **scavenge_options)
    assert stats.errors == [], "recovery reported %s" % stats.errors
    assert inbox_temp_zips(base) == []
    check_archives(base, must_have, allowed, conflicts=True, tally=tally.torture)


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

    def link(self, src, dst):
        rel_src, rel_dst = self._rel(src), self._rel(dst)
        if rel_src is None:
            return os.link(src, dst)
        self._step("link %s" % rel_src)
        os.link(src, dst)
        self.ops.append(("link", rel_src, rel_dst))

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
    directory entries (create, rename, link, unlink, mkdir) once the directory is
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
        elif kind in ("create", "mkdir", "unlink", "rename", "link"):
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
                assert new_parent == parent, "rear renames and links only within a directory"
                if kind == "link":   # a second name of the same file
                    entry_op = ("set", new_name, directory.entries[name])
                else:
                    entry_op = ("rename", name, new_name, directory.entries[name])
            _apply_entry(directory.entries, entry_op)
            directory.pending.append(entry_op)

    def crash_state(self, choose):
        """{relative path: bytes}, directories, and {relative path: an
        earlier path of the same file (a hard link)} of one possible crash
        state.

        ``choose(n)`` picks how many of n pending operations survive;
        ``choose.tear(size)`` how much of the last surviving write does.
        """
        files, dirs, contents, links, first_path = {}, [], {}, {}, {}

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
                    path = os.path.join(rel, name)
                    if ref in first_path:
                        links[path] = first_path[ref]
                    else:
                        first_path[ref] = path
                        files[path] = content(ref)
                elif ref in self.dirs:
                    visit(ref)

        visit("")
        return files, dirs, links


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


def materialize(files, dirs, links, target):
    for rel in dirs:
        os.makedirs(os.path.join(target, rel), exist_ok=True)
    for rel, data in files.items():
        with open(os.path.join(target, rel), "wb") as handle:
            handle.write(data)
    for rel, other in links.items():
        os.link(os.path.join(target, other), os.path.join(target, rel))


# ---------------------------------------------------------------- 1. power-loss crash states


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
    # rolls a.zip over to a.~1~.zip; the unsealed temp zip is this process's own
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
def test_every_power_loss_crash_state_recovers_without_loss(tally, tmp_path, monkeypatch, long_mode,
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
            files, dirs, links = model.crash_state(choose)
            state = str(tmp_path / ("state-%d" % explored))
            materialize(files, dirs, links, state)
            try:
                recover_and_check(tally, state, acknowledged, allowed, max_size=600)
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
    tally.torture["crash states"] += explored
    assert explored > 100


# ---------------------------------------------------------------- deterministic writer content


# ---------------------------------------------------------------- 2. writer SIGKILL


def test_writers_killed_at_random_instants_lose_nothing_acknowledged(tally, tmp_path, long_mode):
    trials = 1000 if long_mode else 50
    for trial in range(trials):
        rng = random.Random(trial)
        base = str(tmp_path / ("trial-%d" % trial))
        os.makedirs(base)
        writer = start_torture_writer(base, seed=trial, threads=rng.randint(1, 4),
                                      rotation=rng.choice([0.05, 0.2, 1.0]))
        writer.wait_for_first()
        time.sleep(rng.uniform(0.0, 0.6))
        acknowledged = writer.kill()
        recover_and_check(tally, base, as_sets(acknowledged), WriterContents())
        tally.torture["writer kills"] += 1
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------- 3. scavenger SIGKILL at every operation


def scavenger_scenario(base):
    """Archives to append to, temp zips for several archives each, a conflict,
    a dead writer's unsealed temp zip, and an archive due to roll over."""
    files = {}

    def write(batch, **options):
        with rear.rear_fs(base, rotation_span=3600, **options) as fs:
            for name, data in batch.items():
                fs.write_bytes(name, data)
        files.update(batch)

    write({"a.zip/old/%d" % n: torture_content("old%d" % n) for n in range(6)})
    rear.scavenge(base)
    write({"%s/one/%d" % (dest, n): torture_content("%s1%d" % (dest, n))
           for dest in ("a.zip", "b.zip", "sub/c.zip") for n in range(4)}, compression="stored")
    write({"a.zip/two/%d" % n: torture_content("a2%d" % n) for n in range(5)})
    write({"a.zip/old/0": b"conflicting content"})
    files["a.zip/old/0"] = torture_content("old0")
    dead = {"b.zip/dead/%d" % n: torture_content("dead%d" % n) for n in range(3)}
    write_raw_temp_zip(base, dead.items())
    files.update(dead)
    allowed = as_sets(files)
    allowed["a.zip/old/0"].add(b"conflicting content")
    return allowed


def _scavenge_killed_at(base, kill_at, max_size):
    """Fork; the child scavenges and SIGKILLs itself at operation kill_at."""
    pid = os.fork()
    if pid == 0:
        try:
            rear.os = FaultyOS(base, kill_at=kill_at)
            rear.scavenge(base, flush=True, max_size=max_size, rotation_span=3600)
        finally:
            os._exit(3)
    _pid, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_scavenger_killed_at_every_operation_then_rerun_loses_and_duplicates_nothing(tally, 
        tmp_path, monkeypatch, long_mode):
    prepared = str(tmp_path / "prepared")
    os.makedirs(prepared)
    allowed = scavenger_scenario(prepared)
    must_have = {key: set(contents) for key, contents in allowed.items()}
    must_have["a.zip/old/0"] = allowed["a.zip/old/0"]   # both: the old one and the conflict
    max_size = 5000   # a.zip (7 KB) is past it: the pass rolls it over to a.~1~.zip
    dry = str(tmp_path / "dry")
    shutil.copytree(prepared, dry)
    recorder = FaultyOS(dry)
    monkeypatch.setattr(rear, "os", recorder)
    rear.scavenge(dry, flush=True, max_size=max_size, rotation_span=3600)
    monkeypatch.undo()
    operations = recorder.ops
    total = recorder.count
    assert any(op[0] in ("rename", "link") and op[1].endswith("a.zip") for op in operations), \
        "the scenario does not roll a.zip over"
    if long_mode:
        chosen = list(range(1, total + 1))
    else:
        # every rename and directory fsync (commit points, rollover), the rest sampled
        mutating = [op for op in operations if op[0] != "ack"]
        special = [index + 1 for index, op in enumerate(mutating)
                   if op[0] in ("rename", "link", "fsyncdir", "unlink", "truncate")]
        rng = random.Random(total)
        others = sorted(set(range(1, total + 1)) - set(special))
        chosen = sorted(set(special[:40]) | set(rng.sample(others, min(len(others), 20))))
    assert len(chosen) >= 50 or long_mode and len(chosen) == total
    for kill_at in chosen:
        trial = str(tmp_path / ("kill-%d" % kill_at))
        shutil.copytree(prepared, trial)
        assert _scavenge_killed_at(trial, kill_at, max_size), "not killed at %d" % kill_at
        try:
            recover_and_check(tally, trial, must_have, allowed, max_size=max_size)
        except BaseException:
            print("scavenger killed at operation %d of %d" % (kill_at, total))
            raise
        tally.torture["scavenger kills"] += 1
        shutil.rmtree(trial)


# ---------------------------------------------------------------- 4. concurrency

def test_eight_writers_and_three_scavengers_lose_and_duplicate_nothing(tally, tmp_path, long_mode):
    base = str(tmp_path / "base")
    os.makedirs(base)
    duration = 120.0 if long_mode else 8.0
    until = time.time() + duration
    scavengers = [run_child(SCAVENGER_LOOP_SCRIPT, base, str(until), "0.5") for _ in range(3)]
    writers = [start_torture_writer(base, seed=seed, threads=2 + seed % 3,
                                     rotation=0.5 + 0.5 * (seed % 2)) for seed in range(8)]
    time.sleep(max(0.0, until - time.time() - 1.0))
    acknowledged = {}
    for writer in writers:
        acknowledged.update(writer.kill())
    assert [scavenger.wait(300) for scavenger in scavengers] == [0, 0, 0]
    assert len(acknowledged) > 100
    recover_and_check(tally, base, as_sets(acknowledged), WriterContents())
    tally.torture["writer kills"] += len(writers)


def test_many_threads_of_one_process_and_an_in_process_scavenger(tally, tmp_path, long_mode):
    base = str(tmp_path / "base")
    per_thread = 2000 if long_mode else 200
    written = {}

    def work(fs, thread):
        for n in range(per_thread):
            name = "%s/t%d/%d" % (["a.zip", "b.zip"][n % 2], thread, n)
            with fs.open(name, "wb") as handle:
                handle.write(torture_content(name))
            written[name] = torture_content(name)

    with rear.scavengerd(base, rotation_span=0.2):
        with rear.rear_fs(base, rotation_span=0.1) as fs:
            run_in_threads(16, work, fs)
    recover_and_check(tally, base, as_sets(written), as_sets(written))


# ---------------------------------------------------------------- 5. disk full and I/O errors


@pytest.fixture
def small_filesystem(tmp_path):
    """A 1 MiB tmpfs, grown later with remount (needs root)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a size-limited tmpfs needs root")
    mount_point = str(tmp_path / "small")
    with mounted(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mount_point], mount_point,
                 ["umount", "-l", mount_point], "a tmpfs") as mount_point:
        yield mount_point


def test_disk_full_raises_to_the_writer_and_keeps_what_was_acknowledged(tally, small_filesystem):
    base = os.path.join(small_filesystem, "base")
    acknowledged = {}
    failure = None
    fs = rear.rear_fs(base, rotation_span=3600, compression="stored")
    for n in range(1000):
        name = "a.zip/f%04d" % n
        data = random.Random(n).randbytes(20000)
        try:
            fs.write_bytes(name, data)
        except OSError as err:
            failure = err
            break
        acknowledged[name] = data
    assert failure is not None and failure.errno == errno.ENOSPC, failure
    try:
        fs.close()
    except OSError as err:   # sealing needs space too; if it fails, the caller hears why
        assert err.errno == errno.ENOSPC
    stats = rear.scavenge(base, flush=True, rotation_span=3600)
    assert stats.errors, "appending to an archive on a full disk cannot succeed"
    for path in archives_of_paths(base):
        read_archive(path)   # whatever exists is a valid archive
    assert inbox_temp_zips(base), "the temp zip must stay until its archive has it"
    subprocess.run(["mount", "-o", "remount,size=64m", small_filesystem], check=True)
    recover_and_check(tally, base, as_sets(acknowledged), as_sets(acknowledged))
    tally.torture["injected errors"] += 1


def archives_of_paths(base):
    return [path for path in rear._archives_under(base)]


INJECTED_ERRNOS = [errno.EIO, errno.ENOSPC, errno.EDQUOT, errno.EACCES]


def error_workload(base):
    """A writer and two scavenger passes; errors are collected, never hidden."""
    acknowledged, raised, reported = {}, [], []
    fs = rear.rear_fs(base, rotation_span=3600, sync="file")

    def write(name):
        try:
            fs.write_bytes(name, torture_content(name))
        except OSError as err:
            raised.append(err)
        else:
            acknowledged[name] = torture_content(name)

    for name in ["a.zip/e/%d" % n for n in range(4)] + ["sub/b.zip/e/x"]:
        write(name)
    try:
        fs.rotate()
    except OSError as err:
        raised.append(err)
    reported += scavenge_and_check(base, rotation_span=3600)
    write("a.zip/f/0")
    write("a.zip/f/1")
    try:
        fs.close()
    except OSError as err:
        raised.append(err)
    reported += scavenge_and_check(base, flush=True, rotation_span=3600, max_size=30000)
    return acknowledged, raised, reported


def scavenge_and_check(base, **options):
    """A pass that may fail; every archive must be valid right after it."""
    errors = rear.scavenge(base, **options).errors
    for path in archives_of_paths(base):
        read_archive(path)
    return errors


def test_an_injected_io_error_at_any_operation_reaches_its_caller_and_loses_nothing(tally, 
        tmp_path, monkeypatch, long_mode):
    dry = str(tmp_path / "dry")
    os.makedirs(dry)
    initial_archive(dry)
    counter = FaultyOS(dry)
    monkeypatch.setattr(rear, "os", counter)
    error_workload(dry)
    monkeypatch.undo()
    total = counter.count
    cases = [(at, code) for at in range(1, total + 1)
             for code in (INJECTED_ERRNOS if long_mode else [INJECTED_ERRNOS[at % 4]])]
    for fail_at, code in cases:
        base = str(tmp_path / ("fail-%d-%d" % (fail_at, code)))
        os.makedirs(base)
        old = initial_archive(base)
        faulty = FaultyOS(base, fail_at=fail_at, fail_errno=code)
        monkeypatch.setattr(rear, "os", faulty)
        try:
            acknowledged, raised, reported = error_workload(base)
        finally:
            monkeypatch.undo()
        assert faulty.failed, "operation %d was never reached" % fail_at
        message = os.strerror(code)
        surfaced = ([err for err in raised if err.errno == code]
                    or [reason for _path, reason in reported if message in reason])
        assert surfaced, "the injected %s at %s reached nobody" % (errno.errorcode[code],
                                                                   faulty.failed)
        allowed = as_sets(dict(old, **acknowledged))
        for name in ["a.zip/e/%d" % n for n in range(4)] + ["sub/b.zip/e/x", "a.zip/f/0",
                                                            "a.zip/f/1"]:
            allowed[name].add(torture_content(name))
        try:
            recover_and_check(tally, base, as_sets(dict(old, **acknowledged)), allowed,
                              max_size=30000)
        except BaseException:
            print("injected %s at operation %d of %d: %s"
                  % (errno.errorcode[code], fail_at, total, faulty.failed))
            raise
        tally.torture["injected errors"] += 1
        shutil.rmtree(base)


# ---------------------------------------------------------------- 6. hostile input


def _api_cases():
    """(description, call(fs), expected exception, fragment of its message)."""
    cases = [("path %r" % (path,), lambda fs, path=path: fs.open(path), ValueError, message)
             for path, message in BAD_PATHS]
    cases += [("mode %r" % mode, lambda fs, mode=mode: fs.open("a.zip/x", mode), ValueError,
               "'w', 'w+', 'wb' or 'w+b'") for mode in ("r", "a", "x", "rb+", "")]
    cases += [
        ("str to a binary handle", lambda fs: fs.open("a.zip/x", "wb").write("text"),
         TypeError, "bytes-like"),
        ("encoding with a binary mode", lambda fs: fs.open("a.zip/x", "wb", encoding="utf-8"),
         ValueError, "binary mode"),
        ("pickup path traversal", lambda fs: fs.pickup("/etc/passwd", "../a.zip/x").__enter__(),
         ValueError, "'..'"),
        ("write_bytes of a str", lambda fs: fs.write_bytes("a.zip/x", "text"), TypeError, ""),
        ("the same rear_fs entered twice", lambda fs: fs.__enter__(), rear.RearError,
         "this rear_fs is already entered; enter it once"),
        ("an archive named like a rolled-over one", lambda fs: fs.open("a.~1~.zip/x"),
         rear.PathError, "archive path 'a.~1~.zip/x' names 'a.~1~.zip', which is how rear "
         "names a rolled-over archive (a.zip rolls over to a.~1~.zip, ...); write to 'a.zip' "
         "or choose another name"),
        ("newline='x'", lambda fs: fs.open("a.zip/x", "w", newline="x"), ValueError,
         "newline must be one of None, '', '\\n', '\\r', '\\r\\n', not 'x' (as for open())"),
        ("an unknown encoding", lambda fs: fs.open("a.zip/x", "w", encoding="nope"),
         LookupError, "unknown encoding: nope"),
    ]
    # A pickup removes its source: rear's own files are refused before the block.
    cases += [("pickup of %s" % text, lambda fs, where=where: fs.pickup(
        where(fs.base), "p.zip/x").__enter__(), rear.RearError, message)
        for text, where, message in [
        ("the base", lambda base: base,
         "is the base directory; archiving it would remove rear's own files (temp zips "
         "holding acknowledged files, or archives): pick up outputs from outside the base, "
         "or from a directory of its own below it"),
        ("the base's parent", os.path.dirname, "is a directory that holds the base"),
        ("the inbox", lambda base: os.path.join(base, "inbox"), "inbox is inside the inbox "
         "of the base"),
    ]]
    # Settings refused when given, not when they first bite.
    cases += [("rear_fs(%s)" % text, lambda fs, kwargs=kwargs: rear.rear_fs(fs.base, **kwargs),
               ValueError, message) for text, kwargs, message in [
        ("compresslevel=99", {"compresslevel": 99},
         "compresslevel 99 does not suit deflated compression"),
        ("rotation_span=inf", {"rotation_span": float("inf")},
         "at most 604800 seconds (a week), not inf"),
        ("rotation_span=1e9", {"rotation_span": 1e9}, "at most 604800 seconds (a week)"),
        ("rotation_span=0", {"rotation_span": 0}, "more than 0"),
        ("sync='always'", {"sync": "always"}, "sync must be 'rotation' or 'file'"),
    ]]
    cases += [("scavenge(max_size=%r)" % size, lambda fs, size=size: rear.scavenge(
        fs.base, max_size=size), ValueError, message) for size, message in [
        (0, "max_size must be a positive number of bytes or a size like '50G', not 0"),
        (-1, "not -1"), ("10 gallons", "max_size '10 gallons' is not a size like 50G")]]
    cases += [("scavenge(max_entries=0)", lambda fs: rear.scavenge(fs.base, max_entries=0),
               ValueError, "max_entries must be a positive number of entries, not 0")]
    return cases


@pytest.mark.parametrize("description,call,expected,fragment", _api_cases(),
                         ids=[case[0] for case in _api_cases()])
def test_hostile_api_input_gets_a_clear_error(tally, tmp_path, description, call, expected, fragment):
    base = str(tmp_path / "base")
    with rear.rear_fs(base) as fs:
        with pytest.raises(expected) as info:
            call(fs)
        fs.write_bytes("a.zip/good", b"good")    # the fs still works afterwards
    assert fragment in str(info.value)
    rear.scavenge(base)
    assert archives_of(base) == {"a.zip": {"good": b"good"}}
    tally.torture["hostile inputs"] += 1


def _sealed_sidecar(zip_path, **changes):
    manifest = dict(rear._Sidecar(time.time() - 3600).to_json(), state="sealed", **changes)
    with open(zip_path[:-4] + ".json", "w") as handle:
        handle.write(json.dumps(manifest))


def _temp_zip_with_entries(base, names, sealed=True):
    return write_raw_temp_zip(base, [(name, b"data") for name in names], sealed=sealed)


def _bytes_temp_zip(base, data):
    path = os.path.join(base, "inbox", "hostile.zip")
    with open(path, "wb") as handle:
        handle.write(data)
    _sealed_sidecar(path)
    return path


def _damaged_crc_temp_zip(base):
    path = write_raw_temp_zip(base, [("a.zip/crc", b"q" * 500)], sealed=True)
    data = bytearray(open(path, "rb").read())
    data[data.index(b"a.zip/crc") + len("a.zip/crc") + 3] ^= 0x55
    open(path, "wb").write(bytes(data))
    return path


def _unknown_method_temp_zip(base):
    path = write_raw_temp_zip(base, [("a.zip/m", b"x")], sealed=True)
    data = bytearray(open(path, "rb").read())
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        position = data.index(signature)
        data[position + offset:position + offset + 2] = (99).to_bytes(2, "little")
    open(path, "wb").write(bytes(data))
    return path


def _flagged_temp_zip(base, flag):
    path = write_raw_temp_zip(base, [("a.zip/f", b"f" * 50)], sealed=True)
    data = bytearray(open(path, "rb").read())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        position = data.index(signature) + offset
        data[position] |= flag
    open(path, "wb").write(bytes(data))
    return path


def _symlinked_archive(base, tmp_path):
    target = tmp_path / "target.zip"
    with zipfile.ZipFile(str(target), "w") as handle:
        handle.writestr("x", b"x")
    os.symlink(str(target), os.path.join(base, "a.zip"))
    return os.path.join(base, "a.zip")


def _symlinked_subdir(base, tmp_path):
    (tmp_path / "outside").mkdir()
    os.symlink(str(tmp_path / "outside"), os.path.join(base, "sub"))
    _temp_zip_with_entries(base, ["sub/a.zip/x"])
    return os.path.join(base, "sub")


def _symlink_in_inbox(base, tmp_path):
    target = tmp_path / "outside.zip"
    with zipfile.ZipFile(str(target), "w") as handle:
        handle.writestr("a.zip/stolen", b"x")
    path = os.path.join(base, "inbox", "link.zip")
    os.symlink(str(target), path)
    return path


def _feeding_a_zip(base, make_obstacle):
    """Put something hostile where a.zip should be, and a temp zip feeding it."""
    _temp_zip_with_entries(base, ["a.zip/x"])
    path = os.path.join(base, "a.zip")
    make_obstacle(path)
    return path


def _zip_bytes(files):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as handle:
        for name, data in files.items():
            handle.writestr(name, data)
    return buffer.getvalue()


def _raw_temp_zip(base, data):
    """A file named like a temp zip, with no sidecar, its writer long gone."""
    path = os.path.join(base, "inbox", "stray.zip")
    with open(path, "wb") as handle:
        handle.write(data)
    an_hour_ago = time.time() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))
    return path


def _entries_then(data):
    """Two complete entries as a writer appends them, then ``data``."""
    zipped = _zip_bytes({"a.zip/one": b"1" * 100, "a.zip/two": b"2" * 100})
    return zipped[:zipped.index(b"PK\x01\x02")] + data


def _journal(base, named_for, **header):
    """A journal whose header passes its CRC, for the archive ``named_for``."""
    fields = {"dest": named_for, "archive": os.path.join(base, named_for), "created": False,
              "old_size": 0, "old_cd_offset": 0, "temps": [], "tail_size": 0}
    fields.update(header)
    fields = {key: value for key, value in fields.items() if value is not None}
    head = json.dumps(fields).encode()
    path = rear._ArchivePaths(base, named_for).journal
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(rear._JOURNAL_HEAD.pack(rear._JOURNAL_MAGIC, len(head)) + head
                     + rear._JOURNAL_HEAD_CRC.pack(zlib.crc32(head)))
    return path


def _with(function, *args, **kwargs):
    return lambda base, tmp_path: function(base, *args, **kwargs)


FS_CASES = [
    ("symlink in inbox pointing outside", _symlink_in_inbox, "symlink"),
    ("directory named like a temp zip", lambda base, tmp: os.mkdir(os.path.join(
        base, "inbox", "dir.zip")) or os.path.join(base, "inbox", "dir.zip"), "not a regular file"),
    ("directory where the archive should be", lambda base, tmp: _feeding_a_zip(
        base, os.mkdir), "is a directory"),
    ("non-zip file where the archive should be", lambda base, tmp: _feeding_a_zip(
        base, lambda path: open(path, "wb").write(b"user data")), "not a zip archive"),
    ("archive is a symlink", lambda base, tmp: _feeding_a_zip(
        base, lambda path: _symlinked_archive(base, tmp)), "symlink"),
    ("archive directory is a symlink out of the base", _symlinked_subdir, "outside the base"),
    ("garbage temp zip", _with(_bytes_temp_zip, os.urandom(3000)), "not a zip archive"),
    ("zero-length sealed temp zip", _with(_bytes_temp_zip, b""), "too short"),
    ("truncated sealed temp zip", lambda base, tmp: _bytes_temp_zip(
        base, _zip_bytes({"a.zip/t": b"t" * 999})[:-30]), "not a zip archive"),
    ("central directory names no local header", lambda base, tmp: _bytes_temp_zip(
        base, _zip_bytes({"a.zip/t": b"t"}).replace(b"PK\x03\x04", b"PK\x03\x05")),
     "no matching local header"),
    ("garbage sidecar", lambda base, tmp: open(_temp_zip_with_entries(
        base, ["a.zip/s"])[:-4] + ".json", "w").write("{oops") and None, "not valid JSON"),
    ("sidecar that is not a manifest", lambda base, tmp: open(_temp_zip_with_entries(
        base, ["a.zip/s"])[:-4] + ".json", "w").write("[1, 2]") and None, "not a rear manifest"),
    ("sidecar from a newer rear", lambda base, tmp: _sealed_sidecar(
        _temp_zip_with_entries(base, ["a.zip/s"]), version=99), "newer"),
    ("entry climbing out of the base", _with(_temp_zip_with_entries, ["../evil.zip/x"]),
     "not a valid rear path"),
    ("entry with an absolute path", _with(_temp_zip_with_entries, ["/abs.zip/x"]),
     "not a valid rear path"),
    ("entry without an archive", _with(_temp_zip_with_entries, ["noarchive/x"]),
     "not a valid rear path"),
    ("entry into inbox/", _with(_temp_zip_with_entries, ["inbox/x.zip/y"]),
     "not a valid rear path"),
    ("entry with a backslash", _with(_temp_zip_with_entries, ["a.zip\\..\\x"]),
     "not a valid rear path"),
    ("entry whose CRC fails", _with(_damaged_crc_temp_zip), "fails its integrity check"),
    ("entry with an unknown compression method", _with(_unknown_method_temp_zip),
     "compression method 99"),
    ("entry marked encrypted", _with(_flagged_temp_zip, 0x0001), "flags 0x0001"),
    ("entry marked as patched data", _with(_flagged_temp_zip, 0x0020), "flags 0x0020"),
    ("directory entry holding data", lambda base, tmp: write_raw_temp_zip(
        base, [("a.zip/dir/", b"not empty")], sealed=True), "named as a directory"),
    # rear deletes only what it wrote: a salvage must find what a killed writer leaves
    ("random bytes named like a temp zip, no sidecar", _with(_raw_temp_zip, os.urandom(5000)),
     "does not start with a zip entry: it is not a temp zip rear wrote, or it is damaged; "
     "it is left in place"),
    ("a user's text file named like a temp zip", _with(_raw_temp_zip, b"my notes\n" * 100),
     "does not start with a zip entry"),
    ("entries followed by bytes no writer leaves", _with(_raw_temp_zip, _entries_then(
        b"\x7fELF" + os.urandom(500))), "are neither a torn entry nor a central directory"),
    ("a user's complete zip, no sidecar", _with(_raw_temp_zip, _zip_bytes(
        {"data/results.csv": b"1,2\n"})), "entry 'data/results.csv' is not a valid rear path"),
    # journals are on-disk input too: a header that passes its CRC is not enough
    ("journal header without dest", _with(_journal, "j.zip", dest=None),
     "is not a complete rear journal"),
    ("journal naming another archive than its own", _with(_journal, "j.zip", dest="k.zip"),
     "is not a complete rear journal"),
    ("journal with inconsistent sizes", _with(_journal, "j.zip", old_size=10, tail_size=99),
     "is not a complete rear journal"),
    ("journal whose temps are not a list of temp zips", _with(_journal, "j.zip", temps=[7]),
     "is not a complete rear journal"),
]


@pytest.mark.parametrize("description,make,fragment", FS_CASES, ids=[c[0] for c in FS_CASES])
def test_hostile_files_are_reported_left_in_place_and_the_rest_goes_on(tally, 
        tmp_path, description, make, fragment):
    base = str(tmp_path / "base")
    os.makedirs(os.path.join(base, "inbox"))
    hostile = make(base, tmp_path)
    before = {}
    for directory, _subdirs, names in os.walk(base):
        for name in names:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                before[path] = open(path, "rb").read()
    with rear.rear_fs(base) as fs:
        fs.write_bytes("ok.zip/fine", b"fine")
    stats = rear.scavenge(base, flush=True)
    reasons = " | ".join(reason for _path, reason in stats.errors)
    assert fragment in reasons, reasons
    for path, data in before.items():
        if path.endswith(".json") and not os.path.exists(path[:-5] + ".zip"):
            continue
        assert open(path, "rb").read() == data, "%s was changed" % path
    if hostile:
        assert os.path.lexists(hostile), "%s was not left in place" % hostile
    assert read_archive(os.path.join(base, "ok.zip")) == {"fine": b"fine"}
    assert not os.path.exists(os.path.join(os.path.dirname(base), "evil.zip"))
    assert os.listdir(str(tmp_path / "outside")) == [] if (tmp_path / "outside").exists() else True
    tally.torture["hostile inputs"] += 1


# ---------------------------------------------------------------- 7. fuzzing the zip parsers


def _seed_zips():
    """Valid zips to mutate: what rear's writer and scavenger and zipfile make."""
    seeds = []
    with tempfile.TemporaryDirectory() as base:
        with rear.rear_fs(base, rotation_span=3600) as fs:
            for n in range(4):
                fs.write_bytes("a.zip/f%d" % n, torture_content("seed%d" % n)[:3000])
            fs.write_bytes("b.zip/empty", b"")
        (temp,) = inbox_temp_zips(base)
        seeds.append(open(os.path.join(base, "inbox", temp), "rb").read())
        rear.scavenge(base)
        seeds.append(open(os.path.join(base, "a.zip"), "rb").read())
        # extra fields (UT, ASi Unix), directory and symlink entries
        make_faithful_tree(os.path.join(base, "tree"))
        with rear.rear_fs(base, rotation_span=3600) as fs:
            with fs.pickup(os.path.join(base, "tree"), "t.zip/tree"):
                pass
        (temp,) = inbox_temp_zips(base)
        seeds.append(open(os.path.join(base, "inbox", temp), "rb").read())
        rear.scavenge(base)
        seeds.append(open(os.path.join(base, "t.zip"), "rb").read())
    for method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", method) as handle:
            handle.writestr("a.zip/z", b"zip" * 300)
            handle.writestr("a.zip/w", torture_content("w")[:2000])
        seeds.append(buffer.getvalue())
    return seeds


SEEDS = _seed_zips() if given is not None else []
SEED_CONTENTS = set()
for _seed in SEEDS:
    with zipfile.ZipFile(io.BytesIO(_seed)) as _handle:
        SEED_CONTENTS.update(_handle.read(_name) for _name in _handle.namelist())


def _mutated_zips():
    mutation = st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(1, 255)),
        st.tuples(st.just("cut"), st.integers(0, 1 << 20)),
        st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=40)),
    )

    def mutate(args):
        seed_index, mutations = args
        data = bytearray(SEEDS[seed_index % len(SEEDS)])
        for mutation_args in mutations:
            if not data:
                break
            position = mutation_args[1] % len(data)
            if mutation_args[0] == "flip":
                data[position] ^= mutation_args[2]
            elif mutation_args[0] == "cut":
                del data[position:]
            else:
                data[position:position] = mutation_args[2]
        return bytes(data)

    mutated = st.tuples(st.integers(0, 100), st.lists(mutation, min_size=1, max_size=6)).map(mutate)
    return st.one_of(mutated, st.binary(max_size=600))


def _fuzz_settings(long_mode):
    return settings(max_examples=3000 if long_mode else 150, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


def _independent_crc(data, entry):
    payload = data[entry.data_offset:entry.data_offset + entry.compressed_size]
    decompressor = zipfile._get_decompressor(entry.method)
    raw = payload if decompressor is None else decompressor.decompress(payload)
    return len(raw) == entry.file_size and zlib.crc32(raw) == entry.crc


@pytest.mark.skipif(given is None, reason="hypothesis is not installed (pip install hypothesis)")
def test_fuzzed_zips_never_crash_the_parsers_and_salvage_only_intact_entries(tally, tmp_path, long_mode):
    path = str(tmp_path / "fuzz.zip")

    @_fuzz_settings(long_mode)
    @given(_mutated_zips())
    def check(data):
        with open(path, "wb") as handle:
            handle.write(data)
        fd = os.open(path, os.O_RDONLY)
        try:
            try:
                entries, _rest = rear._salvage_entries(fd, len(data), path)
            except rear.TempZipError:    # not what a killed writer leaves: reported
                entries = []
            for entry in entries:
                assert _independent_crc(data, entry), "salvage returned a damaged entry"
            try:
                rear._read_central_entries(fd, len(data), path, rear.TempZipError)
            except rear.TempZipError:
                pass
            try:
                directory = rear._read_end_records(fd, len(data), path)
                list(rear._iter_central_entries(rear._ChunkReader(fd, path), directory, path))
            except rear.ArchiveError:
                pass
        finally:
            os.close(fd)
        tally.torture["fuzzed zips"] += 1

    check()


@pytest.mark.skipif(given is None, reason="hypothesis is not installed (pip install hypothesis)")
@pytest.mark.parametrize("sealed", [True, False], ids=["sealed", "unsealed"])
def test_fuzzed_temp_zips_never_put_garbage_into_an_archive(tally, tmp_path, long_mode, sealed):
    counter = iter(range(10 ** 9))

    @_fuzz_settings(long_mode)
    @given(_mutated_zips())
    def check(data):
        base = str(tmp_path / ("base-%d" % next(counter)))
        os.makedirs(os.path.join(base, "inbox"))
        path = os.path.join(base, "inbox", "fuzz.zip")
        with open(path, "wb") as handle:
            handle.write(data)
        if sealed:
            _sealed_sidecar(path)
        stats = rear.scavenge(base, flush=True)   # never raises
        for archive, members in archives_of(base).items():
            for member, content in members.items():
                assert content in SEED_CONTENTS, "garbage ingested as %s/%s" % (archive, member)
        if stats.errors:
            assert os.path.exists(path), "a damaged temp zip must be left in place"
        shutil.rmtree(base)
        tally.torture["fuzzed zips"] += 1

    check()


def test_a_failure_to_remove_a_leftover_is_reported_not_raised(tally, tmp_path, monkeypatch):
    base = str(tmp_path / "base")
    os.makedirs(os.path.join(base, "inbox"))
    open(os.path.join(base, "inbox", "orphan.json"), "w").close()
    monkeypatch.setattr(rear, "os", FaultyOS(base, fail_at=1, fail_errno=errno.EACCES))
    stats = rear.scavenge(base)         # its first change is removing the orphan
    assert "could not remove this leftover" in stats.errors[0][1]
    tally.torture["injected errors"] += 1


def test_a_failure_to_delete_a_fully_archived_temp_zip_is_reported_not_raised(tally, 
        tmp_path, monkeypatch):
    base = str(tmp_path / "base")
    with rear.rear_fs(base) as fs:
        fs.write_bytes("a.zip/x", b"x")
    (name,) = inbox_temp_zips(base)
    sidecar = os.path.join(base, "inbox", name[:-4] + ".json")
    with open(sidecar) as handle:
        manifest = json.load(handle)
    manifest["done"] = ["a.zip"]     # as after a crash just before its deletion
    with open(sidecar, "w") as handle:
        json.dump(manifest, handle)
    monkeypatch.setattr(rear, "os", FaultyOS(base, fail_at=1, fail_errno=errno.EIO))
    stats = rear.scavenge(base)      # nothing to commit: its first change is the delete
    assert "could not delete it" in stats.errors[0][1]
    monkeypatch.undo()
    assert rear.scavenge(base).errors == [] and inbox_temp_zips(base) == []
    tally.torture["injected errors"] += 1
