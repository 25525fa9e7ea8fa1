"""Specification of rear's behaviour, as pytest tests.

Every archive a test produces is also checked by an independent reader
(Info-ZIP ``unzip -t``) besides Python's zipfile.  Crashes are real: worker
and scavenger processes are killed with SIGKILL.
"""

import ast
import asyncio
import errno
import gc
import glob
import hashlib
import io
import json
import logging
import multiprocessing
import os
import random
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import sys
import threading
import time
import tracemalloc
import warnings
import zipfile
import zlib

import pytest

import rear
from tests.support import (BAD_PATHS, CHILD_ENV, HERE, MTIME_1970, MTIME_2050, MTIME_2200,
                           MTIME_ODD, SALVAGED_PICKUP, SCAVENGER_LOOP_SCRIPT,
                           STUCK_SCAVENGER_SCRIPT, Acknowledged, archives_of, as_sets,
                           check_archives, ctrl_c_as_at_a_terminal, fill, fill_temp_zips,
                           inbox_temp_zips, make_faithful_tree, read_archive, run_child,
                           run_cli, run_in_threads, unzip_test, write_raw_temp_zip)


# ---------------------------------------------------------------- helpers


def all_entries(base):
    """{"dest/member": bytes} across every archive, asserting each occurs once."""
    entries = {}
    for archive, members in archives_of(base).items():
        for member, data in members.items():
            key = archive + "/" + member
            assert key not in entries
            entries[key] = data
    return entries


def sidecars(base):
    """Every sidecar in inbox/ and its hosts' directories (a sharded inbox)."""
    inbox = os.path.join(base, "inbox")
    found = []
    for directory in [inbox] + sorted(glob.glob(os.path.join(inbox, "hosts", "*"))):
        found += [os.path.join(directory, name) for name in sorted(os.listdir(directory))
                  if name.endswith(".json")]
    return [json.load(open(path)) for path in found]


def assert_exactly_once(base, expected):
    """Every expected "dest/member" is archived once, byte-identical, nothing
    else; members of a rolled-over name.~N~.zip count as members of name.zip."""
    check_archives(base, as_sets(expected), as_sets(expected))


@pytest.fixture(autouse=True)
def no_leftover_threads():
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        extra = [thread for thread in set(threading.enumerate()) - before
                 if thread.name.startswith("rear-") and thread.is_alive()]
        if not extra:
            return
        time.sleep(0.05)
    pytest.fail("rear threads left running: %s" % extra)


# ---------------------------------------------------------------- writing API


def test_text_file_round_trips(base):
    with rear.rear_fs(base):
        with rear.rear_open("ar.zip/dir/hello.txt", "w") as handle:
            handle.write("héllo\n")
    rear.scavenge(base)
    assert archives_of(base) == {"ar.zip": {"dir/hello.txt": "héllo\n".encode("utf-8")}}


def test_binary_file_round_trips(base):
    data = os.urandom(300000)
    with rear.rear_fs(base):
        with rear.rear_open("ar.zip/blob.bin", "wb") as handle:
            handle.write(data)
    rear.scavenge(base)
    assert archives_of(base)["ar.zip"]["blob.bin"] == data


def test_read_write_modes_read_back_what_was_written(base):
    with rear.rear_fs(base):
        with rear.rear_open("ar.zip/t.txt", "w+") as handle:
            handle.write("abc")
            handle.seek(0)
            assert handle.read() == "abc"
        with rear.rear_open("ar.zip/b.bin", "w+b") as handle:
            handle.write(b"xyz")
            handle.seek(1)
            assert handle.read() == b"yz"
    rear.scavenge(base)
    assert archives_of(base)["ar.zip"] == {"t.txt": b"abc", "b.bin": b"xyz"}


def test_write_only_modes_refuse_reading(base):
    with rear.rear_fs(base):
        for mode in ("w", "wb"):
            with rear.rear_open("ar.zip/%s" % mode, mode) as handle:
                with pytest.raises(io.UnsupportedOperation):
                    handle.read()


def test_text_mode_honours_encoding_and_newline(base):
    with rear.rear_fs(base):
        with rear.rear_open("ar.zip/latin.txt", "w", encoding="latin-1", newline="\r\n") as f:
            f.write("é\n")
    rear.scavenge(base)
    assert archives_of(base)["ar.zip"]["latin.txt"] == b"\xe9\r\n"


def test_writing_str_to_a_binary_handle_raises_type_error(base):
    with rear.rear_fs(base):
        with pytest.raises(TypeError):
            with rear.rear_open("ar.zip/x.bin", "wb") as handle:
                handle.write("text")
    rear.scavenge(base)
    assert archives_of(base) == {}


@pytest.mark.parametrize("mode", ["r", "a", "rb", "r+", "x", "ab", "w+x"])
def test_unsupported_modes_are_refused_with_the_supported_list(base, mode):
    with rear.rear_fs(base):
        with pytest.raises(ValueError, match="'w', 'w\\+', 'wb' or 'w\\+b'"):
            rear.rear_open("ar.zip/x", mode)


def test_binary_mode_refuses_an_encoding(base):
    with rear.rear_fs(base):
        with pytest.raises(ValueError, match="binary mode"):
            rear.rear_open("ar.zip/x", "wb", encoding="utf-8")


def test_rear_open_without_rear_fs_raises_runtime_error_saying_what_to_do():
    with pytest.raises(RuntimeError, match="rear_fs"):
        rear.rear_open("ar.zip/x.txt", "w")
    with pytest.raises(RuntimeError, match="rear_fs"):
        rear.rear_pickup("/tmp/x", "ar.zip/x")


def test_innermost_rear_fs_receives_the_files(tmp_path):
    outer, inner = str(tmp_path / "outer"), str(tmp_path / "inner")
    with rear.rear_fs(outer):
        with rear.rear_fs(inner):
            with rear.rear_open("ar.zip/inner.txt") as handle:
                handle.write("i")
        with rear.rear_open("ar.zip/outer.txt") as handle:
            handle.write("o")
    rear.scavenge(outer)
    rear.scavenge(inner)
    assert archives_of(outer) == {"ar.zip": {"outer.txt": b"o"}}
    assert archives_of(inner) == {"ar.zip": {"inner.txt": b"i"}}


def test_threads_each_inside_their_own_rear_fs_write_into_their_own_base(tmp_path):
    bases = [str(tmp_path / "a"), str(tmp_path / "b")]
    both_inside = threading.Barrier(2)

    def worker(number):
        with rear.rear_fs(bases[number]):
            both_inside.wait()          # each entered its own before either writes
            for n in range(20):
                with rear.rear_open("t.zip/%d-%d" % (number, n), "wb") as handle:
                    handle.write(b"%d" % number)
            both_inside.wait()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for number, base in enumerate(bases):
        rear.scavenge(base)
        assert archives_of(base) == {"t.zip": {"%d-%d" % (number, n): b"%d" % number
                                               for n in range(20)}}


def test_asyncio_tasks_each_inside_their_own_rear_fs_write_into_their_own_base(tmp_path):
    bases = [str(tmp_path / "a"), str(tmp_path / "b")]

    async def task(number):
        async with rear.rear_fs(bases[number]):
            for n in range(10):
                await asyncio.sleep(0.001)     # the other task runs in between
                with rear.rear_open("t.zip/%d-%d" % (number, n), "wb") as handle:
                    handle.write(b"%d" % number)

    async def both():
        await asyncio.gather(task(0), task(1))

    asyncio.run(both())
    for number, base in enumerate(bases):
        rear.scavenge(base)
        assert archives_of(base) == {"t.zip": {"%d-%d" % (number, n): b"%d" % number
                                               for n in range(10)}}


def test_a_worker_thread_that_entered_no_rear_fs_writes_through_the_process_one(base):
    with rear.rear_fs(base):
        thread = threading.Thread(target=lambda: rear.rear_open("t.zip/w").close())
        thread.start()
        thread.join()
    rear.scavenge(base)
    assert archives_of(base) == {"t.zip": {"w": b""}}


def test_entering_the_same_rear_fs_twice_raises_at_once_and_leaves_it_open(base):
    with rear.rear_fs(base) as fs:
        with pytest.raises(rear.RearError, match="already entered"):
            with fs:
                pass
        fs.write_bytes("t.zip/after", b"still open")
        with rear.rear_open("t.zip/current") as handle:
            handle.write("still current")
    rear.scavenge(base)
    assert archives_of(base) == {"t.zip": {"after": b"still open",
                                           "current": b"still current"}}


@pytest.mark.parametrize("where", ["base", "inbox"])
def test_a_file_where_the_base_belongs_is_refused_when_the_rear_fs_is_entered(tmp_path, where):
    base = tmp_path / "base"
    if where == "inbox":
        base.mkdir()
    obstacle = base / "inbox" if where == "inbox" else base
    obstacle.write_text("a user's file")
    with pytest.raises(rear.RearError, match="%s is not a directory; rear needs a directory "
                       "as its base" % re.escape(str(obstacle))):
        with rear.rear_fs(str(base)):
            pass
    assert obstacle.read_text() == "a user's file"


def calls_naming(monkeypatch, base, names=("stat", "lstat", "access")):
    """[(call, path)] of the os calls ``names`` that name a path under
    ``base`` from now on: metadata calls on the filesystem rear spares."""
    seen = []
    for name in names:
        def counted(path, *args, real=getattr(os, name), name=name, **kwargs):
            if str(path).startswith(base):
                seen.append((name, str(path)))
            return real(path, *args, **kwargs)
        monkeypatch.setattr(os, name, counted)
    return seen


@pytest.mark.parametrize("sharded", [False, True])
def test_a_writer_entering_an_existing_base_asks_only_about_its_inbox(base, monkeypatch,
                                                                      sharded):
    inbox = os.path.join(base, "inbox")
    if sharded:
        inbox = os.path.join(inbox, "hosts", rear._short_hostname())
    os.makedirs(inbox, exist_ok=True)
    seen = calls_naming(monkeypatch, base)
    with rear.rear_fs(base, shard_inbox=sharded):
        assert seen == [("stat", inbox), ("access", inbox)]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root gives files to a directory's owner")
def test_root_asks_for_the_owner_of_inbox_once_per_process_not_once_per_file(
        base, monkeypatch):
    os.makedirs(os.path.join(base, "inbox"), exist_ok=True)
    monkeypatch.setattr(rear, "_directory_owners", {})
    seen = calls_naming(monkeypatch, base)
    with rear.rear_fs(base, shard_inbox=False) as fs:
        for rotation in range(3):
            fs.write_bytes("ar.zip/f%d" % rotation, b"x")
            fs.rotate()
    inbox = os.path.join(base, "inbox")
    assert seen == [("stat", inbox), ("access", inbox)]
    rear.scavenge(base)
    assert archives_of(base) == {"ar.zip": {"f0": b"x", "f1": b"x", "f2": b"x"}}


def test_rear_puts_nothing_into_builtins():
    import builtins

    assert not [name for name in vars(builtins) if "rear" in name.lower()]


def test_write_bytes_and_write_text_archive_in_one_call(base):
    with rear.rear_fs(base) as fs:
        fs.write_bytes("ar.zip/b", b"\x00\x01")
        fs.write_text("ar.zip/t", "ü", encoding="utf-16")
    rear.scavenge(base)
    assert archives_of(base)["ar.zip"] == {"b": b"\x00\x01", "t": "ü".encode("utf-16")}


def test_file_whose_block_raised_is_discarded_when_success_only(base):
    with rear.rear_fs(base):
        with pytest.raises(KeyError):
            with rear.rear_open("ar.zip/bad.txt") as handle:
                handle.write("partial")
                raise KeyError("boom")
        with rear.rear_open("ar.zip/good.txt") as handle:
            handle.write("ok")
    rear.scavenge(base)
    assert archives_of(base)["ar.zip"] == {"good.txt": b"ok"}


def test_file_whose_block_raised_is_kept_without_success_only(base):
    with rear.rear_fs(base, success_only=False):
        with pytest.raises(KeyError):
            with rear.rear_open("ar.zip/bad.txt") as handle:
                handle.write("partial")
                raise KeyError("boom")
    rear.scavenge(base)
    assert archives_of(base)["ar.zip"] == {"bad.txt": b"partial"}


@pytest.mark.parametrize("compression", sorted(rear._COMPRESSION))
def test_every_compression_round_trips_through_scavenging(base, compression):
    compressible = b"line of a log file\n" * 5000
    noise = os.urandom(5000)
    with rear.rear_fs(base, compression=compression) as fs:
        fs.write_bytes("ar.zip/log", compressible)
        fs.write_bytes("ar.zip/noise", noise)
        fs.write_bytes("ar.zip/empty", b"")
    rear.scavenge(base)
    assert archives_of(base)["ar.zip"] == {"log": compressible, "noise": noise, "empty": b""}
    with zipfile.ZipFile(os.path.join(base, "ar.zip")) as handle:
        expected = zipfile.ZIP_STORED if compression == "stored" else rear._COMPRESSION[compression]
        assert handle.getinfo("log").compress_type == expected
        # incompressible data is stored rather than grown
        assert handle.getinfo("noise").compress_type == zipfile.ZIP_STORED


def test_unknown_compression_is_refused_with_the_choices(base):
    with pytest.raises(ValueError, match="deflated"):
        rear.rear_fs(base, compression="zip")


def test_large_output_spills_to_disk_and_round_trips(base, monkeypatch):
    monkeypatch.setattr(rear, "_SPOOL_MEMORY_LIMIT", 64 * 1024)
    rng = random.Random(1)
    chunks = [bytes(rng.getrandbits(8) for _ in range(1000)) * 50 for _ in range(8)]
    with rear.rear_fs(base):
        with rear.rear_open("ar.zip/big.bin", "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            assert handle.raw._file is not None, "spool did not move to a temp file"
    rear.scavenge(base)
    assert archives_of(base)["ar.zip"]["big.bin"] == b"".join(chunks)


def test_memory_does_not_grow_with_output_size(base, monkeypatch):
    monkeypatch.setattr(rear, "_SPOOL_MEMORY_LIMIT", 1024 * 1024)
    chunk = os.urandom(1024 * 1024)
    tracemalloc.start()
    try:
        with rear.rear_fs(base, compression="deflated"):
            with rear.rear_open("ar.zip/big.bin", "wb") as handle:
                for _ in range(48):
                    handle.write(chunk)
        rear.scavenge(base)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024, "peak %d bytes for a 48 MiB file" % peak
    with zipfile.ZipFile(os.path.join(base, "ar.zip")) as handle:
        assert handle.getinfo("big.bin").file_size == 48 * 1024 * 1024
    unzip_test(os.path.join(base, "ar.zip"))


def test_a_handle_never_closed_is_discarded_not_archived(base, caplog):
    with rear.rear_fs(base):
        handle = rear.rear_open("ar.zip/abandoned.txt")
        handle.write("half")
        with caplog.at_level(logging.WARNING, logger="rear"):
            del handle
    assert "never closed" in caplog.text
    assert rear.scavenge(base).files_moved == 0


def test_a_handle_never_closed_warns_as_a_plain_file_does(base):
    with rear.rear_fs(base):
        handle = rear.rear_open("ar.zip/abandoned.txt")
        handle.write("half")
        with pytest.warns(ResourceWarning, match="rear_open handle of 'ar.zip/abandoned.txt' "
                          "was never closed and is discarded, not archived"):
            del handle
            gc.collect()


@pytest.mark.parametrize("option,error,message", [
    ({"newline": "bogus"}, ValueError, "newline must be one of None, '', "),
    ({"encoding": "nope"}, LookupError, "unknown encoding: nope"),
])
def test_a_bad_newline_or_encoding_is_refused_cleanly(base, option, error, message):
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # "Exception ignored in __del__" too
        with rear.rear_fs(base):
            with pytest.raises(error, match=re.escape(message)):
                rear.rear_open("ar.zip/x", "w", **option)
            gc.collect()
    assert rear.scavenge(base).files_moved == 0


def test_rear_fs_works_as_async_context_manager(base):
    async def worker():
        async with rear.rear_fs(base):
            with rear.rear_open("ar.zip/async.txt") as handle:
                handle.write("a")

    asyncio.run(worker())
    rear.scavenge(base)
    assert archives_of(base)["ar.zip"] == {"async.txt": b"a"}


def test_rear_fs_takes_base_and_rotation_from_the_environment(base, monkeypatch):
    monkeypatch.setenv("REAR_BASE", base)
    monkeypatch.setenv("REAR_ROTATION", "7.5")
    fs = rear.rear_fs()
    assert (fs.base, fs.rotation_span) == (base, 7.5)
    fs.close()


def test_rear_fs_without_base_or_environment_says_what_is_missing(monkeypatch):
    monkeypatch.delenv("REAR_BASE", raising=False)
    with pytest.raises(ValueError, match="REAR_BASE"):
        rear.rear_fs()


def test_closed_rear_fs_refuses_writes(base):
    fs = rear.rear_fs(base)
    fs.close()
    with pytest.raises(rear.RearError, match="closed"):
        fs.write_bytes("ar.zip/x", b"")


# ---------------------------------------------------------------- paths


def test_the_scavengers_cached_split_agrees_with_split_path_on_every_name():
    # The scavenger reuses what it learnt about a directory; names sharing
    # one, valid and not, must come out exactly as split_path has them.
    directories = ["ar.zip", "ar.zip/x", "sub/ar.zip/d/e", "a/b.zip", "a.zip/b.zip",
                   "inbox/ar.zip", "nozip", "sub/..", ".zip/x"]
    lasts = ["f", "f.zip", "", ".", "..", "x\x00y", "x\\y", "\u00e9t\u00e9", "g" * 65530]
    names = [bad for bad, _message in BAD_PATHS if isinstance(bad, str)]
    names += [d + "/" + last for d in directories for last in lasts] * 2
    known = {}
    for name in names:
        try:
            expected = rear.split_path(name)
        except rear.PathError as err:
            with pytest.raises(rear.PathError, match=re.escape(str(err))):
                rear._split_known(name, known)
        else:
            assert rear._split_known(name, known) == expected, name
    assert known, "nothing was ever reused"


@pytest.mark.parametrize("path,message", BAD_PATHS)
def test_bad_archive_paths_are_refused_naming_the_problem(base, path, message):
    with pytest.raises(ValueError, match=None) as info:
        rear.split_path(path)
    assert message in str(info.value)
    with rear.rear_fs(base) as fs:
        with pytest.raises(ValueError):
            fs.open(path)
        with pytest.raises(ValueError):
            fs.write_bytes(path, b"")
    assert not os.path.exists(os.path.join(base, "inbox")) or not inbox_temp_zips(base)


@pytest.mark.parametrize("path,expected", [
    ("ar.zip/x", ("ar.zip", "x")),
    ("sub/dir/ar.zip/a/b/c.txt", ("sub/dir/ar.zip", "a/b/c.txt")),
    ("a.zip/b.zip/c", ("a.zip", "b.zip/c")),
    ("AR.ZIP/x", ("AR.ZIP", "x")),
    ("inbox.zip/x", ("inbox.zip", "x")),
    (b"ar.zip/x", ("ar.zip", "x")),
])
def test_archive_is_the_path_up_to_the_first_zip_component(path, expected):
    assert rear.split_path(path) == expected


def test_nothing_is_written_outside_base_through_a_symlinked_directory(base, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(str(outside), os.path.join(base, "sub"))
    with rear.rear_fs(base) as fs:
        fs.write_bytes("sub/ar.zip/x", b"data")
    stats = rear.scavenge(base)
    assert stats.errors and "outside the base" in stats.errors[0][1]
    assert os.listdir(str(outside)) == []
    assert len(inbox_temp_zips(base)) == 1   # kept for when the link is fixed


# ---------------------------------------------------------------- pickup


def test_pickup_archives_a_file_and_removes_it(base, tmp_path):
    source = tmp_path / "out.dat"
    with rear.rear_fs(base):
        with rear.rear_pickup(str(source), "ar.zip/picked/out.dat"):
            source.write_bytes(b"external program output")
        assert not source.exists()
    rear.scavenge(base)
    assert archives_of(base)["ar.zip"] == {"picked/out.dat": b"external program output"}


def test_pickup_archives_a_directory_tree_and_removes_it(base, tmp_path):
    source = tmp_path / "tree"
    with rear.rear_fs(base) as fs:
        with fs.pickup(source, "ar.zip/run"):
            (source / "a" / "b").mkdir(parents=True)
            (source / "top.txt").write_text("t")
            (source / "a" / "b" / "deep.txt").write_text("d")
        assert not source.exists()
    rear.scavenge(base)
    # every directory is an entry of its own, as 'zip -r' stores them
    assert archives_of(base)["ar.zip"] == {"run/": b"", "run/a/": b"", "run/a/b/": b"",
                                           "run/top.txt": b"t", "run/a/b/deep.txt": b"d"}


def test_pickup_leaves_the_source_when_the_block_raises(base, tmp_path):
    source = tmp_path / "out.dat"
    with rear.rear_fs(base):
        with pytest.raises(RuntimeError):
            with rear.rear_pickup(str(source), "ar.zip/out.dat"):
                source.write_bytes(b"keep me")
                raise RuntimeError("the program failed")
    assert source.read_bytes() == b"keep me"
    assert rear.scavenge(base).files_moved == 0


def test_pickup_of_a_missing_source_raises_naming_it(base, tmp_path):
    source = tmp_path / "never-created"
    with rear.rear_fs(base):
        with pytest.raises(rear.RearError, match="never-created"):
            with rear.rear_pickup(str(source), "ar.zip/x"):
                pass


PICKUPS_OF_REARS_OWN_FILES = [
    # (source relative to the base's parent, what the refusal says it is)
    ("base", "the base directory"),
    (".", "a directory that holds"),
    ("base/inbox", "inside the inbox of"),
    ("base/inbox/TEMP_ZIP", "inside the inbox of"),
    ("base/done.zip", "an archive of"),
    ("base/sub", "holds %s, an archive of the base"),
]


@pytest.mark.parametrize("source,what", PICKUPS_OF_REARS_OWN_FILES)
def test_pickup_of_the_base_its_inbox_or_its_archives_is_refused_and_loses_nothing(
        base, source, what):
    fill(base, {"done.zip/archived": b"a", "sub/in.zip/archived": b"b"})
    rear.scavenge(base)
    other = rear.rear_fs(base)                    # another writer's temp zip, open
    other.write_bytes("w.zip/theirs", b"t")
    (temp_zip,) = inbox_temp_zips(base)
    source = os.path.join(os.path.dirname(base), source.replace("TEMP_ZIP", temp_zip))
    expected_message = what % os.path.join(base, "sub", "in.zip") if "%s" in what else what
    with rear.rear_fs(base) as fs:
        fs.write_bytes("w.zip/mine", b"m")
        with pytest.raises(rear.RearError, match=re.escape(expected_message)) as refused:
            with fs.pickup(source, "p.zip/x"):
                pass
        assert source in str(refused.value) and "pick up outputs from outside the base" \
            in str(refused.value)
    other.close()
    assert os.path.exists(source)
    assert rear.scavenge(base, flush=True).errors == []
    assert archives_of(base) == {"done.zip": {"archived": b"a"},
                                 "sub/in.zip": {"archived": b"b"},
                                 "w.zip": {"mine": b"m", "theirs": b"t"}}


def test_pickup_of_a_directory_of_its_own_below_the_base_is_fine(base):
    scratch = os.path.join(base, "scratch", "task-1")
    os.makedirs(scratch)
    with open(os.path.join(scratch, "out.txt"), "wb") as handle:
        handle.write(b"o")
    with rear.rear_fs(base) as fs:
        with fs.pickup(scratch, "p.zip/task-1"):
            pass
    rear.scavenge(base)
    assert archives_of(base)["p.zip"] == {"task-1/": b"", "task-1/out.txt": b"o"}
    assert not os.path.exists(scratch)


def test_pickup_streams_a_large_file_with_bounded_memory(base, tmp_path):
    source = tmp_path / "big.bin"
    chunk = os.urandom(1024 * 1024)
    with source.open("wb") as handle:
        for _ in range(40):
            handle.write(chunk)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    tracemalloc.start()
    try:
        with rear.rear_fs(base):
            with rear.rear_pickup(str(source), "ar.zip/big.bin"):
                pass
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 24 * 1024 * 1024
    rear.scavenge(base)
    data = archives_of(base)["ar.zip"]["big.bin"]
    assert hashlib.sha256(data).hexdigest() == digest


# ---------------------------------------------------------------- faithful archives: times, links, directories, modes

TIME_ZONES = ["UTC", "America/New_York", "Asia/Tokyo"]


def assert_tree_restored(root, expected):
    """Every directory, link (as a link, same target) and file (bytes, mode,
    mtime to the second) of ``expected`` is in ``root``, and nothing else."""
    found = set()
    for directory, subdirs, files in os.walk(root):
        for name in subdirs + files:
            found.add(os.path.relpath(os.path.join(directory, name), root))
    assert found == set(expected)
    for relative, spec in expected.items():
        path = os.path.join(root, relative)
        st = os.lstat(path)
        if spec[0] == "dir":
            assert stat.S_ISDIR(st.st_mode), relative
        elif spec[0] == "link":
            assert stat.S_ISLNK(st.st_mode) and os.readlink(path) == spec[1], relative
        else:
            assert stat.S_ISREG(st.st_mode), relative
            assert open(path, "rb").read() == spec[1], relative
            assert stat.S_IMODE(st.st_mode) == spec[2], relative
            assert int(st.st_mtime) == spec[3], (relative, int(st.st_mtime), spec[3])


PICKUP_IN_ZONE = """
    import os, sys, rear
    base, source, path = sys.argv[1:4]
    with rear.rear_fs(base) as fs:
        with fs.pickup(source, path):
            pass
"""


def pickup_in_zone(base, source, path, zone):
    """Pick ``source`` up in a process whose local time zone is ``zone``."""
    child = run_child(PICKUP_IN_ZONE, base, source, path, env=dict(CHILD_ENV, TZ=zone))
    assert child.wait(60) == 0


def picked_up_file(base, tmp_path, mtime, zone, data=b"x"):
    """A file of ``data`` with ``mtime`` picked up as t.zip/f.txt in ``zone``
    and scavenged; the archive's path."""
    source = str(tmp_path / "f.txt")
    with open(source, "wb") as handle:
        handle.write(data)
    os.utime(source, (mtime, mtime))
    pickup_in_zone(base, source, "t.zip/f.txt", zone)
    assert rear.scavenge(base).errors == []
    return os.path.join(base, "t.zip")


def extract(reader, archive, target, zone):
    """Extract ``archive`` into ``target`` with Info-ZIP unzip or bsdtar, in ``zone``."""
    command = {"unzip": ["unzip", "-q", archive, "-d", target],
               "bsdtar": ["bsdtar", "-xf", archive, "-C", target]}[reader]
    if shutil.which(command[0]) is None:
        pytest.skip("%s is not installed" % reader)
    os.makedirs(target)
    result = subprocess.run(command, env=dict(os.environ, TZ=zone), capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("reader", ["unzip", "bsdtar"])
def test_a_picked_up_tree_comes_back_exactly_in_every_time_zone(base, tmp_path, reader):
    source = str(tmp_path / "tree")
    expected = make_faithful_tree(source)
    pickup_in_zone(base, source, "t.zip/tree", "America/New_York")
    assert not os.path.lexists(source)
    assert rear.scavenge(base).errors == []
    unzip_test(os.path.join(base, "t.zip"))
    for zone in TIME_ZONES:
        target = str(tmp_path / ("out-" + zone.replace("/", "-")))
        extract(reader, os.path.join(base, "t.zip"), target, zone)
        assert_tree_restored(os.path.join(target, "tree"), expected)


def test_zipfile_reads_the_exact_utc_time_and_the_writers_local_dos_time(base, tmp_path):
    with zipfile.ZipFile(picked_up_file(base, tmp_path, MTIME_ODD, "Asia/Tokyo")) as handle:
        (info,) = handle.infolist()
    # 4.4.6: local time of the writer (Tokyo, UTC+9), seconds rounded down to even
    assert info.date_time == (2023, 11, 15, 7, 13, 20)
    # the Info-ZIP UT field (0x5455), read here without rear: flags, mtime
    assert info.extra[:4] == b"\x55\x54\x05\x00" and info.extra[4] == 1
    assert int.from_bytes(info.extra[5:9], "little") == MTIME_ODD


def test_a_file_time_is_archived_in_the_second_it_began_never_rounded_up(base, tmp_path):
    source = str(tmp_path / "f.txt")
    open(source, "wb").close()
    last_nanosecond = MTIME_ODD * 10 ** 9 + 999999999       # 22:13:21.999999999 UTC
    os.utime(source, ns=(last_nanosecond, last_nanosecond))
    pickup_in_zone(base, source, "t.zip/f.txt", "UTC")
    assert rear.scavenge(base).errors == []
    with zipfile.ZipFile(os.path.join(base, "t.zip")) as handle:
        (info,) = handle.infolist()
    # :21 as Info-ZIP zip stores it (the float st_mtime made it :22)
    assert int.from_bytes(info.extra[5:9], "little") == MTIME_ODD
    assert info.date_time == (2023, 11, 14, 22, 13, 20)


def test_the_scavengers_raw_copy_keeps_the_time_field_in_local_and_central_headers(
        base, tmp_path):
    archive = picked_up_file(base, tmp_path, MTIME_2050, "UTC", data=b"x" * 100)
    with zipfile.ZipFile(archive) as handle:
        (info,) = handle.infolist()
    data = open(archive, "rb").read()
    name_len, extra_len = struct.unpack_from("<HH", data, 26)      # the local header
    local_extra = data[30 + name_len:30 + name_len + extra_len]
    ut = b"\x55\x54\x05\x00\x01" + struct.pack("<L", MTIME_2050)
    assert info.extra == ut and local_extra.startswith(ut)
    # then only the writer's provenance, which the central record leaves out
    assert local_extra[len(ut):len(ut) + 2] == struct.pack("<H", rear._PROVENANCE_ID)
    assert len(local_extra) == len(ut) + 4 + struct.unpack_from("<H", local_extra, len(ut) + 2)[0]


def test_entries_of_more_distinct_times_than_the_scavenger_memoizes_each_keep_their_own(
        base, tmp_path, monkeypatch):
    monkeypatch.setattr(rear, "_EXTRA_MEMO_MAX", 3)
    tree = tmp_path / "tree"
    tree.mkdir()
    times = {"f%d.txt" % number: MTIME_ODD + 7 * number for number in range(10)}
    for name, mtime in times.items():
        (tree / name).write_bytes(name.encode())
        os.utime(tree / name, (mtime, mtime))
    with rear.rear_fs(base) as fs, fs.pickup(str(tree), "t.zip/tree"):
        pass
    assert rear.scavenge(base, flush=True).files_moved == len(times) + 1   # and tree/
    with zipfile.ZipFile(os.path.join(base, "t.zip")) as handle:
        kept = {info.filename[len("tree/"):]: int.from_bytes(info.extra[5:9], "little")
                for info in handle.infolist() if not info.is_dir()}
    assert kept == times


@pytest.mark.parametrize("mtime", [MTIME_1970, MTIME_2200, -86400], ids=["1970", "2200", "1969"])
def test_a_date_outside_the_dos_range_is_clamped_never_a_crash(base, tmp_path, mtime):
    archive = picked_up_file(base, tmp_path, mtime, "UTC")
    unzip_test(archive)
    with zipfile.ZipFile(archive) as handle:
        (info,) = handle.infolist()
    if mtime == MTIME_2200:       # past what UT holds: the last DOS time, no UT
        assert info.date_time == (2107, 12, 31, 23, 59, 58) and info.extra == b""
    elif mtime < 0:               # before 1970: the first DOS time, no UT
        assert info.date_time == (1980, 1, 1, 0, 0, 0) and info.extra == b""
    else:                         # 1970: DOS clamped, UT exact
        assert info.date_time == (1980, 1, 1, 0, 0, 0)
        target = str(tmp_path / "out")
        extract("unzip", archive, target, "Asia/Tokyo")
        assert int(os.stat(os.path.join(target, "f.txt")).st_mtime) == mtime


def test_pickup_of_a_single_symlink_stores_the_link_and_removes_only_it(base, tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("the target")
    link = tmp_path / "link"
    os.symlink(str(target), str(link))
    with rear.rear_fs(base) as fs:
        with fs.pickup(link, "t.zip/link"):
            pass
    assert not os.path.lexists(str(link)) and target.read_text() == "the target"
    rear.scavenge(base)
    with zipfile.ZipFile(os.path.join(base, "t.zip")) as handle:
        (info,) = handle.infolist()
        assert stat.S_ISLNK(info.external_attr >> 16)
        assert handle.read(info) == str(target).encode()


def test_modes_picked_up_files_keep_theirs_and_rear_open_files_get_0644(base, tmp_path):
    source = str(tmp_path / "tool")
    with open(source, "wb") as handle:
        handle.write(b"#!/bin/sh\n")
    os.chmod(source, 0o750)
    with rear.rear_fs(base) as fs:
        with fs.pickup(source, "t.zip/tool"):
            pass
        with fs.open("t.zip/written.txt") as handle:
            handle.write("x")
    rear.scavenge(base)
    with zipfile.ZipFile(os.path.join(base, "t.zip")) as handle:
        modes = {info.filename: info.external_attr >> 16 for info in handle.infolist()}
    assert modes == {"tool": 0o100750, "written.txt": 0o100644}


@pytest.mark.parametrize("obstacle", ["fifo", "bad name"])
def test_a_tree_with_something_rear_cannot_archive_is_refused_before_any_of_it_is(
        base, tmp_path, obstacle):
    source = tmp_path / "tree"
    (source / "a").mkdir(parents=True)
    (source / "a" / "first.txt").write_text("1")
    (source / "z").mkdir()
    if obstacle == "fifo":
        os.mkfifo(str(source / "z" / "pipe"))
        expected = "pipe is not a regular file, directory or symlink"
    else:
        (source / "z" / "back\\slash").write_text("2")
        expected = "backslash"
    with rear.rear_fs(base) as fs:
        with pytest.raises((rear.RearError, ValueError), match=expected):
            with fs.pickup(str(source), "t.zip/tree"):
                pass
    assert (source / "a" / "first.txt").read_text() == "1"    # the source stays whole
    assert rear.scavenge(base).files_moved == 0                # and nothing was archived


def test_a_tree_whose_archiving_fails_halfway_is_cut_off_and_earlier_files_kept(
        base, tmp_path, monkeypatch):
    source = tmp_path / "tree"
    source.mkdir()
    for name in ("a", "b", "c"):
        (source / name).write_text(name)
    real, calls = rear._prepare_stream, []

    def fails_on_the_second_file(*args):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        return real(*args)

    with rear.rear_fs(base) as fs:
        fs.write_bytes("t.zip/before", b"acknowledged before the pickup")
        monkeypatch.setattr(rear, "_prepare_stream", fails_on_the_second_file)
        with pytest.raises(OSError, match="Input/output error"):
            with fs.pickup(str(source), "t.zip/tree"):
                pass
        monkeypatch.undo()
        fs.write_bytes("t.zip/after", b"acknowledged after it")
    assert sorted(os.listdir(str(source))) == ["a", "b", "c"]     # all of it still there
    assert rear.scavenge(base).errors == []
    assert archives_of(base) == {"t.zip": {"before": b"acknowledged before the pickup",
                                           "after": b"acknowledged after it"}}


def test_a_salvaged_temp_zip_keeps_links_directories_modes_and_times(base, tmp_path):
    # Salvage reads local headers only, which hold no external attributes:
    # rear's writer records a mode other than the default there itself.
    source = str(tmp_path / "tree")
    expected = make_faithful_tree(source)
    assert run_child(SALVAGED_PICKUP, base, source).wait(60) == 0
    stats = rear.scavenge(base, flush=True)
    assert stats.salvaged == 1 and stats.errors == []
    target = str(tmp_path / "out")
    extract("unzip", os.path.join(base, "t.zip"), target, "UTC")
    assert_tree_restored(os.path.join(target, "tree"), expected)


def test_rear_ls_shows_the_exact_time_in_the_readers_time_zone(base, tmp_path):
    archive = picked_up_file(base, tmp_path, MTIME_ODD, "America/New_York")
    listing = run_cli("ls", archive, env=dict(CHILD_ENV, TZ="Asia/Tokyo"))
    assert "2023-11-15 07:13  f.txt" in listing.stdout
    (entry,) = [json.loads(line) for line in run_cli("ls", "--json", archive).stdout.splitlines()]
    assert entry["mtime"] == MTIME_ODD and entry["mode"] == 0o100644


# ---------------------------------------------------------------- rotation, sealing and durability


def test_rotation_due_is_a_pure_function_of_age_size_and_entries():
    assert not rear._rotation_due(100.0, 100.5, 1.0, 10, 1000, 9, 10)
    assert rear._rotation_due(100.0, 101.0, 1.0, 10, 1000, 9, 10)
    assert rear._rotation_due(100.0, 100.1, 1.0, 1000, 1000, 9, 10)
    assert rear._rotation_due(100.0, 100.1, 1.0, 10, 1000, 10, 10)


def test_a_temp_zip_is_sealed_once_it_holds_the_most_entries_a_scavenger_takes_at_once(
        base, monkeypatch):
    # What bounds a scavenger's memory: it holds a claimed temp zip's
    # entries until they are committed.
    monkeypatch.setattr(rear, "_TEMP_ZIP_MAX_ENTRIES", 4)
    monkeypatch.setattr(rear, "_BATCH_ENTRIES", 4)
    claimed = []
    real_claim = rear._claim

    def counting_claim(path, stats, **options):
        claim = real_claim(path, stats, **options)
        if claim is not None:
            claimed.append(len(claim.routes))
        return claim

    with rear.rear_fs(base, rotation_span=3600) as fs:
        for number in range(10):
            fs.write_bytes("a.zip/%d" % number, b"%d" % number)
        assert len(inbox_temp_zips(base)) == 3
    monkeypatch.setattr(rear, "_claim", counting_claim)
    batches = []
    real_commit = rear._commit_claims
    monkeypatch.setattr(rear, "_commit_claims", lambda base, claims, *args: batches.append(
        sum(len(claim.routes) for claim in claims)) or real_commit(base, claims, *args))
    assert rear.scavenge(base).files_moved == 10
    assert sorted(claimed) == [2, 4, 4] and max(batches) < 2 * 4
    unzip_test(os.path.join(base, "a.zip"))


def test_idle_worker_seals_its_temp_zip_at_rotation(base):
    with rear.rear_fs(base, rotation_span=0.2) as fs:
        fs.write_bytes("ar.zip/x", b"x")
        deadline = time.monotonic() + 10
        while [s["state"] for s in sidecars(base)] != ["sealed"]:
            assert time.monotonic() < deadline, "the timer never sealed the temp zip"
            time.sleep(0.05)
        # sealed while the worker idles: a scavenger can take it now
        assert rear.scavenge(base, rotation_span=0.2).files_moved == 1


def test_a_write_after_the_span_goes_to_a_new_temp_zip(base):
    with rear.rear_fs(base, rotation_span=0.3) as fs:
        fs.write_bytes("ar.zip/1", b"1")
        time.sleep(0.4)
        fs.write_bytes("ar.zip/2", b"2")
        assert len(inbox_temp_zips(base)) == 2
    rear.scavenge(base)
    assert archives_of(base)["ar.zip"] == {"1": b"1", "2": b"2"}


def test_sealed_sidecar_records_entries_bytes_and_owner(base):
    with rear.rear_fs(base) as fs:
        fs.write_bytes("ar.zip/a", b"a")
        fs.write_bytes("ar.zip/b", b"b")
        (manifest,) = sidecars(base)
        assert manifest["state"] == "open"
    (manifest,) = sidecars(base)
    (zip_name,) = inbox_temp_zips(base)
    assert manifest["state"] == "sealed"
    assert manifest["entries"] == 2
    assert manifest["bytes"] < os.path.getsize(os.path.join(base, "inbox", zip_name))
    assert (manifest["pid"], manifest["version"]) == (os.getpid(), 1)
    assert isinstance(manifest["created"], float) and manifest["host"]
    unzip_test(os.path.join(base, "inbox", zip_name))  # a sealed temp zip is a real zip


def test_interpreter_exit_seals_the_temp_zip(base):
    child = run_child("""
        import sys, rear
        fs = rear.rear_fs(sys.argv[1])
        fs.write_bytes("ar.zip/x", b"x")   # no close, no with: atexit seals
    """, base)
    assert child.wait(60) == 0
    assert [s["state"] for s in sidecars(base)] == ["sealed"]


def test_idle_rear_fs_creates_no_files(base):
    with rear.rear_fs(base, rotation_span=0.1):
        time.sleep(0.3)
    assert inbox_temp_zips(base) == []


def test_sync_file_fsyncs_every_file_before_its_block_returns(base, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(rear.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    with rear.rear_fs(base, sync="file") as fs:
        fs.write_bytes("a.zip/1", b"1")
        after_first = len(synced)
        fs.write_bytes("a.zip/2", b"2")
        assert len(synced) == after_first + 1
    with rear.rear_fs(base) as fs:   # the default: no fsync per file
        fs.write_bytes("a.zip/3", b"3")
        before = len(synced)
        fs.write_bytes("a.zip/4", b"4")
        assert len(synced) == before


def test_a_writer_writes_back_in_the_background_and_its_seal_waits_for_that(
        base, monkeypatch):
    monkeypatch.setattr(rear, "_WRITEBACK_BYTES", 4096)
    background, in_flight = [], threading.Event()
    real_fdatasync = os.fdatasync

    def slow_fdatasync(fd):
        if threading.current_thread().name == "rear-writeback":
            background.append(fd)
            in_flight.set()
            time.sleep(0.2)     # still running when the seal comes
        real_fdatasync(fd)

    monkeypatch.setattr(rear.os, "fdatasync", slow_fdatasync)
    files = {"a.zip/%d" % n: os.urandom(3000) for n in range(8)}
    fill(base, files, compression="stored", rotation_span=3600)
    assert in_flight.is_set(), "no writeback started"
    assert background, "writeback ran in the writer's own thread"
    assert not [thread for thread in threading.enumerate() if thread.name == "rear-writeback"]
    assert [s["state"] for s in sidecars(base)] == ["sealed"]
    assert rear.scavenge(base).files_moved == len(files)
    assert_exactly_once(base, files)
    unzip_test(os.path.join(base, "a.zip"))


def test_a_background_writeback_error_reaches_the_caller_and_loses_nothing(base, monkeypatch):
    monkeypatch.setattr(rear, "_WRITEBACK_BYTES", 4096)
    real_fdatasync = os.fdatasync

    def failing_in_background(fd):
        if threading.current_thread().name == "rear-writeback":
            raise OSError(errno.EIO, "Input/output error")
        real_fdatasync(fd)

    monkeypatch.setattr(rear.os, "fdatasync", failing_in_background)
    files = {"a.zip/%d" % n: os.urandom(3000) for n in range(4)}
    fs = rear.rear_fs(base, compression="stored", rotation_span=3600)
    for name, data in files.items():
        fs.write_bytes(name, data)
    with pytest.raises(OSError) as raised:
        fs.close()
    assert raised.value.errno == errno.EIO
    # Left unsealed for salvage, as after any failed seal: here the bytes
    # did reach the disk, so a flush finds every file.
    assert [s["state"] for s in sidecars(base)] == ["open"]
    monkeypatch.setattr(rear.os, "fdatasync", real_fdatasync)
    assert rear.scavenge(base, flush=True).files_moved == len(files)
    assert_exactly_once(base, files)


def test_a_writeback_thread_that_cannot_start_changes_nothing(base, monkeypatch):
    monkeypatch.setattr(rear, "_WRITEBACK_BYTES", 4096)
    real_start = threading.Thread.start

    def refusing_start(thread):
        if thread.name == "rear-writeback":
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", refusing_start)
    files = {"a.zip/%d" % n: os.urandom(3000) for n in range(4)}
    fill(base, files, compression="stored", rotation_span=3600)
    assert [s["state"] for s in sidecars(base)] == ["sealed"]
    assert rear.scavenge(base).files_moved == len(files)
    assert_exactly_once(base, files)


# ---------------------------------------------------------------- processes and threads


def test_temp_zip_names_are_unique_for_processes_started_together(base):
    start_at = time.time() + 1.0
    children = [run_child("""
        import sys, time, rear
        base, index, start_at = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
        time.sleep(max(0, start_at - time.time()))
        with rear.rear_fs(base) as fs:
            for n in range(20):
                fs.write_bytes("ar.zip/p%d/f%d" % (index, n), b"%d-%d" % (index, n))
    """, base, str(index), str(start_at)) for index in range(8)]
    assert [child.wait(60) for child in children] == [0] * 8
    assert len(inbox_temp_zips(base)) == 8
    rear.scavenge(base)
    assert_exactly_once(base, {"ar.zip/p%d/f%d" % (i, n): b"%d-%d" % (i, n)
                               for i in range(8) for n in range(20)})


def test_many_threads_write_through_one_rear_fs(base):
    expected = {}
    lock = threading.Lock()

    def worker(fs, index):
        for n in range(150):
            data = os.urandom(random.randint(0, 3000))
            with fs.open("ar.zip/t%d/f%d" % (index, n), "wb") as handle:
                handle.write(data)
            with lock:
                expected["ar.zip/t%d/f%d" % (index, n)] = data

    with rear.rear_fs(base, rotation_span=0.1) as fs:
        run_in_threads(8, worker, fs)
    rear.scavenge(base)
    assert_exactly_once(base, expected)


def _forked_child_writes(base):
    with rear.rear_open("ar.zip/child.txt") as handle:
        handle.write("from the child")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_writes_its_own_temp_zip_and_never_seals_the_parents(base):
    with rear.rear_fs(base) as fs:
        fs.write_bytes("ar.zip/parent-before.txt", b"p1")
        (parent_zip,) = inbox_temp_zips(base)
        process = multiprocessing.get_context("fork").Process(target=_forked_child_writes,
                                                               args=(base,))
        process.start()
        process.join(60)
        assert process.exitcode == 0
        states = {s["pid"]: s["state"] for s in sidecars(base)}
        assert states[os.getpid()] == "open"            # the parent's is untouched
        assert states[process.pid] == "sealed"          # the child sealed its own at exit
        fs.write_bytes("ar.zip/parent-after.txt", b"p2")  # still the same temp zip
        assert parent_zip in inbox_temp_zips(base)
    rear.scavenge(base)
    assert archives_of(base)["ar.zip"] == {"parent-before.txt": b"p1",
                                           "parent-after.txt": b"p2",
                                           "child.txt": b"from the child"}


def test_writer_keeps_its_lock_while_an_in_process_scavenger_runs(base):
    with rear.rear_fs(base) as fs:
        fs.write_bytes("ar.zip/x", b"x")
        stats = rear.scavenge(base, flush=True)
        assert stats.busy == 1 and stats.files_moved == 0
        (zip_name,) = inbox_temp_zips(base)
        probe = run_child("""
            import fcntl, os, sys
            fd = os.open(sys.argv[1], os.O_RDWR)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                sys.exit(0)   # still locked by the writer: good
            sys.exit(1)
        """, os.path.join(base, "inbox", zip_name))
        assert probe.wait(60) == 0
    assert rear.scavenge(base).files_moved == 1


WRITER_SCRIPT = """
    import hashlib, os, random, sys, rear
    base, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    compression = ["stored", "deflated"][seed % 2]
    import threading
    print_lock = threading.Lock()
    def work(thread):
        n = 0
        while True:
            name = "w%d.zip/s%d/t%d/f%06d" % (seed % 3, seed, thread, n)
            data = os.urandom(rng.randint(0, 4000)) + b"x" * rng.randint(0, 4000)
            with rear.rear_open(name, "wb") as handle:
                handle.write(data)
            # acknowledged: the with block exited
            with print_lock:
                sys.stdout.write("%s %s\\n" % (name, data.hex()))
                sys.stdout.flush()
            n += 1
    import threading
    with rear.rear_fs(base, rotation_span=0.3, compression=compression):
        for thread in range(1, threads):
            threading.Thread(target=work, args=(thread,), daemon=True).start()
        work(0)
"""


def start_writer(base, seed, threads=1):
    return Acknowledged(run_child(WRITER_SCRIPT, base, str(seed), str(threads),
                                  stdout=subprocess.PIPE, text=True))


@pytest.mark.parametrize("trial", range(6))
def test_writer_killed_at_a_random_instant_loses_nothing_acknowledged(base, trial):
    rng = random.Random(trial)
    writer = start_writer(base, seed=trial, threads=1 + trial % 3)
    writer.wait_for_first()
    time.sleep(rng.uniform(0.0, 1.2))
    acknowledged = writer.kill()
    assert acknowledged, "the writer acknowledged nothing before the kill"
    rear.scavenge(base, flush=True, rotation_span=0.3)
    assert inbox_temp_zips(base) == []
    found = all_entries(base)
    for name, data in acknowledged.items():
        assert found.get(name) == data, "acknowledged %s was lost or altered" % name
    # At most one file per thread can have left its with block without
    # being reported before the kill; anything else would be invented.
    assert len(set(found) - set(acknowledged)) <= 1 + trial % 3


def test_dead_writers_temp_zip_waits_for_the_grace_period_without_flush(base):
    writer = start_writer(base, seed=1)
    writer.wait_for_first()
    writer.kill()
    stats = rear.scavenge(base, rotation_span=60)
    assert stats.salvaged == 0 and stats.waiting == 1
    assert len(inbox_temp_zips(base)) >= 1
    stats = rear.scavenge(base, rotation_span=60, flush=True)
    assert stats.salvaged == 1 and inbox_temp_zips(base) == []


def _pool_worker_writes(args):
    base, number = args
    global _POOL_FS
    if "_POOL_FS" not in globals():
        _POOL_FS = rear.rear_fs(base)
    _POOL_FS.write_bytes("pool.zip/%d" % number, b"%d" % number)
    return os.getpid()


@pytest.mark.parametrize("method", [m for m in ("fork", "spawn", "forkserver")
                                    if m in multiprocessing.get_all_start_methods()])
def test_pool_workers_seal_their_temp_zips_when_they_exit(base, method):
    pool = multiprocessing.get_context(method).Pool(2)
    pids = set(pool.map(_pool_worker_writes, [(base, n) for n in range(20)]))
    pool.close()
    pool.join()
    states = {manifest["pid"]: manifest["state"] for manifest in sidecars(base)}
    assert set(states) == pids and set(states.values()) == {"sealed"}
    assert rear.scavenge(base).files_moved == 20


def test_a_flush_while_a_writer_is_between_creating_and_locking_loses_nothing(base):
    # The writer pauses right after creating its temp zip, before locking
    # it; a flushing scavenger runs in that instant.  Were the new temp zip
    # visible, it would look abandoned (unlocked, empty) and be deleted, and
    # the writer would go on appending to an unlinked file.
    writer = run_child("""
        import sys, time, rear
        real_lock = rear._lock
        def paused_lock(fd, path, **kwargs):
            if path.endswith(".zip"):
                print("created", flush=True)
                sys.stdin.readline()          # wait for the scavenger
            return real_lock(fd, path, **kwargs)
        rear._lock = paused_lock
        with rear.rear_fs(sys.argv[1]) as fs:
            fs.write_bytes("a.zip/x", b"survives")
    """, base, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline() == "created\n"
    rear.scavenge(base, flush=True)
    writer.stdin.write("go\n")
    writer.stdin.close()
    assert writer.wait(60) == 0
    rear.scavenge(base, flush=True)
    assert archives_of(base) == {"a.zip": {"x": b"survives"}}


# ---------------------------------------------------------------- salvage


def test_salvage_recovers_complete_entries_and_drops_a_torn_one(base):
    entries = [("ar.zip/%d" % n, os.urandom(2000)) for n in range(5)]
    write_raw_temp_zip(base, entries, cut=100)
    stats = rear.scavenge(base)
    assert stats.salvaged == 1
    assert archives_of(base)["ar.zip"] == {"%d" % n: data for n, (_, data) in enumerate(entries[:4])}
    assert inbox_temp_zips(base) == []


def test_salvage_never_ingests_an_entry_whose_crc_fails(base):
    entries = [("ar.zip/good", b"g" * 1000), ("ar.zip/bad", os.urandom(3000))]
    path = write_raw_temp_zip(base, entries)
    offset = open(path, "rb").read().index(b"ar.zip/bad") + len("ar.zip/bad") + 100
    with open(path, "r+b") as handle:      # flip one byte inside the data
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))
    assert rear.scavenge(base, flush=True).salvaged == 1
    assert archives_of(base)["ar.zip"] == {"good": b"g" * 1000}


@pytest.mark.parametrize("keep", [4, 10, 21])
def test_a_zip_cut_just_after_its_end_record_signature_is_reported(base, keep):
    path = write_raw_temp_zip(base, [("ar.zip/x", b"x" * 100)], sealed=True)
    data = open(path, "rb").read()
    cut = data.rindex(b"PK\x05\x06") + keep
    with open(path, "wb") as handle:
        handle.write(data[:cut])
    stats = rear.scavenge(base)
    assert "not a zip archive" in stats.errors[0][1]


def test_a_deflate_stream_that_never_ends_is_not_ingested(base):
    # Found by fuzzing: with its BFINAL bit cleared, a deflate stream still
    # yields every byte with the right CRC, but never ends; unzip refuses it.
    path = write_raw_temp_zip(base, [("ar.zip/x", b"compressible " * 300)], sealed=True)
    data = bytearray(open(path, "rb").read())
    data_start = data.index(b"ar.zip/x") + len("ar.zip/x")
    assert data[data_start] & 1, "the first deflate block is the final one"
    data[data_start] ^= 1
    open(path, "wb").write(bytes(data))
    stats = rear.scavenge(base)
    assert "fails its integrity check" in stats.errors[0][1]
    assert os.path.exists(path) and archives_of(base) == {}


def test_temp_zip_without_sidecar_is_salvaged_once_its_lock_is_free(base):
    write_raw_temp_zip(base, [("ar.zip/x", b"x")], sidecar=False)
    assert rear.scavenge(base, flush=True).salvaged == 1
    assert archives_of(base)["ar.zip"] == {"x": b"x"}


# ---------------------------------------------------------------- scavenger


# -- scavenger: appending


def test_scavenge_returns_counts_and_empties_the_inbox(base):
    fill(base, {"a.zip/1": b"1", "a.zip/2": b"2", "sub/b.zip/3": b"3"})
    stats = rear.scavenge(base)
    assert (stats.files_moved, stats.temp_zips_done, stats.archives_touched) == (3, 1, 2)
    assert inbox_temp_zips(base) == [] and sidecars(base) == []
    assert_exactly_once(base, {"a.zip/1": b"1", "a.zip/2": b"2", "sub/b.zip/3": b"3"})


def test_second_pass_finds_nothing_to_do(base):
    fill(base, {"a.zip/1": b"1"})
    rear.scavenge(base)
    before = open(os.path.join(base, "a.zip"), "rb").read()
    stats = rear.scavenge(base)
    assert stats.files_moved == 0 and stats.errors == []
    assert open(os.path.join(base, "a.zip"), "rb").read() == before


def test_appending_keeps_the_earlier_entries(base):
    fill(base, {"a.zip/1": b"1"})
    rear.scavenge(base)
    fill(base, {"a.zip/2": b"2"}, compression="stored")
    rear.scavenge(base)
    assert archives_of(base)["a.zip"] == {"1": b"1", "2": b"2"}


def test_same_name_same_content_is_skipped_as_a_duplicate(base):
    fill(base, {"a.zip/1": b"same"})
    rear.scavenge(base)
    fill(base, {"a.zip/1": b"same"})
    stats = rear.scavenge(base)
    assert (stats.duplicates, stats.files_moved, stats.conflicts) == (1, 0, 0)
    assert archives_of(base)["a.zip"] == {"1": b"same"}


def test_same_name_other_content_is_kept_under_numbered_names(base, caplog):
    for content in (b"first", b"second", b"third"):
        fill(base, {"a.zip/log.txt": content})
        with caplog.at_level(logging.WARNING, logger="rear"):
            rear.scavenge(base)
    assert archives_of(base)["a.zip"] == {"log.txt": b"first", "log.txt.~1~": b"second",
                                          "log.txt.~2~": b"third"}
    assert "log.txt.~2~" in caplog.text


def test_names_new_to_the_series_are_added_without_looking_each_one_up(base, monkeypatch):
    # One pass over the index tells which hashes the series holds; name_for,
    # a lookup in every index of the series, is left to names under those
    # hashes and to a name the batch adds twice.
    fill(base, {"a.zip/old-%d" % n: b"%d" % n for n in range(1000)})
    rear.scavenge(base)
    fill(base, {**{"a.zip/new-%d" % n: b"%d" % n for n in range(1000)},
                "a.zip/old-5": b"5", "a.zip/old-6": b"other", "a.zip/twice": b"first"})
    fill(base, {"a.zip/twice": b"second"})
    looked_up = []
    name_for = rear._ArchiveState.name_for

    def counted_name_for(self, name, *args):
        looked_up.append(name)
        return name_for(self, name, *args)

    monkeypatch.setattr(rear._ArchiveState, "name_for", counted_name_for)
    stats = rear.scavenge(base)
    assert sorted(looked_up) == ["old-5", "old-6", "twice"]
    assert (stats.files_moved, stats.duplicates, stats.conflicts) == (1003, 1, 2)
    archived = archives_of(base)["a.zip"]
    assert len(archived) == 2003
    assert (archived["old-5"], archived["old-6"], archived["old-6.~1~"]) == (b"5", b"6", b"other")
    assert (archived["twice"], archived["twice.~1~"]) == (b"first", b"second")


def test_a_pass_pauses_the_cyclic_collector_while_it_commits_a_batch_and_restores_it(base):
    fill(base, {"a.zip/%d" % n: b"%d" % n for n in range(10)})
    seen = []
    stats = rear.scavenge(base, progress=lambda *_args: seen.append(gc.isenabled()))
    assert stats.files_moved == 10
    assert seen == [False]
    assert gc.isenabled()


def test_a_pass_leaves_a_collector_its_caller_disabled_disabled(base):
    fill(base, {"a.zip/%d" % n: b"%d" % n for n in range(10)})
    gc.disable()
    try:
        assert rear.scavenge(base).files_moved == 10
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_commit_of_many_conflicts_names_ten_and_sums_up_the_rest(base, caplog):
    fill(base, {"a.zip/%02d" % n: b"first" for n in range(25)})
    rear.scavenge(base)
    fill(base, {"a.zip/%02d" % n: b"second" for n in range(25)})
    with caplog.at_level(logging.WARNING, logger="rear"):
        stats = rear.scavenge(base)
    assert stats.conflicts == 25
    named = [record.getMessage() for record in caplog.records
             if "keeping the new one as" in record.getMessage()]
    assert named == ["%s already holds '%02d' with other content; keeping the new one as "
                     "'%02d.~1~'" % (os.path.join(base, "a.zip"), n, n) for n in range(10)]
    summary, = [record.getMessage() for record in caplog.records if "more new" in
                record.getMessage()]
    assert summary.startswith("%s: 15 more new copies of names it already holds with "
                              "other content" % os.path.join(base, "a.zip"))
    listing = summary.split("'rear ls ")[1].split("'")[0].split()
    versions = run_cli("ls", *listing).stdout.splitlines()
    assert sum(".~1~" in line for line in versions) == 25


def answers(base, name):
    """What every reader says ``name`` ("a.zip/member") is: read_bytes, the
    pending reader, rear cat and the pending listing must agree."""
    dest, member = name.split("/", 1)
    data = rear.read_bytes(base, name)
    with rear.open_archive(base, dest, pending=True) as reader:
        assert reader.read(member) == data
        assert list(reader.names()).count(member) == 1
    cat = subprocess.run([sys.executable, "-m", "rear", "cat", base, name],
                         capture_output=True, env=CHILD_ENV)
    assert cat.returncode == 0 and cat.stdout == data
    listing = run_cli("ls", base, dest, "--pending", "-1")
    assert listing.stdout.splitlines().count(member) == 1
    return data


def test_a_name_written_twice_means_its_first_copy_before_and_after_scavenging(base):
    fill(base, {"a.zip/n": b"first"})
    fill(base, {"a.zip/n": b"second"})
    assert answers(base, "a.zip/n") == b"first"          # both pending
    rear.scavenge(base)
    assert answers(base, "a.zip/n") == b"first"          # both archived
    assert archives_of(base)["a.zip"] == {"n": b"first", "n.~1~": b"second"}


def test_a_name_written_twice_in_one_temp_zip_means_its_first_copy(base):
    with rear.rear_fs(base) as fs:
        fs.write_bytes("a.zip/n", b"first")
        fs.write_bytes("a.zip/n", b"second")
    assert answers(base, "a.zip/n") == b"first"
    rear.scavenge(base)
    assert answers(base, "a.zip/n") == b"first"


def test_an_archived_name_keeps_its_answer_while_a_later_copy_is_pending(base):
    fill(base, {"a.zip/n": b"first"})
    rear.scavenge(base)
    fill(base, {"a.zip/n": b"second"})
    assert answers(base, "a.zip/n") == b"first"


def test_temp_zips_count_in_the_order_their_writers_started_not_by_host_name(base):
    fill(base, {"a.zip/n": b"first"})
    fill(base, {"a.zip/n": b"second"})
    inbox = os.path.join(base, "inbox")
    later = inbox_temp_zips(base)[-1]
    assert rear.read_bytes(base, "a.zip/n") == b"first"
    # The later writer on a host whose name sorts first.
    renamed = "aaaa-" + later.split("-", 1)[1]
    for old, new in ((later, renamed), (later[:-4] + ".json", renamed[:-4] + ".json")):
        os.rename(os.path.join(inbox, old), os.path.join(inbox, new))
    assert answers(base, "a.zip/n") == b"first"
    rear.scavenge(base)
    assert archives_of(base)["a.zip"] == {"n": b"first", "n.~1~": b"second"}


def test_archive_is_rolled_over_at_max_size(base):
    files = {"a.zip/%03d" % n: os.urandom(3000) for n in range(30)}
    for chunk in range(3):
        fill(base, dict(list(files.items())[chunk * 10:(chunk + 1) * 10]))
        rear.scavenge(base, max_size=20000)
    sizes = archive_sizes(base)
    assert len(sizes) == 5 and all(size <= 20000 for _entries, size in sizes.values())
    assert_exactly_once(base, files)


# -- scavenger: the name index


def index_path(base, dest):
    return rear._ArchivePaths(base, dest).index


def refeed_is_all_duplicates(base, files):
    fill(base, files)
    stats = rear.scavenge(base)
    return (stats.duplicates, stats.files_moved, stats.conflicts) == (len(files), 0, 0)


def index_slots(base, dest):
    """(used count in the header, [(hash, position)] of the filled slots)."""
    with open(index_path(base, dest), "rb") as handle:
        data = handle.read()
    used = rear._INDEX_HEADER.unpack_from(data)[rear._INDEX_HEADER_USED]
    return used, [slot for slot in rear._INDEX_SLOT.iter_unpack(
        data[rear._INDEX_HEADER.size:]) if slot[0]]


def test_an_index_read_and_updated_a_window_at_a_time_finds_every_name(base, monkeypatch):
    # Windows of 4 slots: most probes run past their window (or wrap at the
    # end of the table), the case the window passes hand back to _probe.
    monkeypatch.setattr(rear, "_INDEX_WINDOW", 4 * rear._INDEX_SLOT.size)
    contents = {}
    for batch in range(6):
        files = {"a.zip/%d-%d" % (batch, n): b"%d" % n for n in range(300)}
        fill(base, files)
        contents.update(files)
        stats = rear.scavenge(base)
        assert stats.errors == [] and stats.files_moved == 300
    used, slots = index_slots(base, "a.zip")
    assert used == len(slots) == len(contents)
    assert len({position for _hash, position in slots}) == len(contents)
    assert refeed_is_all_duplicates(base, dict(list(contents.items())[::7]))
    fill(base, {"a.zip/0-1": b"other"})
    assert rear.scavenge(base).conflicts == 1
    monkeypatch.undo()
    for name, data in contents.items():     # probed name by name, by a reader
        assert rear.read_bytes(base, name) == data
    unzip_test(os.path.join(base, "a.zip"))


def test_a_commit_reads_each_index_of_a_series_a_window_at_a_time_not_whole(
        base, monkeypatch):
    # A scavenger's memory does not grow with the series: the names of a
    # batch are looked up in one pass over each index, never mapped or held.
    fill(base, {"a.zip/old-%d" % n: b"%d" % n for n in range(3000)})
    assert rear.scavenge(base, max_entries=1000).files_moved == 3000
    monkeypatch.setattr(rear, "_INDEX_WINDOW", 4096, raising=False)
    reads = []
    real_pread = rear._pread_exact

    def recording_pread(fd, size, offset, path):
        if path.endswith(rear._INDEX_SUFFIX):
            reads.append(size)
        return real_pread(fd, size, offset, path)

    monkeypatch.setattr(rear, "_pread_exact", recording_pread)
    monkeypatch.setattr(rear.mmap, "mmap", None)     # any map fails loudly
    files = {"a.zip/old-%d" % n: b"%d" % n for n in range(0, 3000, 3)}
    files.update({"a.zip/new-%d" % n: b"%d" % n for n in range(500)})
    fill(base, files)
    stats = rear.scavenge(base, max_entries=1000)
    assert (stats.duplicates, stats.files_moved, stats.errors) == (1000, 500, [])
    assert reads and max(reads) <= 4096
    monkeypatch.undo()
    with rear.open_archive(base, "a.zip") as series:
        assert sorted(series.names()) == sorted(
            ["old-%d" % n for n in range(3000)] + ["new-%d" % n for n in range(500)])


def test_appending_to_an_indexed_archive_does_not_parse_its_central_directory(
        base, monkeypatch):
    fill(base, {"a.zip/%d" % n: b"%d" % n for n in range(100)})
    rear.scavenge(base)

    archive = os.path.join(base, "a.zip")
    real = rear._iter_central_records

    def single_records_only(reader, directory, path, *args, **kwargs):
        # The temp zips' central directories are read whole; the archive's
        # only one record at a time, to confirm an index hit.
        if path == archive and kwargs.get("count") != 1:
            raise AssertionError("the central directory was parsed")
        return real(reader, directory, path, *args, **kwargs)

    monkeypatch.setattr(rear, "_iter_central_records", single_records_only)
    fill(base, {"a.zip/new%d" % n: b"new" for n in range(100)})
    assert rear.scavenge(base).files_moved == 100
    assert refeed_is_all_duplicates(base, {"a.zip/5": b"5", "a.zip/new7": b"new"})
    assert len(archives_of(base)["a.zip"]) == 200


def test_a_missing_index_is_rebuilt_and_duplicates_are_still_recognised(base):
    files = {"a.zip/%d" % n: b"%d" % n for n in range(50)}
    fill(base, files)
    rear.scavenge(base)
    os.unlink(index_path(base, "a.zip"))
    assert refeed_is_all_duplicates(base, files)
    assert os.path.exists(index_path(base, "a.zip"))


def test_an_index_rebuilt_from_long_names_recognises_them(base):
    # Names longer than the rebuild's first read of a record, and short ones.
    files = {"a.zip/%s/%d" % ("/".join(["d" * 50] * n) or "d", n): b"%d" % n for n in range(8)}
    fill(base, files)
    rear.scavenge(base)
    os.unlink(index_path(base, "a.zip"))
    assert refeed_is_all_duplicates(base, files)


def test_a_damaged_index_is_rebuilt(base):
    files = {"a.zip/%d" % n: b"%d" % n for n in range(50)}
    fill(base, files)
    rear.scavenge(base)
    with open(index_path(base, "a.zip"), "r+b") as handle:
        handle.seek(100)
        handle.write(os.urandom(200))     # slots, not the header: the stamp still fits
        handle.seek(10)
        handle.write(b"\xff")            # and the header: its CRC no longer does
    assert refeed_is_all_duplicates(base, files)


def test_an_archive_changed_by_another_tool_gets_its_index_rebuilt(base):
    fill(base, {"a.zip/1": b"1"})
    rear.scavenge(base)
    with zipfile.ZipFile(os.path.join(base, "a.zip"), "a") as handle:
        handle.writestr("added-by-zipfile", b"z")
    assert refeed_is_all_duplicates(base, {"a.zip/added-by-zipfile": b"z"})
    fill(base, {"a.zip/added-by-zipfile": b"other"})
    assert rear.scavenge(base).conflicts == 1
    assert archives_of(base)["a.zip"] == {"1": b"1", "added-by-zipfile": b"z",
                                          "added-by-zipfile.~1~": b"other"}


def test_the_index_keeps_every_name_as_it_grows(base):
    files = {}
    for batch in range(4):     # 1,200 names: past the first table's 512 at half load
        more = {"a.zip/%d/%d" % (batch, n): b"%d" % n for n in range(300)}
        fill(base, more)
        rear.scavenge(base)
        files.update(more)
    assert os.path.getsize(index_path(base, "a.zip")) > 2 * 1200 * 16
    assert refeed_is_all_duplicates(base, files)
    assert_exactly_once(base, files)


def test_names_whose_hashes_collide_are_told_apart_by_their_records(base, monkeypatch):
    monkeypatch.setattr(rear, "_name_hash", lambda encoded: 1)   # every name collides
    files = {"a.zip/%d" % n: b"%d" % n for n in range(40)}
    fill(base, dict(list(files.items())[:20]))
    rear.scavenge(base)
    fill(base, dict(list(files.items())[20:]))
    rear.scavenge(base)
    assert refeed_is_all_duplicates(base, files)
    fill(base, {"a.zip/3": b"changed"})
    assert rear.scavenge(base).conflicts == 1
    assert archives_of(base)["a.zip"] == dict({"%d" % n: b"%d" % n for n in range(40)},
                                              **{"3.~1~": b"changed"})


def test_non_ascii_names_are_indexed_as_their_utf8_bytes(base):
    files = {"a.zip/r\u00e9sultat-\u4e2d.txt": b"1", "a.zip/plain": b"2"}
    fill(base, files)
    rear.scavenge(base)
    os.unlink(index_path(base, "a.zip"))       # the rebuilt index must agree
    assert refeed_is_all_duplicates(base, files)


def test_an_index_left_half_replaced_is_removed(base):
    fill(base, {"a.zip/1": b"1"})
    rear.scavenge(base)
    index = index_path(base, "a.zip")
    leftover = os.path.join(os.path.dirname(index),
                            ".%s.0123456789ab.tmp" % os.path.basename(index))
    with open(leftover, "wb") as handle:
        handle.write(b"REARIDX1 torn")
    assert rear.scavenge(base).errors == []
    assert not os.path.exists(leftover) and os.path.exists(index)


def test_an_index_whose_open_meets_estale_is_looked_up_again_not_rebuilt(base, monkeypatch):
    # Another client's scavenger replaced the index (a rebuild) behind this
    # client's cached handle: rule 1 of rear's "network filesystems".
    fill(base, {"a.zip/%d" % n: b"%d" % n for n in range(10)})
    rear.scavenge(base)
    index = index_path(base, "a.zip")
    real_open, stale = os.open, []

    def stale_once(path, flags, *args):
        if path == index and not stale:
            stale.append(path)
            raise OSError(errno.ESTALE, "Stale file handle", path)
        return real_open(path, flags, *args)

    real_rebuild, rebuilds = rear._NameIndex._rebuild, []
    monkeypatch.setattr(rear.os, "open", stale_once)
    monkeypatch.setattr(rear._NameIndex, "_rebuild",
                        lambda index: rebuilds.append(1) or real_rebuild(index))
    fill(base, {"a.zip/new": b"new"})
    stats = rear.scavenge(base)
    assert stale and stats.errors == [] and stats.files_moved == 1
    assert rebuilds == []


def test_an_index_gone_after_its_open_is_rebuilt_and_the_commit_goes_on(base, monkeypatch):
    # A ghost entry: the open succeeds, the first call that asks the server
    # fails (rule 2).  The index is a cache: rebuilt, never an error.
    fill(base, {"a.zip/%d" % n: b"%d" % n for n in range(10)})
    rear.scavenge(base)
    index = index_path(base, "a.zip")
    real_fchmod = os.fchmod

    def gone(fd, mode):
        if os.readlink("/proc/self/fd/%d" % fd) == index:
            raise OSError(errno.ESTALE, "Stale file handle")
        return real_fchmod(fd, mode)

    monkeypatch.setattr(rear.os, "fchmod", gone)
    fill(base, {"a.zip/new": b"new", "a.zip/3": b"3"})
    stats = rear.scavenge(base)
    assert stats.errors == [] and (stats.files_moved, stats.duplicates) == (1, 1)
    monkeypatch.undo()
    assert refeed_is_all_duplicates(base, {"a.zip/5": b"5", "a.zip/new": b"new"})
    unzip_test(os.path.join(base, "a.zip"))


def stale_once_deleted(monkeypatch):
    """Make os.pread fail ESTALE on a descriptor of a deleted file, as on a
    GlusterFS client whose file a scavenger on the other client deleted."""
    real_pread = os.pread

    def stale_when_deleted(fd, size, offset):
        if os.readlink("/proc/self/fd/%d" % fd).endswith(" (deleted)"):
            raise OSError(errno.ESTALE, "Stale file handle")
        return real_pread(fd, size, offset)

    monkeypatch.setattr(rear.os, "pread", stale_when_deleted)


def scavenge_after_first_temp_zip_open(base, monkeypatch):
    """Scavenge ``base`` (one file) right after rear's first open of a temp
    zip: another client's scavenger between a reader's open and its read.
    Returns the list the opened temp zip's path is put in."""
    real_open = rear._open_existing
    scavenged = []

    def open_then_scavenged(path, flags):
        fd = real_open(path, flags)
        if path.endswith(".zip") and "/inbox/" in path and not scavenged:
            scavenged.append(path)
            assert rear.scavenge(base).files_moved == 1
        return fd

    monkeypatch.setattr(rear, "_open_existing", open_then_scavenged)
    return scavenged


def test_a_pending_member_whose_temp_zip_goes_stale_after_its_open_is_read_from_the_archive(
        base, monkeypatch):
    # Another client's scavenger commits the entry and deletes its temp zip
    # between this reader's open of the temp zip and its read of the local
    # header; on GlusterFS that read fails with ESTALE (seen in CI).
    fill(base, {"a.zip/x.txt": b"the data"})
    with rear.open_archive(base, "a.zip", pending=True) as reader:
        scavenged = scavenge_after_first_temp_zip_open(base, monkeypatch)
        stale_once_deleted(monkeypatch)
        assert reader.read("x.txt") == b"the data"
    assert scavenged and inbox_temp_zips(base) == []


def test_a_pending_member_whose_temp_zip_goes_stale_mid_stream_is_read_on_from_the_archive(
        base, monkeypatch):
    # As above, but the scavenger on the other client deletes the temp zip
    # after the first chunk was read: the rest comes from the archive's
    # copy, and the whole member is still CRC-checked.
    data = os.urandom(2 * rear._CHUNK).hex().encode()    # deflated, several chunks
    fill(base, {"a.zip/big.txt": data})
    stale_once_deleted(monkeypatch)
    with rear.open_archive(base, "a.zip", pending=True) as reader:
        assert reader.info("big.txt").pending
        with reader.open("big.txt") as stream:
            first = stream.read(1000)
            assert rear.scavenge(base).files_moved == 1
            assert inbox_temp_zips(base) == []
            rest = stream.read()
    assert first + rest == data


def test_provenance_of_a_pending_member_whose_temp_zip_goes_stale_comes_from_the_archive(
        base, monkeypatch):
    fill(base, {"a.zip/x.txt": b"the data"})
    with rear.open_archive(base, "a.zip", pending=True) as reader:
        scavenged = scavenge_after_first_temp_zip_open(base, monkeypatch)
        stale_once_deleted(monkeypatch)
        assert reader.provenance("x.txt")["pid"] == str(os.getpid())
    assert scavenged and inbox_temp_zips(base) == []


def test_a_streamed_pending_member_goes_on_from_its_own_archived_copy_not_another_writers(
        base, tmp_path, monkeypatch):
    # Another writer's copy of the name was committed first, so it holds the
    # plain name and this one becomes NAME.~1~: the stream must go on from
    # the copy with its own CRC, or it would splice two files together.
    ours = os.urandom(2 * rear._CHUNK).hex().encode()
    fill(base, {"a.zip/x.txt": ours})
    stale_once_deleted(monkeypatch)
    inbox = os.path.join(base, "inbox")
    aside = str(tmp_path / "aside")
    (ours_zip,) = inbox_temp_zips(base)     # its path in inbox/ (a sharded one, too)
    with rear.open_archive(base, "a.zip", pending=True) as reader:
        with reader.open("x.txt") as stream:
            first = stream.read(1000)
            shutil.move(inbox, aside)       # renamed, not deleted: still readable
            fill(base, {"a.zip/x.txt": b"another writer's x.txt"})
            assert rear.scavenge(base).files_moved == 1
            for name in (ours_zip, ours_zip[:-len(".zip")] + ".json"):
                os.makedirs(os.path.dirname(os.path.join(inbox, name)), exist_ok=True)
                os.rename(os.path.join(aside, name), os.path.join(inbox, name))
            assert rear.scavenge(base).files_moved == 1
            rest = stream.read()
    assert first + rest == ours
    assert rear.read_bytes(base, "a.zip/x.txt", version=1) == ours


def test_a_pending_member_whose_temp_zip_is_removed_uncommitted_while_streamed_raises(
        base, monkeypatch):
    # Only a scavenger's commit deletes a temp zip; one removed by hand is
    # in no archive, and the read says what failed instead of inventing data.
    fill(base, {"a.zip/big.txt": os.urandom(2 * rear._CHUNK).hex().encode()})
    stale_once_deleted(monkeypatch)
    with rear.open_archive(base, "a.zip", pending=True) as reader:
        with reader.open("big.txt") as stream:
            stream.read(1000)
            for path in inbox_temp_zips(base):
                os.unlink(os.path.join(base, "inbox", path))
            with pytest.raises(rear.TempZipError, match="no archive holds that member"):
                stream.read()


def test_an_archive_gone_after_its_open_is_looked_up_again_and_the_commit_goes_on(
        base, monkeypatch):
    # A ghost entry of the archive itself: a scavenger on another client
    # removed it (rolled back the commit that created it) before this one
    # took the lock, and this client's entry cache still opens it; the first
    # call that asks the server fails (rule 2).  Seen on GlusterFS in CI.
    fill(base, {"a.zip/%d" % n: b"%d" % n for n in range(10)})
    rear.scavenge(base)
    archive = os.path.join(base, "a.zip")
    real_fstat, stale = os.fstat, []

    def gone_once(fd):
        if not stale and os.readlink("/proc/self/fd/%d" % fd) == archive:
            stale.append(fd)
            raise OSError(errno.ESTALE, "Stale file handle")
        return real_fstat(fd)

    monkeypatch.setattr(rear.os, "fstat", gone_once)
    fill(base, {"a.zip/new": b"new", "a.zip/3": b"3"})
    stats = rear.scavenge(base)
    assert stale and stats.errors == [] and (stats.files_moved, stats.duplicates) == (1, 1)
    monkeypatch.undo()
    assert refeed_is_all_duplicates(base, {"a.zip/5": b"5", "a.zip/new": b"new"})
    unzip_test(archive)


def test_an_archive_that_stays_gone_after_its_open_is_reported_and_its_entries_wait(
        base, monkeypatch):
    fill(base, {"a.zip/1": b"1"})
    rear.scavenge(base)
    archive = os.path.join(base, "a.zip")
    real_fstat = os.fstat

    def always_gone(fd):
        if os.readlink("/proc/self/fd/%d" % fd) == archive:
            raise OSError(errno.ESTALE, "Stale file handle")
        return real_fstat(fd)

    monkeypatch.setattr(rear, "_ESTALE_RETRY", rear._Backoff(first=0.001, cap=0.001, tries=3))
    monkeypatch.setattr(rear.os, "fstat", always_gone)
    fill(base, {"a.zip/2": b"2"})
    stats = rear.scavenge(base)
    assert [path for path, _reason in stats.errors] == [archive]
    assert "Stale file handle" in stats.errors[0][1] and stats.files_moved == 0
    monkeypatch.undo()
    assert rear.scavenge(base).files_moved == 1
    assert rear.read_bytes(base, "a.zip/2") == b"2"


# -- scavenger: journals


def test_a_journal_left_half_written_is_removed_and_the_archive_kept(base):
    fill(base, {"a.zip/1": b"1"})
    rear.scavenge(base)
    before = open(os.path.join(base, "a.zip"), "rb").read()
    with open(rear._ArchivePaths(base, "a.zip").journal_new, "wb") as handle:
        handle.write(b"REARJNL2 torn")
    stats = rear.scavenge(base)
    assert stats.errors == []
    assert not os.path.exists(rear._ArchivePaths(base, "a.zip").journal_new)
    assert open(os.path.join(base, "a.zip"), "rb").read() == before


def test_a_damaged_journal_is_reported_and_kept_not_applied(base):
    fill(base, {"a.zip/1": b"1"})
    rear.scavenge(base)
    before = open(os.path.join(base, "a.zip"), "rb").read()
    journal = rear._ArchivePaths(base, "a.zip").journal
    with open(journal, "wb") as handle:
        handle.write(os.urandom(300))
    fill(base, {"a.zip/2": b"2"})
    stats = rear.scavenge(base)
    assert any("rear verify" in reason for _path, reason in stats.errors)
    assert os.path.exists(journal)
    assert open(os.path.join(base, "a.zip"), "rb").read() == before


# -- scavenger: hostile files


def test_a_damaged_temp_zip_is_reported_left_in_place_and_the_rest_goes_on(base):
    inbox = os.path.join(base, "inbox")
    os.makedirs(inbox)
    garbage = os.path.join(inbox, "garbage.zip")
    with open(garbage, "wb") as handle:
        handle.write(os.urandom(500))
    with open(garbage[:-4] + ".json", "w") as handle:
        json.dump(dict(rear._Sidecar(time.time()).to_json(), state="sealed"), handle)
    fill(base, {"a.zip/ok": b"ok"})
    stats = rear.scavenge(base)
    assert [path for path, _reason in stats.errors] == [garbage]
    assert "not a zip archive" in stats.errors[0][1]
    assert os.path.exists(garbage)
    assert archives_of(base)["a.zip"] == {"ok": b"ok"}


def as_members_of_a_zip(files):
    """{member: data} that ``files`` ({"a.zip/member": data}) become in a.zip."""
    return {name[len("a.zip/"):]: data for name, data in files.items()}


def _entry_data(size_class, number):
    """Data of an entry that is small (in the sidecar's small_crc), or
    medium (medium_crc) compressed, stored and deflated alike."""
    if size_class == "small":
        return b"entry %d " % number * 50
    return hashlib.sha256(b"%d" % number).hexdigest().encode() * 100 + os.urandom(3000)


@pytest.mark.parametrize("size_class", ["small", "medium"])
@pytest.mark.parametrize("compression", ["stored", "deflated"])
def test_a_byte_changed_on_disk_in_a_sealed_temp_zip_is_caught_at_claim(
        base, compression, size_class):
    files = {"a.zip/%d" % n: _entry_data(size_class, n) for n in range(20)}
    fill(base, files, compression=compression)
    (zip_name,) = inbox_temp_zips(base)
    path = os.path.join(base, "inbox", zip_name)
    with zipfile.ZipFile(path) as handle:
        info = handle.getinfo("a.zip/7")
    with open(path, "r+b") as handle:     # the middle of entry 7's data
        position = info.header_offset + 30 + len("a.zip/7") + info.compress_size // 2
        handle.seek(position)
        byte = handle.read(1)
        handle.seek(position)
        handle.write(bytes([byte[0] ^ 0x40]))
    stats = rear.scavenge(base)
    assert [path for path, _reason in stats.errors] == [path]
    assert "integrity check" in stats.errors[0][1]
    assert stats.files_moved == 0 and inbox_temp_zips(base) == [zip_name]


def test_sealed_sidecars_cover_small_entries_whole_and_medium_ones_but_stored_data(base):
    files = {"a.zip/small": b"s" * 100, "a.zip/medium-stored": os.urandom(20000),
             "a.zip/medium-deflated": os.urandom(8000).hex().encode(),
             "a.zip/big": os.urandom(rear._SMALL_ENTRY + 1)}
    with rear.rear_fs(base) as fs:
        for name, data in files.items():
            fs.write_bytes(name, data)
    (zip_name,) = inbox_temp_zips(base)
    path = os.path.join(base, "inbox", zip_name)
    with open(path[:-len(".zip")] + ".json") as handle:
        sidecar = json.load(handle)
    data = open(path, "rb").read()
    with zipfile.ZipFile(path) as archive:
        infos = {info.filename: info for info in archive.infolist()}

    def header(name):
        info = infos[name]
        return data[info.header_offset:info.header_offset + 30 + len(name)
                    + int.from_bytes(data[info.header_offset + 28:info.header_offset + 30],
                                     "little")]

    def whole(name):
        return header(name) + data[info_end(name) - infos[name].compress_size:info_end(name)]

    def info_end(name):
        return infos[name].header_offset + len(header(name)) + infos[name].compress_size

    assert infos["a.zip/medium-stored"].compress_type == zipfile.ZIP_STORED
    assert infos["a.zip/medium-deflated"].compress_size > sidecar["small_limit"]
    assert sidecar["small_crc"] == zlib.crc32(whole("a.zip/small"))
    assert sidecar["medium_crc"] == zlib.crc32(
        whole("a.zip/medium-deflated"), zlib.crc32(header("a.zip/medium-stored")))
    assert (sidecar["small_limit"], sidecar["medium_limit"]) == (4096, rear._SMALL_ENTRY)


def test_a_changed_local_header_of_a_medium_stored_entry_is_caught_at_claim(base):
    # Its data is checked by its own CRC-32; the run covers its header, the
    # CRC-32 field (byte 14) included.
    fill(base, {"a.zip/%d" % n: _entry_data("medium", n) for n in range(5)},
         compression="stored")
    (zip_name,) = inbox_temp_zips(base)
    path = os.path.join(base, "inbox", zip_name)
    with zipfile.ZipFile(path) as handle:
        info = handle.getinfo("a.zip/3")
    with open(path, "r+b") as handle:
        handle.seek(info.header_offset + 14)
        handle.write(b"\0\0\0\0")
    stats = rear.scavenge(base)
    assert [path for path, _reason in stats.errors] == [path]
    assert "integrity check" in stats.errors[0][1]
    assert stats.files_moved == 0 and inbox_temp_zips(base) == [zip_name]


@pytest.mark.parametrize("damaged", [False, True])
def test_a_temp_zip_sealed_by_rear_1_4_is_checked_by_its_one_run(base, damaged):
    # rear 1.4's writers recorded small_crc over every entry up to 64 KiB,
    # header and data, and no medium_crc.
    files = {"a.zip/%d" % n: _entry_data("medium" if n % 2 else "small", n) for n in range(6)}
    fill(base, files, compression="stored")
    (zip_name,) = inbox_temp_zips(base)
    path = os.path.join(base, "inbox", zip_name)
    sidecar_path = path[:-len(".zip")] + ".json"
    with open(sidecar_path) as handle:
        sidecar = json.load(handle)
    data = bytearray(open(path, "rb").read())
    with zipfile.ZipFile(path) as archive:
        end_of_entries = archive.start_dir
    del sidecar["medium_crc"], sidecar["medium_limit"]
    sidecar.update(small_crc=zlib.crc32(data[:end_of_entries]), small_limit=rear._SMALL_ENTRY)
    with open(sidecar_path, "w") as handle:
        json.dump(sidecar, handle)
    if damaged:
        data[end_of_entries // 2] ^= 0x40
        open(path, "wb").write(bytes(data))
    stats = rear.scavenge(base)
    if damaged:
        assert "integrity check" in stats.errors[0][1]
        assert stats.files_moved == 0 and inbox_temp_zips(base) == [zip_name]
    else:
        assert stats.errors == [] and stats.files_moved == len(files)
        assert archives_of(base)["a.zip"] == as_members_of_a_zip(files)


def test_a_sidecar_whose_medium_run_reaches_past_64_kib_is_checked_as_recorded(base):
    # A later writer may cover larger entries: its runs are honoured,
    # entries over a megabyte read a chunk at a time.
    files = {"a.zip/big-text": os.urandom(3 * rear._CHUNK).hex().encode(),
             "a.zip/medium": os.urandom(10000)}
    fill(base, files)
    (zip_name,) = inbox_temp_zips(base)
    path = os.path.join(base, "inbox", zip_name)
    sidecar_path = path[:-len(".zip")] + ".json"
    data = open(path, "rb").read()
    running = 0
    with zipfile.ZipFile(path) as archive:
        for info in sorted(archive.infolist(), key=lambda info: info.header_offset):
            start = info.header_offset
            data_start = start + 30 + len(info.filename) + int.from_bytes(
                data[start + 28:start + 30], "little")
            running = zlib.crc32(data[start:data_start], running)
            if info.compress_type != zipfile.ZIP_STORED:
                running = zlib.crc32(data[data_start:data_start + info.compress_size], running)
    assert archive.getinfo("a.zip/big-text").compress_size > 2 * rear._CHUNK
    with open(sidecar_path) as handle:
        sidecar = json.load(handle)
    sidecar.update(medium_crc=running, medium_limit=2 ** 30)
    with open(sidecar_path, "w") as handle:
        json.dump(sidecar, handle)
    stats = rear.scavenge(base)
    assert stats.errors == [] and stats.files_moved == 2
    assert archives_of(base)["a.zip"] == {"big-text": files["a.zip/big-text"],
                                          "medium": files["a.zip/medium"]}


def test_a_claim_reads_the_headers_of_large_entries_not_their_data(base, monkeypatch):
    # Their data is copied in the kernel; reading ahead into it read such a
    # temp zip whole just to find the headers.
    files = {"a.zip/%d" % n: os.urandom(rear._CHUNK + n) for n in range(8)}
    fill(base, files, compression="stored")
    real_read_central_entries, real_pread = rear._read_central_entries, os.pread
    claim_reads = []

    def counted_pread(fd, size, offset):
        data = real_pread(fd, size, offset)
        claim_reads.append(len(data))
        return data

    def read_central_entries(*args, **kwargs):
        monkeypatch.setattr(rear.os, "pread", counted_pread)
        try:
            return real_read_central_entries(*args, **kwargs)
        finally:
            monkeypatch.setattr(rear.os, "pread", real_pread)

    monkeypatch.setattr(rear, "_read_central_entries", read_central_entries)
    stats = rear.scavenge(base)
    assert stats.errors == [] and stats.files_moved == len(files)
    assert 0 < sum(claim_reads) < rear._CHUNK
    monkeypatch.undo()
    assert archives_of(base)["a.zip"] == as_members_of_a_zip(files)
    unzip_test(os.path.join(base, "a.zip"))


def page_drops_of_a_commit(base, monkeypatch, filesystem):
    """([path] of each file whose cached pages rear drops whole, from
    os.posix_fadvise, the temp zip's path) of a scavenge into an existing
    archive with every file's filesystem said to be ``filesystem``."""
    monkeypatch.setattr(rear, "_filesystem_type", lambda st_dev: filesystem)
    fill(base, {"a.zip/x": b"x" * 100000})
    rear.scavenge(base)     # the archive exists: its view is refreshed too
    fill(base, {"a.zip/y": b"y" * 100000})
    (zip_name,) = inbox_temp_zips(base)
    real_fadvise = os.posix_fadvise
    dropped = []

    def recorded(fd, offset, length, advice):
        if advice == os.POSIX_FADV_DONTNEED and (offset, length) == (0, 0):
            dropped.append(os.readlink("/proc/self/fd/%d" % fd))
        return real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(rear.os, "posix_fadvise", recorded)
    assert rear.scavenge(base).files_moved == 1
    return dropped, os.path.join(base, "inbox", zip_name)


@pytest.mark.parametrize("filesystem", ["ext4", "xfs", "tmpfs"])
def test_a_scavenger_keeps_the_cached_pages_of_temp_zips_on_a_local_filesystem(
        base, monkeypatch, filesystem):
    # One kernel's page cache is the file there: dropping it sent the copy
    # of a temp zip to the disk.
    dropped, _temp_zip = page_drops_of_a_commit(base, monkeypatch, filesystem)
    assert dropped == []


@pytest.mark.parametrize("filesystem", ["nfs4", "fuse.glusterfs", "lustre", "overlay", None])
def test_a_scavenger_drops_the_cached_pages_of_temp_zips_elsewhere(
        base, monkeypatch, filesystem):
    # A network client may hold another client's stale pages (rule 3); an
    # unknown filesystem may be one.
    dropped, temp_zip = page_drops_of_a_commit(base, monkeypatch, filesystem)
    assert temp_zip in dropped
    assert os.path.join(base, "a.zip") in dropped


MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
30 27 0:45 / /scratch rw,relatime shared:7 master:3 - nfs4 srv:/scratch rw,vers=4.2
31 27 0:46 / /mnt/a\\040b rw,relatime - fuse.glusterfs localhost:/vol rw
"""


@pytest.mark.parametrize("device, expected", [
    ((253, 1), "ext4"), ((0, 45), "nfs4"), ((0, 46), "fuse.glusterfs"), ((0, 99), None)])
def test_the_filesystem_type_of_a_device_is_read_from_mountinfo(
        tmp_path, monkeypatch, device, expected):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTINFO)
    monkeypatch.setattr(rear, "_MOUNTINFO", str(mountinfo))
    assert rear._read_filesystem_type(os.makedev(*device)) == expected


def test_an_unreadable_mountinfo_means_an_unknown_filesystem(tmp_path, monkeypatch):
    monkeypatch.setattr(rear, "_MOUNTINFO", str(tmp_path / "missing"))
    assert rear._read_filesystem_type(os.makedev(253, 1)) is None


@pytest.fixture
def mount_point(tmp_path):
    """A directory to mount on (root only), unmounted again afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    point = tmp_path / "mnt"
    point.mkdir()
    yield str(point)
    while os.path.ismount(str(point)):
        subprocess.run(["umount", str(point)], check=True)


def mount(kind, point):
    result = subprocess.run(["mount", "-t", kind, "none", point], capture_output=True,
                            text=True)
    if result.returncode != 0:
        pytest.skip("cannot mount %s here: %s" % (kind, result.stderr.strip()))
    return os.stat(point).st_dev


def test_a_filesystem_type_is_looked_up_again_after_the_mounts_change(mount_point):
    # Anonymous device numbers are reused: a network filesystem mounted
    # after a tmpfs may get its number, and must not pass for the tmpfs.
    first = mount("tmpfs", mount_point)
    assert rear._filesystem_type(first) == "tmpfs"
    subprocess.run(["umount", mount_point], check=True)
    second = mount("ramfs", mount_point)
    if second != first:
        pytest.skip("the kernel gave the second mount another number")
    assert rear._filesystem_type(second) == "ramfs"


def test_a_forked_child_does_not_take_its_parents_notice_of_a_mount_change(mount_point):
    # A poll reports a change once per open file: a child sharing the
    # parent's would take the notice the parent needs.
    first = mount("tmpfs", mount_point)
    assert rear._filesystem_type(first) == "tmpfs"
    child = os.fork()
    if child == 0:
        code = 1
        try:
            subprocess.run(["umount", mount_point], check=True)
            try:
                second = mount("ramfs", mount_point)
            except pytest.skip.Exception:   # a skip raised here would only set the exit code
                code = 3
            else:
                code = 0 if rear._filesystem_type(second) == "ramfs" else 2
        finally:
            os._exit(code)
    _pid, status = os.waitpid(child, 0)
    if os.WEXITSTATUS(status) == 3:
        pytest.skip("cannot mount ramfs here")
    assert os.WEXITSTATUS(status) == 0
    if os.stat(mount_point).st_dev != first:
        pytest.skip("the kernel gave the second mount another number")
    assert rear._filesystem_type(first) == "ramfs"


@pytest.mark.skipif(shutil.which("findmnt") is None, reason="needs findmnt (util-linux)")
def test_the_filesystem_type_of_the_test_directory_agrees_with_findmnt(tmp_path):
    expected = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", str(tmp_path)],
                              capture_output=True, text=True, check=True).stdout.split()[0]
    assert rear._filesystem_type(os.stat(tmp_path).st_dev) == expected


def test_a_commit_starts_writing_back_what_it_appends_in_order(base, monkeypatch):
    # So its fsync waits for the tail only.
    files = {"a.zip/%d" % n: os.urandom(3 * rear._CHUNK) for n in range(4)}
    files.update({"a.zip/small-%d" % n: os.urandom(30000) for n in range(400)})
    fill(base, files, compression="stored")
    real_start_writeback = rear._start_writeback
    ranges = []

    def recorded(fd, offset, length):
        ranges.append((offset, length))
        real_start_writeback(fd, offset, length)

    monkeypatch.setattr(rear, "_start_writeback", recorded)
    assert rear.scavenge(base).files_moved == len(files)
    monkeypatch.undo()
    assert len(ranges) >= 2 and ranges[0][0] == 0
    assert all(offset + length == next_offset for (offset, length), (next_offset, _)
               in zip(ranges, ranges[1:]))
    assert all(length >= rear._WRITEBACK_BYTES for _offset, length in ranges)
    size = os.path.getsize(os.path.join(base, "a.zip"))
    assert ranges[-1][0] + ranges[-1][1] <= size
    unzip_test(os.path.join(base, "a.zip"))


def test_a_failing_writeback_hint_changes_nothing(base, monkeypatch):
    def refused(fd, offset, length, advice):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(rear.os, "posix_fadvise", refused)
    files = {"a.zip/%d" % n: os.urandom(3 * rear._CHUNK) for n in range(4)}
    fill(base, files, compression="stored")
    assert rear.scavenge(base).files_moved == len(files)
    monkeypatch.undo()
    assert archives_of(base)["a.zip"] == as_members_of_a_zip(files)
    unzip_test(os.path.join(base, "a.zip"))


@pytest.mark.parametrize("size", [100, 20000, rear._SMALL_ENTRY + 10])
def test_a_stored_file_changed_but_not_resized_while_picked_up_is_refused(
        base, tmp_path, monkeypatch, size):
    # A stored file is read twice, for its CRC-32 and to copy it: a copy
    # that is not what was CRC'd would be an entry that fails its check.
    source = tmp_path / "out.dat"
    real_prepare = rear._prepare_stream

    def prepare_then_rewrite(handle, method, level):
        prepared = real_prepare(handle, method, level)
        source.write_bytes(b"Y" * size)
        return prepared

    monkeypatch.setattr(rear, "_prepare_stream", prepare_then_rewrite)
    with rear.rear_fs(base, compression="stored"):
        with pytest.raises(rear.RearError, match="changed while it was archived"):
            with rear.rear_pickup(str(source), "ar.zip/out.dat"):
                source.write_bytes(b"X" * size)
        assert source.exists()
        with rear.rear_open("ar.zip/later.txt", "wb") as handle:
            handle.write(b"later")
    rear.scavenge(base)
    assert archives_of(base)["ar.zip"] == {"later.txt": b"later"}


def _small_big_small(count=5):
    """Small entries, one too big for the claim's CRC check, small ones again."""
    files = {"a.zip/s%d" % n: b"small %d " % n * 40 for n in range(count)}
    files["a.zip/big"] = os.urandom(rear._SMALL_ENTRY + 1)
    files.update({"a.zip/t%d" % n: b"later %d " % n * 40 for n in range(count)})
    return files


def central_record_at(entry, name, offset):
    """The record _add_central_record appends after what a commit has already
    added (a record before it, so that the offset is patched in place)."""
    central = bytearray(b"earlier record")
    rear._add_central_record(central, entry, name, offset)
    assert central.startswith(b"earlier record")
    return bytes(central[len(b"earlier record"):])


@pytest.mark.parametrize("offset", [0, 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 40])
@pytest.mark.parametrize("name", ["plain/name.txt", "ünïcödé/名前.txt"])
def test_headers_staged_at_claim_are_the_ones_packed_at_commit(offset, name):
    entry = rear._Entry("a.zip/" + name, rear._FLAG_UTF8, zipfile.ZIP_DEFLATED, 100, 200,
                        zlib.crc32(b"data"), 4, 4, header_offset=77, mtime=1_700_000_000)
    entry.provenance = rear._this_process_provenance()
    entry.staged = rear._Staged(name, entry, {})
    encoded = rear._encode_name(name)
    assert central_record_at(entry, name, offset) == rear._pack_central_record(
        entry, offset, encoded)
    assert rear._local_header_as(entry, name) == rear._pack_local_header(entry, encoded)
    renamed = name + ".~1~"     # a conflict's new name is packed afresh
    assert central_record_at(entry, renamed, offset) == rear._pack_central_record(
        entry, offset, rear._encode_name(renamed))
    assert rear._local_header_as(entry, renamed) == rear._pack_local_header(
        entry, rear._encode_name(renamed))


def test_entries_of_different_kinds_staged_together_each_get_their_own_headers():
    # One temp zip's entries share a memo of header fields by kind (method,
    # flags, time, provenance): each must still come out as packed alone.
    provenance = rear._this_process_provenance()
    kinds = [(zipfile.ZIP_STORED, 0, 1_700_000_000, None),
             (zipfile.ZIP_DEFLATED, 0x0002, 1_700_000_000, None),
             (zipfile.ZIP_STORED, 0, 1_700_000_002, None),
             (zipfile.ZIP_STORED, 0, None, None),
             (zipfile.ZIP_STORED, 0, 1_700_000_000, provenance),
             (zipfile.ZIP_BZIP2, 0, 1_700_000_000, provenance)]
    shapes = {}
    for number, (method, flags, mtime, carried) in enumerate(kinds * 2):
        name = ("n%d.txt" if number < len(kinds) else "ü%d.txt") % number
        entry = rear._Entry("a.zip/" + name, flags, method, 100 + number, 200,
                            number, 4 + number, 9, 0o100600 << 16, mtime=mtime)
        entry.provenance = carried
        entry.staged = rear._Staged(name, entry, shapes)
        encoded = rear._encode_name(name)
        assert entry.staged.local_header == rear._pack_local_header(entry, encoded)
        assert central_record_at(entry, name, 1234) == rear._pack_central_record(
            entry, 1234, encoded)
    assert len(shapes) == 12    # the six kinds, with ASCII names and without


def test_central_records_read_in_bulk_are_the_entries_each_record_describes(tmp_path):
    # The bulk reader has its own path for ASCII names without zip64
    # fields; others go through the general parser.  zipfile writes no UT
    # field, so the times are None here, as rear reads such records.
    path = str(tmp_path / "mixed.zip")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("plain.txt", b"a")
        archive.writestr("ünïcödé.txt", b"b")
        archive.writestr(zipfile.ZipInfo("dir/"), b"")
    with open(path, "rb") as handle:
        data = handle.read()
    fd = os.open(path, os.O_RDONLY)
    try:
        directory = rear._read_end_records(fd, len(data), path)
        reader = rear._ChunkReader(fd, path)
        records = list(rear._iter_central_records(reader, directory, path))
        in_bulk = list(rear._iter_central_entries(rear._ChunkReader(fd, path), directory, path))
    finally:
        os.close(fd)
    one_by_one = [rear._parse_central_entry(fields, raw_name, extra, path, position)
                  for position, fields, raw_name, extra in records]
    assert [entry.name for entry in in_bulk] == ["plain.txt", "ünïcödé.txt", "dir/"]
    assert [[getattr(entry, slot) for slot in rear._Entry.__slots__] for entry in in_bulk] == [
        [getattr(entry, slot) for slot in rear._Entry.__slots__] for entry in one_by_one]


def test_staged_headers_of_an_entry_too_big_for_32_bit_sizes_carry_zip64_fields():
    entry = rear._Entry("a.zip/huge.bin", 0, zipfile.ZIP_STORED, 100, 200, 7,
                        2 ** 32 + 5, 2 ** 32 + 5, mtime=1_700_000_000)
    entry.staged = rear._Staged("huge.bin", entry, {})
    encoded = rear._encode_name("huge.bin")
    assert entry.staged.central_record is None    # packed at commit, with its offset
    assert rear._local_header_as(entry, "huge.bin") == rear._pack_local_header(entry, encoded)
    assert central_record_at(entry, "huge.bin", 10) == rear._pack_central_record(
        entry, 10, encoded)


def test_small_entries_on_both_sides_of_a_big_one_pass_the_claim_check(base):
    files = _small_big_small()
    fill(base, files, compression="stored")
    stats = rear.scavenge(base)
    assert stats.errors == [] and stats.files_moved == len(files)
    assert archives_of(base)["a.zip"] == as_members_of_a_zip(files)


def test_a_byte_changed_in_a_small_entry_after_a_big_one_is_caught_at_claim(base):
    fill(base, _small_big_small(), compression="stored")
    (zip_name,) = inbox_temp_zips(base)
    path = os.path.join(base, "inbox", zip_name)
    with zipfile.ZipFile(path) as handle:
        info = handle.getinfo("a.zip/t3")
    with open(path, "r+b") as handle:
        handle.seek(info.header_offset + 30 + len("a.zip/t3") + 5)
        handle.write(b"X")
    stats = rear.scavenge(base)
    assert [path for path, _reason in stats.errors] == [path]
    assert "integrity check" in stats.errors[0][1]
    assert stats.files_moved == 0 and inbox_temp_zips(base) == [zip_name]


def test_a_garbage_sidecar_is_reported_and_its_zip_left_in_place(base):
    fill(base, {"a.zip/x": b"x"})
    (zip_name,) = inbox_temp_zips(base)
    sidecar = os.path.join(base, "inbox", zip_name[:-4] + ".json")
    with open(sidecar, "w") as handle:
        handle.write("{not json")
    stats = rear.scavenge(base)
    assert "not valid JSON" in stats.errors[0][1]
    assert inbox_temp_zips(base) == [zip_name]


def test_a_symlink_in_inbox_is_never_followed(base, tmp_path):
    target = tmp_path / "elsewhere.zip"
    with zipfile.ZipFile(str(target), "w") as handle:
        handle.writestr("a.zip/stolen", b"x")
    os.makedirs(os.path.join(base, "inbox"))
    link = os.path.join(base, "inbox", "link.zip")
    os.symlink(str(target), link)
    stats = rear.scavenge(base, flush=True)
    assert "symlink" in stats.errors[0][1]
    assert os.path.islink(link) and target.exists()
    assert archives_of(base) == {}


def test_temp_zip_entries_naming_paths_outside_the_base_are_refused(base):
    path = write_raw_temp_zip(base, [("a.zip/ok", b"1"), ("../evil.zip/x", b"2")], sealed=True)
    stats = rear.scavenge(base)
    assert "not a valid rear path" in stats.errors[0][1]
    assert os.path.exists(path) and archives_of(base) == {}
    assert not os.path.exists(os.path.join(os.path.dirname(base), "evil.zip"))


def test_a_directory_where_the_archive_should_be_is_reported(base):
    os.makedirs(os.path.join(base, "a.zip"))
    fill(base, {"a.zip/x": b"x"})
    stats = rear.scavenge(base)
    assert "is a directory" in stats.errors[0][1]
    assert len(inbox_temp_zips(base)) == 1


def test_a_non_zip_file_where_the_archive_should_be_is_left_untouched(base):
    archive = os.path.join(base, "a.zip")
    with open(archive, "wb") as handle:
        handle.write(b"precious user data, not a zip")
    fill(base, {"a.zip/x": b"x"})
    stats = rear.scavenge(base)
    assert "not a zip archive" in stats.errors[0][1]
    assert open(archive, "rb").read() == b"precious user data, not a zip"
    assert len(inbox_temp_zips(base)) == 1


def test_archive_written_by_zipfile_is_appended_to(base):
    archive = os.path.join(base, "a.zip")
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("old", b"old")
        handle.comment = b"kept comment"
    fill(base, {"a.zip/new": b"new"})
    rear.scavenge(base)
    assert archives_of(base)["a.zip"] == {"old": b"old", "new": b"new"}
    assert zipfile.ZipFile(archive).comment == b"kept comment"


def test_without_fcntl_locks_the_scavenger_warns_and_uses_age_only(base, monkeypatch, caplog):
    fill(base, {"a.zip/sealed": b"s"})
    write_raw_temp_zip(base, [("a.zip/young", b"y")])
    young = inbox_temp_zips(base)
    os.utime(os.path.join(base, "inbox", young[0]))   # make it young again

    def refuse(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(rear, "_lockf", refuse)
    monkeypatch.setattr(rear, "_warned_no_locks", set())
    with caplog.at_level(logging.WARNING, logger="rear"):
        stats = rear.scavenge(base, flush=True)
    assert "refuses fcntl locks" in caplog.text and "only one scavenger" in caplog.text
    assert stats.files_moved == 1   # the sealed one; the unsealed one is too young
    assert stats.waiting == 1


def test_a_bad_archive_blocks_none_of_the_others_and_all_bad_ones_are_reported_at_once(base):
    files = {dest + "/x": dest.encode() for dest in ("a.zip", "b.zip", "c.zip", "d.zip")}
    fill(base, files)                                        # one temp zip feeds all four
    os.mkdir(os.path.join(base, "a.zip"))                    # a directory where one belongs
    with open(os.path.join(base, "c.zip"), "w") as handle:   # a user's text file
        handle.write("my notes\n")
    stats = rear.scavenge(base)
    reasons = [reason for _path, reason in stats.errors]
    assert len(reasons) == 2 and stats.files_moved == 2
    assert "a.zip is a directory, not an archive; move it away" in reasons[0]
    assert "c.zip is not a zip archive" in reasons[1]
    assert all("its entries stay in their temp zips in inbox/" in r for r in reasons)
    assert read_archive(os.path.join(base, "b.zip")) == {"x": b"b.zip"}
    assert read_archive(os.path.join(base, "d.zip")) == {"x": b"d.zip"}
    (sidecar,) = sidecars(base)
    assert sorted(sidecar["done"]) == ["b.zip", "d.zip"]
    os.rmdir(os.path.join(base, "a.zip"))                    # the user fixes both
    os.remove(os.path.join(base, "c.zip"))
    stats = rear.scavenge(base)
    assert stats.errors == [] and stats.files_moved == 2 and inbox_temp_zips(base) == []
    assert_exactly_once(base, files)


def test_the_cli_prints_each_problem_once_naming_its_file_once(base):
    fill(base, {"a.zip/x": b"x"})
    os.mkdir(os.path.join(base, "a.zip"))
    result = run_cli("scavenge", base)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rear: error: ")
    assert lines[0].count(os.path.join(base, "a.zip")) == 1, lines[0]


# -- scavenger: archives made by other tools


class Unseekable(io.RawIOBase):
    """A write-only stream zipfile cannot seek: its entries get data
    descriptors (bit 3), as a zip streamed to a pipe has."""

    def __init__(self):
        super().__init__()
        self.data = bytearray()

    def writable(self):
        return True

    def write(self, data):
        self.data += data
        return len(data)


def zip_of(*entries, stream=False, comments=()):
    """The bytes of a zip made by zipfile of (name, data) entries, stored,
    dated 2020; ``stream``: sizes after the data; ``comments``: a file
    comment per entry."""
    target = Unseekable() if stream else io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # "Duplicate name"
        with zipfile.ZipFile(target, "w") as handle:
            for number, (name, data) in enumerate(entries):
                info = zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0))
                if number < len(comments):
                    info.comment = comments[number]
                if stream:
                    with handle.open(info, "w") as member:
                        member.write(data)
                else:
                    handle.writestr(info, data)
    return bytes(target.data if stream else target.getvalue())


def central_offsets(data):
    """Offsets of a small zip's central records, in order."""
    eocd = data.rindex(b"PK\x05\x06")
    count, cd_size, cd_offset = struct.unpack_from("<HLL", data, eocd + 10)
    offsets, position = [], cd_offset
    for _ in range(count):
        offsets.append(position)
        lengths = struct.unpack_from("<3H", data, position + 28)
        position += 46 + sum(lengths)
    return offsets


def patched(data, offset, fmt, *values):
    data = bytearray(data)
    struct.pack_into(fmt, data, offset, *values)
    return bytes(data)


def eocd_patched(data, field_offset, fmt, *values):
    return patched(data, data.rindex(b"PK\x05\x06") + field_offset, fmt, *values)


def central_patched(data, number, field_offset, fmt, *values):
    return patched(data, central_offsets(data)[number] + field_offset, fmt, *values)


def without_local_name(data):
    """The first local header's name cut out (central offsets adjusted)."""
    name_length = struct.unpack_from("<H", data, 26)[0]
    data = data[:26] + struct.pack("<H", 0) + data[28:30] + data[30 + name_length:]
    eocd = data.rindex(b"PK\x05\x06")
    cd_offset = struct.unpack_from("<L", data, eocd + 16)[0]
    return patched(data, eocd + 16, "<L", cd_offset - name_length)


def with_zip64_end_records(data, count64=None):
    """Zip64 end record and locator inserted before the end record, which
    keeps its own values; ``count64`` overrides the zip64 entry count."""
    eocd = data.rindex(b"PK\x05\x06")
    count, cd_size, cd_offset = struct.unpack_from("<HLL", data, eocd + 10)
    record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count,
                         count if count64 is None else count64, cd_size, cd_offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, eocd, 1)
    return data[:eocd] + record + locator + data[eocd:]


def with_duplicate_central_record(data):
    """The first central record twice: two entries, one local header."""
    offsets = central_offsets(data)
    record = data[offsets[0]:offsets[1]]
    eocd = data.rindex(b"PK\x05\x06")
    count, cd_size = struct.unpack_from("<HL", data, eocd + 10)
    data = data[:eocd] + record + data[eocd:]
    eocd += len(record)
    return patched(patched(data, eocd + 8, "<2H", count + 1, count + 1),
                   eocd + 12, "<L", cd_size + len(record))


TWO = zip_of(("abc", b"hello"), ("def", b"world"))
TWO_STREAMED = zip_of(("abc", b"hello"), ("def", b"world"), stream=True)
CD_START = central_offsets(TWO)[0]
SECOND_HEADER = len(b"PK\x03\x04") + 26 + 3 + 5

# (name, archive bytes, the problem the refusal names: after the archive's
# path, which the message starts with)
INCONSISTENT_ARCHIVES = [
    ("an empty member name", zip_of(("", b"x")),
     " is inconsistent (the entry whose central record is at byte 31 has an empty name)"),
    ("two empty member names", zip_of(("", b"x"), ("", b"y")),
     " is inconsistent (the entry whose central record is at byte 62 has an empty name)"),
    ("a local header without its name", without_local_name(TWO),
     " is inconsistent (entry 'abc': its local header at byte 0 names it '')"),
    ("a local header with another name", TWO.replace(b"abc", b"abd", 1),
     " is inconsistent (entry 'abc': its local header at byte 0 names it 'abd')"),
    ("a local header with another method", patched(TWO, 8, "<H", 8),
     " is inconsistent (entry 'abc': its local header says compression method 8, its "
     "central record compression method 0)"),
    ("a local header with other flags", patched(TWO, 6, "<H", 0x800),
     " is inconsistent (entry 'abc': its local header says flags 0x0800, its central "
     "record flags 0x0000)"),
    ("a local header with another CRC", patched(TWO, 14, "<L", 0),
     " is inconsistent (entry 'abc': its local header says CRC 00000000, size 5, compressed "
     "5; its central record 3610a686, 5, 5)"),
    ("a file comment longer than its length says",
     central_patched(zip_of(("abc", b"hello"), ("def", b"world"), comments=(b"", b"0123")),
                     1, 32, "<H", 0),
     " is inconsistent (its central directory has 4 bytes after its 2 records (a length in "
     "a record, or the entry count, is wrong))"),
    ("a name that is not the UTF-8 its flag says",
     central_patched(patched(TWO.replace(b"abc", b"\xffbc"), 6, "<H", 0x800), 0, 8, "<H",
                     0x800),
     " is inconsistent (entry name at byte %d is not valid UTF-8)" % CD_START),
    ("an entry count short of the records", eocd_patched(TWO, 8, "<2H", 1, 1),
     " is inconsistent (its central directory has 49 bytes after its 1 record (a length in "
     "a record, or the entry count, is wrong))"),
    ("an entry count that overflows", with_zip64_end_records(TWO, count64=2 ** 63),
     ": its end record counts 9223372036854775808 entries, more than its central directory "
     "of 98 bytes can hold; the archive is damaged"),
    ("end records that disagree", eocd_patched(with_zip64_end_records(TWO), 8, "<2H", 1, 1),
     " is inconsistent (its end record and zip64 end record disagree on the entry count "
     "(1 and 2))"),
    ("a part of a split archive", eocd_patched(TWO, 4, "<H", 1),
     " is inconsistent (its end record describes one part of an archive split over several "
     "files (disk 1, central directory on disk 0, 2 of 2 entries here))"),
    ("a zip64 record with another offset",
     eocd_patched(with_zip64_end_records(TWO), 16, "<L", 7),
     " is inconsistent (its end record and zip64 end record disagree on the central "
     "directory offset (7 and %d))" % CD_START),
    ("a central record pointing into data", central_patched(TWO, 1, 42, "<L", 33),
     " is inconsistent (entry 'def': no local header at byte 33, where its central record "
     "says it is)"),
    ("two records of one local header", with_duplicate_central_record(TWO),
     " is inconsistent (the entry at byte 0 starts inside the one at byte 0 (bytes 0 to "
     "38))"),
    ("entries that overlap", central_patched(TWO_STREAMED, 0, 20, "<L", 40),
     " is inconsistent (the entry at byte %d starts inside the one at byte 0 (bytes 0 to "
     "85))" % (SECOND_HEADER + 16)),
    ("data running into the central directory", central_patched(TWO_STREAMED, 1, 20, "<L", 99),
     " is inconsistent (entry 'def': its data (from byte %d) runs past the start of the "
     "central directory at byte %d)" % (SECOND_HEADER + 16, central_offsets(TWO_STREAMED)[0])),
    ("bytes after the end record", TWO + b"junk",
     ": its end of central directory record announces a 0-byte comment, but 4 bytes follow it"),
    ("data prepended, offsets not adjusted", b"JUNK" + TWO,
     ": central directory at %d+98 does not end at the end records (%d); the archive is "
     "damaged or has data prepended" % (CD_START, CD_START + 102)),
]


@pytest.mark.parametrize("kind, data, problem", INCONSISTENT_ARCHIVES,
                         ids=[case[0] for case in INCONSISTENT_ARCHIVES])
def test_an_inconsistent_archive_is_refused_left_byte_identical_and_its_entries_wait(
        base, kind, data, problem):
    archive = os.path.join(base, "d.zip")
    with open(archive, "wb") as handle:
        handle.write(data)
    files = {"d.zip/new%d" % n: b"%d" % n for n in range(3)}
    fill(base, files)
    stats = rear.scavenge(base, flush=True)
    assert stats.files_moved == 0
    assert stats.errors == [(archive, archive + problem + (
        "; rear leaves it as it is and appends nothing to it: move it away (rear then starts "
        "a new archive), or if it is a damaged zip, repair it with 'zip -F %s --out "
        "FIXED.zip' and put FIXED.zip in its place; its entries stay in their temp zips in "
        "inbox/, and a later pass commits them" % archive))]
    with open(archive, "rb") as handle:
        assert handle.read() == data
    assert len(inbox_temp_zips(base)) == 1
    assert rear.verify(archive), "verify passes what the scavenger refuses"


def test_entries_refused_by_an_inconsistent_archive_go_to_a_new_one_once_it_is_moved_away(
        base):
    archive = os.path.join(base, "d.zip")
    with open(archive, "wb") as handle:
        handle.write(without_local_name(TWO))
    files = {"d.zip/new%d" % n: b"%d" % n for n in range(3)}
    fill(base, files)
    assert rear.scavenge(base, flush=True).files_moved == 0
    os.rename(archive, os.path.join(base, "old.bin"))
    stats = rear.scavenge(base, flush=True)
    assert stats.files_moved == 3 and stats.errors == [] and inbox_temp_zips(base) == []
    assert archives_of(base) == {"d.zip": {"new0": b"0", "new1": b"1", "new2": b"2"}}


def test_the_cli_refuses_an_archive_whose_entry_count_overflows_without_a_traceback(base):
    with open(os.path.join(base, "d.zip"), "wb") as handle:
        handle.write(with_zip64_end_records(TWO, count64=2 ** 63))
    fill(base, {"d.zip/x": b"x"})
    result = run_cli("scavenge", "--flush", base)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("rear: error: %s: its end record counts" % os.path.join(
        base, "d.zip"))


@pytest.mark.parametrize("kind", ["records in reverse order", "data before the first entry",
                                  "sizes after the data", "an empty archive"])
def test_a_consistent_archive_of_another_tool_is_appended_to_and_every_reader_agrees(
        base, kind):
    archive = os.path.join(base, "d.zip")
    if kind == "records in reverse order":
        offsets = central_offsets(TWO)
        end = TWO.rindex(b"PK\x05\x06")
        data = (TWO[:offsets[0]] + TWO[offsets[1]:end] + TWO[offsets[0]:offsets[1]]
                + TWO[end:])
    elif kind == "data before the first entry":        # a self-extractor's stub
        with open(archive, "wb") as handle:
            handle.write(b"#!/bin/sh\nexit 0\n")
        with zipfile.ZipFile(archive, "a") as handle:
            handle.writestr("abc", b"hello")
        with open(archive, "rb") as handle:
            data = handle.read()
    elif kind == "sizes after the data":
        data = TWO_STREAMED
    else:
        data = zip_of()
    with open(archive, "wb") as handle:
        handle.write(data)
    with zipfile.ZipFile(archive) as handle:
        before = {name: handle.read(name) for name in handle.namelist()}
    fill(base, {"d.zip/new": b"new"})
    stats = rear.scavenge(base, flush=True)
    assert stats.errors == [] and stats.files_moved == 1
    assert read_archive(archive) == dict(before, new=b"new")     # unzip -t too
    assert rear.verify(archive) == []


# -- scavenger: an archive lock held by a scavenger on a node that died


@pytest.fixture
def stuck_commit(base):
    """A scavenger of host "node17" stopped mid-commit to a.zip, holding its
    lock; yields (its pid, the files it was committing, the archive's bytes
    before)."""
    files = {"a.zip/old/%d" % n: b"old %d" % n for n in range(5)}
    fill(base, files)
    rear.scavenge(base)
    committing = {"a.zip/stuck/%d" % n: os.urandom(300) for n in range(20)}
    fill(base, committing)
    child = run_child(STUCK_SCAVENGER_SCRIPT, base, "node17")
    try:
        wait_until(lambda: rear._process_state(child.pid) == rear._PROCESS_STOPPED)
        yield child.pid, dict(files, **committing)
    finally:
        child.kill()
        child.wait()


def wait_until(condition, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_archive_lock_records_its_holder_for_other_clients(base, stuck_commit):
    pid, _files = stuck_commit
    holder = rear._read_holder(rear._ArchivePaths(base, "a.zip").lock)
    assert (holder.host, holder.pid) == ("node17", pid)
    assert time.time() - 120 < holder.since <= time.time()


def test_a_scavenger_waiting_for_an_archive_lock_says_who_holds_it_and_gives_up(
        base, stuck_commit, monkeypatch, caplog):
    pid, _files = stuck_commit
    monkeypatch.setattr(rear, "_ARCHIVE_LOCK_REPORT", 0.2)
    monkeypatch.setattr(rear, "_ARCHIVE_LOCK_WAIT", 1.0)
    fill(base, {"a.zip/new": b"new"})
    with caplog.at_level(logging.WARNING, logger="rear"):
        stats = rear.scavenge(base)
    holder = "pid %d on host node17 since " % pid
    way_out = ("; if node17 is down, 'rear scavenge --dead-host node17 %s' takes the lock over"
               % base)
    assert "waiting for its lock: " + holder in caplog.text and way_out in caplog.text
    ((path, reason),) = stats.errors
    assert path == os.path.join(base, "a.zip") and stats.files_moved == 0
    assert reason.startswith("%s stayed locked for 1 s: %s" % (path, holder))
    assert way_out + "; its entries stay in their temp zips in inbox/" in reason
    assert len(inbox_temp_zips(base)) == 2


def test_a_reader_of_a_locked_archive_says_who_holds_the_lock(base, stuck_commit):
    pid, _files = stuck_commit
    with pytest.raises(rear.ArchiveError) as raised:
        rear.open_archive(base, "a.zip", lock_timeout=0.2)
    assert "a scavenger is committing to it for more than 0.2 s" in str(raised.value)
    assert ("pid %d on host node17 since" % pid) in str(raised.value)


def test_status_shows_a_commit_in_progress_and_who_holds_it_not_an_interrupted_one(
        base, stuck_commit):
    pid, _files = stuck_commit
    report = rear.status(base)
    assert report.journals == [] and len(report.committing) == 1
    (archive,) = report.archives
    assert archive.error is None
    assert archive.locked.startswith("pid %d on host node17 since " % pid)
    result = run_cli("status", base)
    assert "commits in progress: 1" in result.stdout
    assert "interrupted commits" not in result.stdout
    assert "a.zip  (being committed to: pid %d on host node17" % pid in result.stdout


def test_verify_waits_for_a_commit_in_bounded_time_and_says_who_holds_the_lock(
        base, stuck_commit, monkeypatch):
    pid, _files = stuck_commit
    monkeypatch.setattr(rear, "_ARCHIVE_LOCK_WAIT", 0.5)
    ((path, problem),) = rear.verify(base)
    assert path == os.path.join(base, "a.zip")
    assert "a scavenger is committing to it for more than 0.5 s" in problem
    assert "pid %d on host node17 since" % pid in problem


def test_ctrl_c_while_waiting_for_another_scavengers_lock_does_not_claim_its_commit(
        base, stuck_commit):
    fill(base, {"a.zip/new": b"new"})
    scavenger = subprocess.Popen([sys.executable, "-m", "rear", "scavenge", base],
                                 stderr=subprocess.PIPE, text=True, env=CHILD_ENV,
                                 preexec_fn=ctrl_c_as_at_a_terminal)
    time.sleep(2.0)                     # polling a.zip's lock by now
    scavenger.send_signal(signal.SIGINT)
    _out, err = scavenger.communicate(timeout=60)
    assert scavenger.returncode == 1
    assert "rear: interrupted; a commit in progress, if any, was rolled back" in err, err
    assert "commit point" not in err


def test_dead_host_takes_over_the_archive_lock_rolls_back_its_commit_and_loses_nothing(
        base, stuck_commit, monkeypatch):
    _pid, files = stuck_commit
    monkeypatch.setattr(rear, "_DEAD_HOST_QUIET", 0.3)
    fill(base, {"a.zip/new": b"new"})
    files["a.zip/new"] = b"new"
    time.sleep(0.4)
    stats = rear.scavenge(base, flush=True, dead_hosts=["node17"])
    assert stats.errors == []
    assert stats.locks_taken_over == 1 and stats.recovered_journals == 1
    # The frozen scavenger's claims on its (sealed) temp zips were taken too.
    assert inbox_temp_zips(base) == []
    assert_exactly_once(base, files)          # unzip -t included
    assert rear._read_holder(rear._ArchivePaths(base, "a.zip").lock).host != "node17"
    fill(base, {"a.zip/later": b"later"})     # the new lock file works for everyone
    assert rear.scavenge(base).files_moved == 1


def test_dead_host_flush_right_after_the_crash_waits_out_the_quiet_period_and_finishes(
        base, stuck_commit, monkeypatch):
    _pid, files = stuck_commit
    monkeypatch.setattr(rear, "_DEAD_HOST_QUIET", 1.0)
    stats = rear.scavenge(base, flush=True, dead_hosts=["node17"])    # no pause first
    assert stats.errors == [] and stats.locks_taken_over == 1 and stats.taken_over == 1
    assert inbox_temp_zips(base) == []
    assert_exactly_once(base, files)


def test_two_scavengers_taking_over_one_archive_lock_at_once_lose_nothing(
        base, stuck_commit):
    _pid, files = stuck_commit
    script = """
        import sys, rear
        rear._DEAD_HOST_QUIET = 0.3
        stats = rear.scavenge(sys.argv[1], flush=True, dead_hosts=["node17"])
        sys.exit(1 if stats.errors else 0)
    """
    time.sleep(0.4)
    takers = [run_child(script, base) for _ in range(2)]
    assert [taker.wait(120) for taker in takers] == [0, 0]
    assert inbox_temp_zips(base) == []
    assert_exactly_once(base, files)


def test_dead_host_refuses_to_take_over_an_archive_lock_whose_holder_runs_here(base):
    fill(base, {"a.zip/x": b"x"})
    child = run_child(STUCK_SCAVENGER_SCRIPT, base, "")      # this host's own name
    try:
        wait_until(lambda: rear._process_state(child.pid) == rear._PROCESS_STOPPED)
        fill(base, {"a.zip/y": b"y"})
        stats = rear.scavenge(base, dead_hosts=[socket.gethostname()])
    finally:
        child.kill()
        child.wait()
    assert any("its lock's holder, pid %d on host %s" % (child.pid, socket.gethostname())
               in reason and "runs on this host; --dead-host is for a node that is down"
               in reason for _path, reason in stats.errors), stats.errors
    assert rear.scavenge(base, flush=True).errors == []       # its lock died with it
    assert_exactly_once(base, {"a.zip/x": b"x", "a.zip/y": b"y"})


def test_a_lock_taken_on_a_replaced_lock_file_is_taken_again_on_the_new_one(base):
    paths = rear._ArchivePaths(base, "a.zip")
    os.makedirs(paths.directory)
    lock = rear._LockFile(paths.lock)
    try:
        replacement = paths.lock + ".new"
        open(replacement, "w").close()
        os.replace(replacement, paths.lock)       # what a takeover does
        assert lock.try_lock(exclusive=True)
        assert lock.is_current()
    finally:
        lock.close()


# -- scavenger: I/O errors and kills at each commit step


def test_write_error_reaches_the_caller_and_earlier_files_are_kept(base, monkeypatch):
    real = rear._pwrite_all
    with rear.rear_fs(base) as fs:
        fs.write_bytes("a.zip/before", b"b" * 100)

        def full(fd, data, offset):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(rear, "_pwrite_all", full)
        with pytest.raises(OSError) as info:
            fs.write_bytes("a.zip/failed", b"f" * 100)
        assert info.value.errno == errno.ENOSPC
        monkeypatch.setattr(rear, "_pwrite_all", real)
        fs.write_bytes("a.zip/after", b"a" * 100)
    rear.scavenge(base)
    assert archives_of(base)["a.zip"] == {"before": b"b" * 100, "after": b"a" * 100}


def test_a_failed_append_rolls_the_archive_back_and_keeps_the_temp_zip(base, monkeypatch):
    fill(base, {"a.zip/old": b"old"})
    rear.scavenge(base)
    archive = os.path.join(base, "a.zip")
    before = open(archive, "rb").read()
    fill(base, {"a.zip/new%d" % n: os.urandom(1000) for n in range(50)})

    def full(*args):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(rear, "_pack_end_records", full)
    stats = rear.scavenge(base)
    assert "quota" in stats.errors[0][1]
    assert open(archive, "rb").read() == before
    assert len(inbox_temp_zips(base)) == 1
    assert not [n for n in os.listdir(os.path.join(base, "inbox", "archives"))
                if not n.endswith((".lock", ".index"))]
    monkeypatch.undo()
    assert rear.scavenge(base).files_moved == 50


SCAVENGER_CRASH_SCRIPT = """
    import os, signal, sys, rear
    base, step = sys.argv[1], sys.argv[2]

    def checkpoint(name):
        # rear's seam for crash tests: killed at the first pass of the step
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)

    rear._crash_test_point = checkpoint
    rear.scavenge(base, flush=True, max_size=int(sys.argv[3]))
    sys.exit(3)   # the step was never reached
"""


# Every named step of rear's commit protocol (rear._crash_test_point): journal
# written; new entries over the old tail, no new end yet; archive complete,
# journal not yet committed; commit point passed, temp zips not yet deleted;
# a temp zip deleted but not its sidecar; temp zips gone, .commit not yet
# deleted; an archive hard-linked to its rolled-over name, not yet unlinked;
# an archive rolled over; a temp zip salvaged.
CRASH_STEPS = ["journal-written", "entries-written", "appended", "committed",
               "temp-zip-deleted", "temps-finished", "rollover-linked", "rolled-over",
               "salvaged"]


@pytest.mark.parametrize("inbox", ["flat", "sharded"])
@pytest.mark.parametrize("step", CRASH_STEPS)
def test_scavenger_killed_at_each_commit_step_then_rerun_loses_and_duplicates_nothing(
        base, step, inbox):
    files = {}
    for n in range(3):
        batch = {"a.zip/%d/%d" % (n, i): os.urandom(500) for i in range(20)}
        batch.update({"b.zip/%d/%d" % (n, i): os.urandom(500) for i in range(5)})
        if n == 0:
            fill(base, batch)
            rear.scavenge(base)   # so that there is an old tail to overwrite
        elif step == "salvaged" and n == 2:
            write_raw_temp_zip(base, batch.items())
        else:
            fill(base, batch, shard_inbox=inbox == "sharded")
        files.update(batch)
    rolling = step in ("rollover-linked", "rolled-over")
    max_size = 10000 if rolling else rear.DEFAULT_MAX_SIZE
    child = run_child(SCAVENGER_CRASH_SCRIPT, base, step, str(max_size))
    assert child.wait(120) == -signal.SIGKILL, "the scavenger was not killed at %s" % step
    if step == "rollover-linked":     # one file, two names: readers count it once
        assert os.path.samefile(os.path.join(base, "a.zip"), os.path.join(base, "a.~1~.zip"))
        with rear.open_archive(base, "a.zip") as reader:
            names = list(reader.names())
        assert len(names) == len(set(names)) == 20
    for archive in ("a.zip", "b.zip"):
        path = os.path.join(base, archive)
        if os.path.exists(path) and step != "entries-written":
            unzip_test(path)
    stats = rear.scavenge(base, flush=True, max_size=max_size)
    assert stats.errors == []
    assert inbox_temp_zips(base) == []
    assert_exactly_once(base, files)
    if rolling:
        assert not os.path.samefile(os.path.join(base, "a.zip"),
                                    os.path.join(base, "a.~1~.zip"))


@pytest.mark.parametrize("dests", [["a.zip"], ["a.zip", "b.zip"]])
def test_recovery_past_the_commit_point_finishes_the_temp_zips_of_a_sharded_inbox(base, dests):
    files = {"%s/%d" % (dest, n): b"%d" % n for dest in dests for n in range(5)}
    fill(base, files, shard_inbox=True)              # one temp zip feeding every dest
    child = run_child(SCAVENGER_CRASH_SCRIPT, base, "committed", str(rear.DEFAULT_MAX_SIZE))
    assert child.wait(120) == -signal.SIGKILL       # a.zip committed, its temp zip not told
    stats = rear.recover(base)                       # no pass over sealed temp zips: only
    assert stats.recovered_journals == 1             # the journal names this one
    if dests == ["a.zip"]:
        assert inbox_temp_zips(base) == []           # its last archive: deleted
    else:
        (sidecar,) = sidecars(base)
        assert sidecar["done"] == ["a.zip"]
    assert rear.scavenge(base).errors == [] and inbox_temp_zips(base) == []
    assert_exactly_once(base, files)


@pytest.mark.parametrize("step", ["committed", "temps-finished", "rolled-over"])
def test_scavenger_killed_between_the_commits_of_a_capped_batch_then_rerun_loses_nothing(
        base, step):
    files = {"a.zip/%02d" % n: os.urandom(500) for n in range(30)}
    fill(base, files, compression="stored")       # one temp zip: three archives' worth
    child = run_child(SCAVENGER_CRASH_SCRIPT, base, step, "6000")
    assert child.wait(120) == -signal.SIGKILL
    assert len(inbox_temp_zips(base)) == 1         # nothing finished it yet
    stats = rear.scavenge(base, flush=True, max_size=6000)
    assert stats.errors == [] and inbox_temp_zips(base) == []
    assert_exactly_once(base, files)
    for name in os.listdir(base):
        if name.endswith(".zip"):
            assert os.path.getsize(os.path.join(base, name)) <= 6000
            unzip_test(os.path.join(base, name))


def test_concurrent_writers_and_scavengers_lose_and_duplicate_nothing(base):
    until = time.time() + 4.0
    scavengers = [run_child(SCAVENGER_LOOP_SCRIPT, base, str(until), "0.3") for _ in range(3)]
    writers = [start_writer(base, seed=seed, threads=2) for seed in range(6)]
    time.sleep(max(0, until - time.time() - 0.5))
    acknowledged = {}
    for writer in writers:
        acknowledged.update(writer.kill())
    assert [scavenger.wait(120) for scavenger in scavengers] == [0, 0, 0]
    rear.scavenge(base, flush=True, rotation_span=0.3)
    assert inbox_temp_zips(base) == []
    found = all_entries(base)
    for name, data in acknowledged.items():
        assert found.get(name) == data, "acknowledged %s was lost or altered" % name


@pytest.mark.parametrize("trial", range(4))
def test_scavenger_killed_at_a_random_instant_then_rerun_loses_nothing(base, trial):
    rng = random.Random(trial)
    files = {}
    for n in range(12):
        batch = {"%s.zip/%d/%d" % ("ab"[i % 2], n, i): os.urandom(rng.randint(0, 3000))
                 for i in range(150)}
        fill(base, batch, compression=rng.choice(["stored", "deflated"]))
        files.update(batch)
    child = run_child("""
        import sys, rear
        rear.scavenge(sys.argv[1])
    """, base)
    time.sleep(rng.uniform(0.0, 0.6))
    child.kill()
    child.wait(60)
    rear.scavenge(base)
    assert inbox_temp_zips(base) == []
    assert_exactly_once(base, files)


# -- scavenger: scavengerd and zip64


def test_scavengerd_collects_in_the_background_and_on_exit(base):
    with rear.scavengerd(base, rotation_span=0.2) as daemon:
        with rear.rear_fs(base, rotation_span=0.1) as fs:
            fs.write_bytes("a.zip/early", b"e")
            deadline = time.monotonic() + 10
            while not os.path.exists(os.path.join(base, "a.zip")):
                assert time.monotonic() < deadline, "scavengerd never ran"
                time.sleep(0.05)
            fs.write_bytes("a.zip/late", b"l")
    assert archives_of(base)["a.zip"] == {"early": b"e", "late": b"l"}
    assert daemon.stats.files_moved == 2


def test_scavengerd_works_as_async_context_manager(base):
    async def main():
        async with rear.scavengerd(base, rotation_span=10):
            async with rear.rear_fs(base) as fs:
                fs.write_bytes("a.zip/x", b"x")

    asyncio.run(main())
    assert archives_of(base)["a.zip"] == {"x": b"x"}


def test_archive_with_more_than_65535_entries_uses_zip64(base):
    files = {"a.zip/%05x" % n: b"" for n in range(70000)}
    fill(base, files, compression="stored")
    rear.scavenge(base)
    fill(base, {"a.zip/one-more": b"1"})
    rear.scavenge(base)   # appending to a zip64 archive
    archive = os.path.join(base, "a.zip")
    unzip_test(archive)
    with zipfile.ZipFile(archive) as handle:
        assert len(handle.infolist()) == 70001
        assert handle.read("one-more") == b"1"
    with open(archive, "rb") as handle:
        assert b"PK\x06\x06" in handle.read()[-200:]


# -- a crashed node whose locks the filesystem keeps (MooseFS: a day): --dead-host

# A writer that acknowledges a few files, then holds its unsealed temp zip
# (and its lock) until killed: what the scavengers of another node see of a
# crashed node whose client session the filesystem keeps.
HOLDING_WRITER = """
    import sys, time, rear
    with rear.rear_fs(sys.argv[1], rotation_span=3600, sync="file") as fs:
        for n in range(5):
            fs.write_bytes("a.zip/held/%d" % n, b"held %d" % n)
        print("ready", flush=True)
        time.sleep(3600)
"""


@pytest.fixture
def held_temp_zip(base):
    """(path of an unsealed temp zip a running writer holds, its sidecar path)."""
    writer = run_child(HOLDING_WRITER, base, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "ready\n"
        [name] = inbox_temp_zips(base)
        path = os.path.join(base, "inbox", name)
        yield path, rear._sidecar_path(path)
    finally:
        writer.kill()
        writer.wait(60)


def _as_if_written_on(sidecar, host, still_for):
    """Make a held temp zip look like one of ``host``'s, unchanged for ``still_for`` s."""
    manifest = rear._read_sidecar(sidecar)
    manifest.host = host
    rear._write_sidecar(sidecar, manifest)
    past = time.time() - still_for
    os.utime(sidecar[:-len(".json")] + ".zip", (past, past))


def test_a_locked_temp_zip_of_a_host_declared_down_is_taken_over(base, held_temp_zip):
    path, sidecar = held_temp_zip
    _as_if_written_on(sidecar, "node-17", still_for=60)
    stats = rear.scavenge(base, flush=True, dead_hosts=["node-17"])
    assert (stats.files_moved, stats.salvaged, stats.errors) == (5, 1, [])
    assert not os.path.exists(path) and not os.path.exists(sidecar)
    assert_exactly_once(base, {"a.zip/held/%d" % n: b"held %d" % n for n in range(5)})


def test_a_locked_temp_zip_without_a_sidecar_is_known_by_its_name(base, held_temp_zip):
    """Its writer died between making it and writing its sidecar."""
    path, sidecar = held_temp_zip
    os.unlink(sidecar)
    renamed = os.path.join(base, "inbox", "node-17" + os.path.basename(path)[len(
        rear._short_hostname()):])
    os.rename(path, renamed)      # the writer's lock goes with the inode
    past = time.time() - 60
    os.utime(renamed, (past, past))
    stats = rear.scavenge(base, flush=True, dead_hosts=["node-17"])
    assert (stats.files_moved, stats.taken_over, stats.errors) == (5, 1, [])


LOCK_HOLDER = """
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(3600)
"""


LOCK_HOLDER_FOR_A_WHILE = """
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_scavenger_commits_to_archives_nobody_holds_first_then_waits_for_the_busy_one(
        base, monkeypatch):
    # Two scavengers going through the same archives in the same order took
    # turns at every archive lock.
    fill(base, {"a.zip/0": b"0", "b.zip/0": b"0"})
    rear.scavenge(base)
    files = {"%s.zip/1" % dest: dest.encode() for dest in "abc"}
    fill(base, files)
    committed = []
    real_commit = rear._commit_additions
    monkeypatch.setattr(rear, "_commit_additions", lambda paths, *args: committed.append(
        (paths.dest, time.monotonic())) or real_commit(paths, *args))
    holder = run_child(LOCK_HOLDER_FOR_A_WHILE, rear._ArchivePaths(base, "a.zip").lock, "1.5",
                       stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        released = time.monotonic() + 1.0      # at the soonest
        stats = rear.scavenge(base)
    finally:
        holder.kill()
        holder.wait(60)
    assert (stats.files_moved, stats.errors) == (3, [])
    assert [dest for dest, _when in committed] == ["b.zip", "c.zip", "a.zip"]
    assert committed[1][1] < released <= committed[2][1]
    assert_exactly_once(base, dict(files, **{"a.zip/0": b"0", "b.zip/0": b"0"}))


def test_a_sealed_temp_zip_still_locked_by_a_host_declared_down_is_taken_over(base):
    """Its writer died between sealing and closing it (or the lock is a
    scavenger's claim: then the second commit skips every entry)."""
    fill(base, {"a.zip/1": b"one", "b.zip/2": b"two"})
    [name] = inbox_temp_zips(base)
    path = os.path.join(base, "inbox", name)
    _as_if_written_on(rear._sidecar_path(path), "node-17", still_for=60)
    holder = run_child(LOCK_HOLDER, path, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        assert rear.scavenge(base).busy == 1
        stats = rear.scavenge(base, dead_hosts="node-17")
        assert (stats.files_moved, stats.taken_over, stats.errors) == (2, 1, [])
    finally:
        holder.kill()
        holder.wait(60)
    assert_exactly_once(base, {"a.zip/1": b"one", "b.zip/2": b"two"})
    assert inbox_temp_zips(base) == []


def test_a_locked_temp_zip_of_another_host_stays_busy(base, held_temp_zip):
    path, sidecar = held_temp_zip
    _as_if_written_on(sidecar, "node-17", still_for=60)
    stats = rear.scavenge(base, flush=True, dead_hosts=["node-18"])
    assert (stats.files_moved, stats.busy, stats.errors) == (0, 1, [])
    assert os.path.exists(path)


def test_a_temp_zip_that_just_changed_is_not_taken_over_whatever_the_operator_says(
        base, held_temp_zip):
    path, sidecar = held_temp_zip
    _as_if_written_on(sidecar, "node-17", still_for=1)
    stats = rear.scavenge(base, flush=True, dead_hosts=["node-17"])
    assert stats.files_moved == 0
    [(where, reason)] = stats.errors
    assert where == path and "may be alive" in reason and "again in" in reason
    assert os.path.exists(path)


def test_a_writer_still_running_on_this_host_is_not_taken_over(base, held_temp_zip):
    path, sidecar = held_temp_zip
    _as_if_written_on(sidecar, socket.gethostname(), still_for=60)
    stats = rear.scavenge(base, flush=True, dead_hosts=[socket.gethostname()])
    assert stats.files_moved == 0
    [(where, reason)] = stats.errors
    assert "still runs" in reason and "--dead-host is for a node that is down" in reason


def test_flush_that_leaves_a_locked_temp_zip_tells_how_to_take_it_over(base, held_temp_zip):
    path, sidecar = held_temp_zip
    # past the grace period, the writer's own (2 x 3600 s) included
    _as_if_written_on(sidecar, "node-17", still_for=3 * 3600)
    result = run_cli("scavenge", "--flush", base)
    assert result.returncode == 3
    assert "node-17" in result.stderr and "--dead-host node-17" in result.stderr
    status = run_cli("status", base)
    assert "unchanged since" in status.stdout and "--dead-host node-17" in status.stdout
    result = run_cli("scavenge", "--flush", "--dead-host", "node-17", base)
    assert result.returncode == 0, result.stderr
    assert "taking over" in result.stderr
    assert_exactly_once(base, {"a.zip/held/%d" % n: b"held %d" % n for n in range(5)})


def test_dead_host_must_name_a_host(base):
    result = run_cli("scavenge", "--flush", "--dead-host", " ", base)
    assert result.returncode == 2
    assert "is not a host name" in result.stderr


# ---------------------------------------------------------------- verify, status, recover


def test_verify_reports_a_corrupted_member(base):
    fill(base, {"a.zip/x": b"y" * 1000}, compression="stored")
    rear.scavenge(base)
    archive = os.path.join(base, "a.zip")
    assert rear.verify(base) == []
    data = bytearray(open(archive, "rb").read())
    data[data.index(b"y" * 100) + 10] ^= 0xFF
    open(archive, "wb").write(bytes(data))
    problems = rear.verify(archive)
    assert problems and "CRC" in problems[0][1]


def test_verify_of_a_base_waits_for_a_commit_in_progress(base):
    fill(base, {"a.zip/x": b"x" * 1000})
    rear.scavenge(base)
    archive = os.path.join(base, "a.zip")
    holder = run_child("""
        import fcntl, os, sys, time
        lock, archive = sys.argv[1], sys.argv[2]
        fd = os.open(lock, os.O_RDWR)
        fcntl.lockf(fd, fcntl.LOCK_EX)            # a scavenger committing
        whole = open(archive, "rb").read()
        open(archive, "wb").write(whole[:-10])    # its tail being rewritten
        print("committing", flush=True)
        time.sleep(1.0)
        open(archive, "wb").write(whole)
    """, rear._ArchivePaths(base, "a.zip").lock, archive, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "committing\n"
    assert rear.verify(base) == []
    assert holder.wait(60) == 0


def test_status_classifies_temp_zips(base):
    fill(base, {"a.zip/sealed": b"s"})
    write_raw_temp_zip(base, [("a.zip/stale", b"x")])
    inbox = os.path.join(base, "inbox")
    with open(os.path.join(inbox, "broken.zip"), "wb") as handle:
        handle.write(b"x")
    with open(os.path.join(inbox, "broken.json"), "w") as handle:
        handle.write("[")
    with rear.rear_fs(base) as fs:
        fs.write_bytes("a.zip/open", b"o")
        report = rear.status(base, rotation_span=1)
    states = sorted(temp.state for temp in report.temp_zips)
    assert states == ["damaged", "open", "sealed", "stale"]


def test_orphaned_sidecars_and_hidden_leftovers_are_cleaned_up(base):
    inbox = os.path.join(base, "inbox")
    os.makedirs(inbox)
    orphan = os.path.join(inbox, "gone.json")
    old_tmp, old_zip = os.path.join(inbox, ".abc.tmp"), os.path.join(inbox, ".new.zip")
    fresh_tmp, fresh_zip = os.path.join(inbox, ".def.tmp"), os.path.join(inbox, ".fresh.zip")
    for path in (orphan, old_tmp, old_zip, fresh_tmp, fresh_zip):
        open(path, "w").close()
    for path in (old_tmp, old_zip):
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    rear.scavenge(base, rotation_span=60)
    # a live writer's may be fresh
    assert sorted(os.listdir(inbox)) == [".def.tmp", ".fresh.zip"]


WRITER_DIES_AT_CREATION = """
    import os, signal, sys, rear
    real = getattr(rear, sys.argv[2])
    def die_in_between(*args, **kwargs):
        if sys.argv[2] == "_write_sidecar" or args[0].endswith(".zip"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    setattr(rear, sys.argv[2], die_in_between)
    if sys.argv[2] == "_lock":
        rear.os.rename = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
        setattr(rear, "_lock", real)
    rear.rear_fs(sys.argv[1]).write_bytes("a.zip/x", b"x")
"""


@pytest.mark.parametrize("step", ["_lock", "_write_sidecar"])
def test_writer_killed_while_creating_its_temp_zip_leaves_nothing_a_flush_keeps(base, step):
    child = run_child(WRITER_DIES_AT_CREATION, base, step,
                      env=dict(CHILD_ENV, REAR_SHARD_INBOX="0"))
    assert child.wait(60) == -signal.SIGKILL
    stats = rear.scavenge(base, flush=True)
    assert stats.errors == [] and inbox_temp_zips(base) == []
    inbox = os.path.join(base, "inbox")
    leftovers = os.listdir(inbox)
    # at most the hidden, empty file of the creation step (removed after grace)
    assert [name for name in leftovers if not name.startswith(".")] == []
    assert all(os.path.getsize(os.path.join(inbox, name)) == 0 for name in leftovers)


@pytest.mark.parametrize("step", ["_lock", "_write_sidecar"])
def test_what_a_writer_killed_while_creating_leaves_in_its_hosts_directory_goes_after_grace(
        base, step):
    child = run_child(WRITER_DIES_AT_CREATION, base, step,
                      env=dict(CHILD_ENV, REAR_SHARD_INBOX="1"))
    assert child.wait(60) == -signal.SIGKILL
    shard = os.path.join(base, "inbox", "hosts", rear._short_hostname())
    assert os.listdir(shard)                     # the hidden file, or a temp zip with no sidecar
    time.sleep(0.1)
    stats = rear.scavenge(base, flush=True, rotation_span=0.01)
    assert stats.errors == [] and os.listdir(shard) == []


def test_in_process_scavenger_never_touches_a_temp_zip_being_created(base, monkeypatch):
    real_write_sidecar = rear._write_sidecar
    seen = []

    def scavenge_first(path, manifest):
        if not seen:   # the temp zip is visible and locked, its sidecar not yet written
            seen.append(rear.scavenge(base, flush=True))
        return real_write_sidecar(path, manifest)

    monkeypatch.setattr(rear, "_write_sidecar", scavenge_first)
    with rear.rear_fs(base) as fs:
        fs.write_bytes("a.zip/x", b"x")
    assert seen and seen[0].busy == 1 and seen[0].files_moved == 0
    monkeypatch.undo()
    rear.scavenge(base)
    assert archives_of(base)["a.zip"] == {"x": b"x"}


def test_recover_salvages_dead_writers_but_leaves_sealed_temp_zips(base):
    fill(base, {"a.zip/sealed": b"s"})
    write_raw_temp_zip(base, [("a.zip/dead", b"d")])
    stats = rear.recover(base)
    assert stats.salvaged == 1
    assert archives_of(base)["a.zip"] == {"dead": b"d"}
    assert len(inbox_temp_zips(base)) == 1


def test_status_and_the_scavenger_agree_on_what_is_stale(base):
    # created long ago, but changed just now (a writer on a filesystem without
    # locks keeps it fresh): its lock is free, so its writer is taken for
    # dead, but neither calls it stale: both wait for the grace period
    path = write_raw_temp_zip(base, [("a.zip/x", b"x")])
    os.utime(path)
    (temp,) = rear.status(base, rotation_span=60).temp_zips
    assert temp.state == "dead" and temp.salvage_after > time.time() + 100
    assert rear.scavenge(base, rotation_span=60).waiting == 1


# ---------------------------------------------------------------- CLI


def test_cli_scavenge_status_ls_cat_and_verify(base):
    fill(base, {"a.zip/dir/x.txt": b"hello\n", "a.zip/y": b"why"})
    result = run_cli("status", base)
    assert result.returncode == 0 and "1 sealed" in result.stdout
    result = run_cli("scavenge", base, "--flush")
    assert result.returncode == 0 and "moved 2 files" in result.stdout, result.stderr
    result = run_cli("ls", os.path.join(base, "a.zip"))
    assert result.returncode == 0 and "dir/x.txt" in result.stdout and "2 files" in result.stdout
    listing = [json.loads(line) for line in     # one object per line
               run_cli("ls", "--json", os.path.join(base, "a.zip")).stdout.splitlines()]
    assert [(item["name"], item["size"]) for item in listing] == [("dir/x.txt", 6), ("y", 3)]
    result = run_cli("cat", os.path.join(base, "a.zip"), "dir/x.txt")
    assert result.returncode == 0 and result.stdout == "hello\n"
    assert run_cli("verify", base).returncode == 0
    report = json.loads(run_cli("status", "--json", base).stdout)
    assert report["archives"] == [{"entries": 2, "path": "a.zip",
                                   "size": os.path.getsize(os.path.join(base, "a.zip"))}]


@pytest.mark.parametrize("command", ["scavenge", "status", "verify", "recover"])
def test_a_directory_above_a_base_is_refused_naming_the_base(tmp_path, command):
    base = str(tmp_path / "run42")
    with rear.rear_fs(base) as fs:
        fs.write_bytes("a.zip/x", b"x")            # a sealed temp zip waits in run42/inbox
    result = run_cli(command, str(tmp_path))
    assert result.returncode == 1, result.stdout
    assert result.stderr == ("rear: error: %s is not a base directory (it has no inbox/) but "
                             "holds a base below it: %s; give the base directory itself\n"
                             % (tmp_path, base))
    assert inbox_temp_zips(base) != [] and not os.path.exists(os.path.join(base, "a.zip"))


def test_an_empty_directory_is_a_base_with_nothing_to_do_yet(tmp_path):
    result = run_cli("scavenge", str(tmp_path))
    assert result.returncode == 0 and "moved 0 files" in result.stdout


def test_a_stopped_writer_is_named_stopped_with_the_way_to_resume_it(base):
    writer = run_child("""
        import sys, time, rear
        fs = rear.rear_fs(sys.argv[1], rotation_span=3600)
        for number in range(75):
            fs.write_bytes("a.zip/%d" % number, b"x" * 100)
        print("written", flush=True)
        time.sleep(120)
    """, base, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "written\n"
        os.kill(writer.pid, signal.SIGSTOP)
        (temp,) = rear.status(base, rotation_span=60).temp_zips
        assert (temp.state, temp.entries) == ("open", 75)
        flushed = run_cli("scavenge", "--flush", base)
        assert flushed.returncode == 3
        assert "a stopped writer holds it (pid %d on %s, stopped (SIGSTOP, or suspended by " \
            "the scheduler): it archives nothing until it is resumed, 'kill -CONT %d' or " \
            "'scontrol resume')" % (writer.pid, socket.gethostname(), writer.pid) \
            in flushed.stderr
        verified = run_cli("verify", base)
        assert verified.returncode == 3
        assert verified.stderr.splitlines() == [
            "rear: error: no archives under %s yet: nothing was verified" % base,
            "rear: error: but 1 temp zip holding 75 entries are still in %s: not in the "
            "archives yet; run 'rear scavenge --flush %s' ('rear status' says whose)"
            % (os.path.join(base, "inbox"), base)]
    finally:
        writer.kill()
        writer.wait()


def test_a_full_disk_at_commit_says_what_to_do_and_counts_nothing_salvaged(base, monkeypatch):
    write_raw_temp_zip(base, [("a.zip/x", b"x" * 100)])      # a dead writer's, unsealed

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rear, "_write_entries", disk_full)
    stats = rear.scavenge(base, flush=True)
    (path, reason), = stats.errors
    archive = os.path.join(base, "a.zip")
    assert reason == ("%s: [Errno 28] No space left on device; free space (or quota) on the "
                      "filesystem of %s; its entries stay in their temp zips in inbox/, "
                      "and a later pass commits them" % (archive, archive))
    assert (stats.files_moved, stats.salvaged, stats.temp_zips_done) == (0, 0, 0)
    monkeypatch.undo()
    stats = rear.scavenge(base, flush=True)
    assert (stats.files_moved, stats.salvaged, stats.errors) == (1, 1, [])
    assert archives_of(base) == {"a.zip": {"x": b"x" * 100}}


INTERRUPTED_AT = """
    import sys, rear
    def interrupt(step):
        if step == sys.argv[2]:
            raise KeyboardInterrupt
    rear._crash_test_point = interrupt
    sys.exit(rear.main(["scavenge", sys.argv[1]]))
"""


@pytest.mark.parametrize("step,said", [
    ("journal-written", "a commit in progress, if any, was rolled back"),
    ("committed", "a commit had passed its commit point: its entries are in the archive, "
                  "and the next run finishes it"),
])
def test_ctrl_c_during_a_commit_says_what_became_of_it(base, step, said):
    fill(base, {"a.zip/x": b"x"})
    child = run_child(INTERRUPTED_AT, base, step, stderr=subprocess.PIPE, text=True)
    assert child.wait(60) == 1
    assert child.stderr.read().splitlines()[-1] == (
        "rear: interrupted; %s; nothing acknowledged is lost: run the command again to "
        "finish" % said)
    assert rear.scavenge(base).errors == []
    assert archives_of(base) == {"a.zip": {"x": b"x"}}


def test_ls_shows_a_newline_in_a_member_name_as_zipinfo_does(base):
    fill(base, {"a.zip/two\nlines": b"x", "a.zip/tab\there": b"y"})
    rear.scavenge(base)
    archive = os.path.join(base, "a.zip")
    assert run_cli("ls", "-1", archive).stdout == "two^Jlines\ntab^Ihere\n"
    listing = run_cli("ls", archive).stdout.splitlines()
    assert len(listing) == 4 and listing[1].endswith("  two^Jlines")
    (first, _second) = [json.loads(line) for line in run_cli("ls", "--json", archive).stdout
                        .splitlines()]
    assert first["name"] == "two\nlines"        # JSON keeps the name exact


def test_a_full_disk_when_a_file_is_archived_names_the_file_and_what_to_do(base,
                                                                          monkeypatch):
    with rear.rear_fs(base) as fs:
        fs.write_bytes("a.zip/before", b"b")

        def disk_full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(rear, "_pwrite_all", disk_full)
        with pytest.raises(OSError) as raised:
            with rear.rear_open("a.zip/lost.txt", "w") as handle:
                handle.write("x")
        monkeypatch.undo()
    inbox = os.path.join(base, "inbox")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == inbox
    assert str(raised.value) == (
        "[Errno 28] No space left on device: 'a.zip/lost.txt' was not archived (files "
        "acknowledged before it are safe); free space (or quota) on the filesystem of %s: "
        "'%s'" % (inbox, inbox))
    rear.scavenge(base, flush=True)
    assert archives_of(base) == {"a.zip": {"before": b"b"}}


def test_cli_usage_errors_exit_2():
    result = run_cli("scavenge", "--max-size", "lots")
    assert result.returncode == 2 and "rear scavenge: error:" in result.stderr
    assert run_cli().returncode == 2


def test_cli_failures_exit_1_with_one_error_line(base):
    result = run_cli("ls", os.path.join(base, "missing.zip"))
    assert result.returncode == 1
    assert result.stderr.startswith("rear: error: ") and result.stderr.count("\n") == 1
    fill(base, {"a.zip/x": b"x"})
    rear.scavenge(base)
    result = run_cli("cat", os.path.join(base, "a.zip"), "nope")
    assert result.returncode == 1 and "rear ls" in result.stderr


def test_cli_cat_of_a_missing_name_in_a_base_points_to_a_listing_that_works(base):
    # Before a first commit only the listing with --pending answers, and cat
    # of a base reads pending files too.
    fill(base, {"a.zip/x.txt": b"x"})
    result = run_cli("cat", base, "a.zip/nope.txt")
    assert result.returncode == 1
    hint = re.search(r"list the members with '(rear [^']*)'", result.stderr).group(1)
    listing = run_cli(*hint.split()[1:])
    assert listing.returncode == 0 and "x.txt" in listing.stdout


def test_cli_scavenge_names_damaged_temp_zips_and_exits_1(base):
    os.makedirs(os.path.join(base, "inbox"))
    with open(os.path.join(base, "inbox", "bad.zip"), "wb") as handle:
        handle.write(b"garbage")
    with open(os.path.join(base, "inbox", "bad.json"), "w") as handle:
        json.dump(dict(rear._Sidecar(time.time()).to_json(), state="sealed"), handle)
    result = run_cli("scavenge", base)
    assert result.returncode == 1 and "bad.zip" in result.stderr


@pytest.mark.parametrize("command", [command.name for command in rear._COMMANDS])
def test_every_subcommand_has_help_with_an_example(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0 and "example: rear %s" % command in result.stdout


@pytest.mark.parametrize("command", [command.name for command in rear._COMMANDS])
def test_every_argument_and_option_has_help_text(command):
    parser = rear._build_parser()
    subparser = parser._subparsers._group_actions[0].choices[command]
    for action in subparser._actions:
        assert action.help, "%s %s has no help" % (command, action.dest)


def test_no_base_and_no_rear_base_is_a_usage_error(monkeypatch):
    env = {key: value for key, value in CHILD_ENV.items() if key != "REAR_BASE"}
    for args in (["scavenge"], ["status"], ["recover"]):
        result = run_cli(*args, env=env)
        assert result.returncode == 2, result.stderr
        assert "no base directory given and REAR_BASE is not set" in result.stderr


@pytest.mark.parametrize("what", ["missing", "file", "empty"])
def test_status_and_verify_of_a_base_that_is_not_one_exit_1_saying_why(tmp_path, what):
    path = tmp_path / "base"
    if what == "file":
        path.write_text("a user's file")
    elif what == "empty":
        path.mkdir()
    expected = {"missing": "base directory %s does not exist" % path,
                "file": "%s is not a directory" % path,
                "empty": "no archives under %s: nothing was verified" % path}[what]
    verified = run_cli("verify", str(path))     # a base or an archive
    assert verified.returncode == 1 and verified.stdout == ""
    assert {"missing": "%s does not exist; give an archive or a base directory" % path,
            "file": "%s: not a zip archive, or a damaged one" % path,
            "empty": expected}[what] in verified.stderr, verified.stderr
    if what != "empty":
        listed = run_cli("status", str(path))
        assert listed.returncode == 1 and expected in listed.stderr, listed.stderr


def test_verify_of_an_archive_mid_commit_points_to_recover(base):
    fill(base, {"a.zip/1": b"1"})
    rear.scavenge(base)
    fill(base, {"a.zip/2": b"2"})
    child = run_child(SCAVENGER_CRASH_SCRIPT, base, "entries-written", str(rear.DEFAULT_MAX_SIZE))
    assert child.wait(60) == -signal.SIGKILL
    for path in (base, os.path.join(base, "a.zip")):
        result = run_cli("verify", path)
        assert result.returncode == 1
        assert "a commit to it was interrupted" in result.stderr
        assert "run 'rear recover BASE'" in result.stderr and "BadZipFile" not in result.stderr
    assert run_cli("recover", base).returncode == 0
    waiting = run_cli("verify", base)        # intact, but not everything is in yet
    assert waiting.returncode == 3, waiting.stderr
    assert "but 1 temp zip holding 1 entry are still in" in waiting.stderr
    assert run_cli("scavenge", base).returncode == 0
    assert run_cli("verify", base).returncode == 0


def test_status_names_a_dead_writers_temp_zip_with_its_entries_and_when_salvaged(base):
    writer = run_child(WRITER_DIES_AFTER_WRITING, base)
    assert writer.wait(60) == 0
    report = rear.status(base, rotation_span=60)
    (temp,) = report.temp_zips
    assert temp.state == "dead" and temp.entries == 100
    listed = run_cli("status", base, "--rotation", "60")
    assert "temp zips: 0 open, 0 sealed, 1 dead" in listed.stdout
    assert "its writer (pid %d on " % writer.pid in listed.stdout
    assert "no longer running) has ended; 100 complete entries, salvaged by a pass after" \
        in listed.stdout
    assert "or now with 'rear scavenge --flush'" in listed.stdout
    scavenged = run_cli("scavenge", base, "--rotation", "60")
    assert "1 waiting: unsealed temp zips of writers that died" in scavenged.stdout
    assert "'rear scavenge --flush' salvages them now" in scavenged.stdout


WRITER_WITH_AN_HOUR_SPAN_DIES = """
    import os, sys, rear
    fs = rear.rear_fs(sys.argv[1], rotation_span=3600)
    fs.write_bytes("a.zip/1", b"1")
    os._exit(0)      # never sealed
"""


def test_a_writers_sidecar_records_its_rotation_span(base):
    with rear.rear_fs(base, rotation_span=3600) as fs:
        fs.write_bytes("a.zip/1", b"1")
        (manifest,) = sidecars(base)
        assert manifest["rotation_span"] == 3600


def test_status_judges_a_live_writers_quiet_temp_zip_by_the_writers_span(base):
    with rear.rear_fs(base, rotation_span=3600) as fs:
        fs.write_bytes("a.zip/1", b"1")
        (temp_zip,) = inbox_temp_zips(base)
        ten_minutes_ago = time.time() - 600
        os.utime(os.path.join(base, "inbox", temp_zip), (ten_minutes_ago, ten_minutes_ago))
        # Quiet for 10 minutes: past 2 x 60 s, within the writer's 2 x 3600 s.
        (temp,) = rear.status(base, rotation_span=60).temp_zips
        assert temp.state == "open" and temp.still_for_grace is False
        assert "unchanged since" not in run_cli("status", base, "--rotation", "60").stdout


def test_a_scavenger_with_a_shorter_span_waits_for_the_writers_grace_period(base):
    writer = run_child(WRITER_WITH_AN_HOUR_SPAN_DIES, base)
    assert writer.wait(60) == 0
    (temp_zip,) = inbox_temp_zips(base)
    path = os.path.join(base, "inbox", temp_zip)
    a_minute_ago = time.time() - 60
    sidecar_path = path[:-len(".zip")] + ".json"
    manifest = dict(json.load(open(sidecar_path)), created=a_minute_ago)
    with open(sidecar_path, "w") as handle:
        json.dump(manifest, handle)
    os.utime(path, (a_minute_ago, a_minute_ago))
    # Past its own grace period (2 x 1 s), not the writer's (2 x 3600 s).
    stats = rear.scavenge(base, rotation_span=1)
    assert stats.salvaged == 0 and stats.waiting == 1
    (temp,) = rear.status(base, rotation_span=1).temp_zips
    assert temp.state == "dead" and temp.salvage_after == pytest.approx(a_minute_ago + 7200)
    assert rear.scavenge(base, rotation_span=1, flush=True).salvaged == 1
    assert archives_of(base) == {"a.zip": {"1": b"1"}}


WRITER_DIES_AFTER_WRITING = """
    import os, sys, rear
    fs = rear.rear_fs(sys.argv[1])
    for n in range(100):
        fs.write_bytes("a.zip/%d" % n, b"%d" % n)
    os._exit(0)      # never sealed
"""


def test_scavenge_watch_prints_only_passes_that_did_something(base):
    fill(base, {"a.zip/1": b"1"})
    child = subprocess.Popen([sys.executable, "-m", "rear", "scavenge", base, "--watch", "0.1"],
                             env=CHILD_ENV, stdout=subprocess.PIPE, text=True,
                             preexec_fn=ctrl_c_as_at_a_terminal)
    time.sleep(1.5)                  # one busy pass, then a dozen idle ones
    child.send_signal(signal.SIGINT)
    out, _err = child.communicate(timeout=60)
    assert child.returncode == 0
    passes = [line for line in out.splitlines() if line.startswith("moved ")]
    assert len(passes) == 1, out
    assert out.splitlines()[-1].startswith("stopped; in all: moved 1 files"), out


def test_demo_refuses_zero_workers_and_leaves_no_temporary_directory(tmp_path):
    refused = run_cli("demo", "--workers", "0")
    assert refused.returncode == 2 and "--workers: must be at least 1" in refused.stderr
    env = dict(CHILD_ENV, TMPDIR=str(tmp_path))
    result = run_cli("demo", "--workers", "1", "--files", "50", env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert os.listdir(str(tmp_path)) == []


def test_pickup_of_a_file_named_in_another_encoding_names_it(base, tmp_path):
    source = os.path.join(str(tmp_path).encode(), b"tree")
    os.makedirs(source)
    with open(os.path.join(source, b"caf\xe9.txt"), "wb") as handle:    # Latin-1 name
        handle.write(b"x")
    with rear.rear_fs(base) as fs:
        with pytest.raises(rear.PathError, match=re.escape(
                "component 'caf\\udce9.txt' is not valid UTF-8 (a file name in another "
                "encoding?); rename it")):
            with fs.pickup(os.fsdecode(source), "t.zip/tree"):
                pass
    assert os.path.exists(os.path.join(source, b"caf\xe9.txt"))


def test_cli_takes_the_base_from_rear_base(base):
    fill(base, {"a.zip/x": b"x"})
    result = subprocess.run([sys.executable, "-m", "rear", "scavenge"], capture_output=True,
                            text=True, env=dict(CHILD_ENV, REAR_BASE=base))
    assert result.returncode == 0 and "moved 1 files" in result.stdout


def test_legacy_rear_scavenger_command_still_works(base, capsys):
    fill(base, {"a.zip/x": b"x"})
    assert rear.legacy_main(["-d", base, "--flush"]) == 0
    assert archives_of(base)["a.zip"] == {"x": b"x"}


def test_cli_recover_salvages(base):
    write_raw_temp_zip(base, [("a.zip/dead", b"d")])
    result = run_cli("recover", base)
    assert result.returncode == 0 and "salvaged 1" in result.stdout


def test_cli_demo_runs_end_to_end(tmp_path):
    result = run_cli("demo", str(tmp_path / "demo"), "--workers", "3", "--files", "300",
                     timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo.zip holds 900 of 900; verified 4 archives, 909 entries" in result.stdout
    assert "(and 9 progress logs)" in result.stdout and "into demo.zip and logs/" in result.stdout
    unzip_test(str(tmp_path / "demo" / "demo.zip"))


# ---------------------------------------------------------------- one file, standard library, Python 3.8, CI


def test_a_copy_of_rear_py_alone_works_as_module_and_script(tmp_path, base):
    vendored = tmp_path / "vendored"
    vendored.mkdir()
    shutil.copy(os.path.join(HERE, "rear.py"), str(vendored / "rear.py"))
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    script = "import rear, sys; rear.rear_fs(sys.argv[1]).write_bytes('a.zip/x', b'v')"
    subprocess.run([sys.executable, "-c", script, base], cwd=str(vendored), env=env, check=True)
    result = subprocess.run([sys.executable, "rear.py", "scavenge", base], cwd=str(vendored),
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert archives_of(base)["a.zip"] == {"x": b"v"}


def imports_of(nodes):
    imported = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    return imported


def test_rear_imports_only_the_standard_library_and_fsspec_only_when_used():
    tree = ast.parse(open(os.path.join(HERE, "rear.py")).read())
    in_functions = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_functions |= set(ast.walk(node))
    at_import = [node for node in ast.walk(tree) if node not in in_functions]
    if not hasattr(sys, "stdlib_module_names"):
        pytest.skip("Python < 3.10 does not list its standard library")
    standard = set(sys.stdlib_module_names) | {"__future__"}
    assert imports_of(at_import) - standard == set()
    assert imports_of(in_functions) - standard == {"fsspec"}


def python_3_8():
    """A working Python 3.8 interpreter on this machine, or None."""
    candidates = [shutil.which("python3.8")] + sorted(
        glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3.8")))
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "-c", "pass"], capture_output=True).returncode == 0:
            return candidate
    return None


@pytest.mark.skipif(python_3_8() is None, reason="no Python 3.8 on this machine")
def test_rear_runs_on_python_3_8(base):
    python = python_3_8()
    script = ("import rear, sys; fs = rear.rear_fs(sys.argv[1]); "
              "f = fs.open('a.zip/x.txt'); f.write('3.8'); f.close(); fs.close(); "
              "rear.scavenge(sys.argv[1])")
    subprocess.run([python, "-c", script, base], env=CHILD_ENV, check=True)
    assert archives_of(base)["a.zip"] == {"x.txt": b"3.8"}


def test_the_module_docstring_specifies_every_key_and_layout_rear_writes(base, monkeypatch):
    # The docstring is the one spec of the on-disk format: every key rear
    # actually writes into a journal and a sidecar is named there, and so
    # are the journal's and the index's magic and the index header's size.
    fill(base, {"a.zip/1": b"1"})
    rear.scavenge(base)
    with rear.rear_fs(base) as fs:
        fs.write_bytes("a.zip/2", b"2")
        fs.write_bytes("b.zip/2", b"2")
    sidecar = sidecars(base)[0]
    journals = []

    def checkpoint(step):
        if step == "journal-written":
            path = rear._ArchivePaths(base, "a.zip").journal
            fd = os.open(path, os.O_RDONLY)
            journals.append(rear._read_journal(fd, path)[0])
            os.close(fd)

    monkeypatch.setattr(rear, "_crash_test_point", checkpoint)
    rear.scavenge(base)
    spec = rear.__doc__
    journal = journals[0]
    for key in list(journal) + list(journal["temps"][0]) + list(sidecar):
        assert '"%s"' % key in spec, key
    assert rear._JOURNAL_MAGIC.decode() in spec and rear._INDEX_MAGIC.decode() in spec
    assert "header  %d bytes" % rear._INDEX_HEADER.size in spec
    assert "%d bytes" % rear._INDEX_STAMP_BYTES in spec


def rear_sections():
    """[(title, first line, last line)] of rear.py's banner-commented sections."""
    lines = open(os.path.join(HERE, "rear.py")).read().splitlines()
    starts = [(number, line.split(" ", 2)[2]) for number, line in enumerate(lines, 1)
              if re.match(r"^# -{10,} \S", line)]
    return [(title, start, (starts[index + 1][0] - 1 if index + 1 < len(starts)
                            else len(lines)))
            for index, (start, title) in enumerate(starts)]


def test_the_docstring_lists_rear_py_sections_in_their_order():
    listed = rear.__doc__.split("Sections of this file", 1)[1].split(":", 1)[1]
    listed = " ".join(listed.split("\n\n")[1].split())
    assert listed == ", ".join(title for title, _start, _end in rear_sections()) + "."


def test_no_section_of_rear_py_is_over_700_lines():
    for title, start, end in rear_sections():
        assert end - start < 700, "section %r is %d lines" % (title, end - start)


def test_each_section_of_rear_py_uses_only_names_defined_above_it():
    tree = ast.parse(open(os.path.join(HERE, "rear.py")).read())
    sections = rear_sections()

    def section_of(line):     # -1: the imports and names above the first section
        return max([-1] + [index for index, (_title, start, _end) in enumerate(sections)
                           if start <= line])

    defined = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined.setdefault(node.name, section_of(node.lineno))
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    defined.setdefault(target.id, section_of(node.lineno))
    later = []
    for node in tree.body:
        if node.lineno < sections[0][1]:
            continue
        here = section_of(node.lineno)
        for inner in ast.walk(node):
            if isinstance(inner, ast.Name) and defined.get(inner.id, here) > here:
                later.append("%s (%s) uses %s (%s)" % (
                    getattr(node, "name", node.lineno), sections[here][0], inner.id,
                    sections[defined[inner.id]][0]))
    assert later == []


def readme_blocks(language):
    """The code blocks of README.md in ``language``, in order."""
    readme = open(os.path.join(HERE, "README.md")).read()
    return [block.split("```", 1)[0] for block in readme.split("```%s\n" % language)[1:]]


def shell_commands(block):
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readmes_get_it_and_test_commands():
    get_it, _quick_start, development = [shell_commands(block)
                                         for block in readme_blocks("sh")]
    ci = open(os.path.join(HERE, ".ci", "run")).read().splitlines()
    assert len(get_it) == 2 and len(development) == 1
    for command in get_it + development:
        assert command in ci, "%r is in README.md but not run by .ci/run" % command


def test_the_readme_quick_start_runs_as_written(tmp_path):
    if shutil.which("unzip") is None:
        pytest.skip("Info-ZIP unzip is not installed (apt-get install unzip)")
    shutil.copy(os.path.join(HERE, "rear.py"), str(tmp_path))     # a vendored copy
    (python,) = readme_blocks("python")
    env = dict(os.environ)
    env.pop("REAR_BASE", None)
    result = subprocess.run([sys.executable, "-c", python], cwd=str(tmp_path), env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "b'task 1 done\\n'\n"
    assert not os.path.exists(str(tmp_path / "table.csv"))     # picked up: archived, removed
    for command in shell_commands(readme_blocks("sh")[1]):
        result = subprocess.run(command.replace("python3 ", sys.executable + " ", 1),
                                shell=True, cwd=str(tmp_path), env=env,
                                capture_output=True, text=True)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
    assert "task-2/table.csv" in result.stdout


# ---------------------------------------------------------------- careless use, as an unprivileged user

UNPRIVILEGED_PYTHON = "/usr/bin/python3"     # outside /root, so 'nobody' can run it


@pytest.fixture
def world(tmp_path):
    """A directory 'nobody' can reach, holding a vendored rear.py; removed after."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run rear as 'nobody'")
    if not os.access(UNPRIVILEGED_PYTHON, os.X_OK):
        pytest.skip("no system python3 outside /root for 'nobody' to run")
    directory = tempfile.mkdtemp(prefix="rear-nobody-", dir="/tmp")
    try:
        os.chmod(directory, 0o755)
        shutil.copy(os.path.join(HERE, "rear.py"), directory)
        yield directory
    finally:
        for path, subdirs, _files in os.walk(directory):
            for name in subdirs:
                os.chmod(os.path.join(path, name), 0o755)
        shutil.rmtree(directory)


def as_nobody(world, *args):
    """Run ``python3 rear.py ARGS`` (or ``-c`` code) as the user nobody."""
    command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
               UNPRIVILEGED_PYTHON] + (list(args) if args[0] == "-c" else
                                       [os.path.join(world, "rear.py")] + list(args))
    return subprocess.run(command, cwd=world, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": world})


def owned_base(world, mode):
    """A base owned by root, with an archive and a sealed temp zip, at ``mode``."""
    base = os.path.join(world, "base-%o" % mode)
    fill(base, {"a.zip/1": b"1"})
    rear.scavenge(base)
    fill(base, {"a.zip/2": b"2"})
    os.chmod(base, mode)
    return base


@pytest.mark.parametrize("command", ["scavenge", "status", "verify"])
def test_a_base_this_user_cannot_read_is_an_error_naming_it(world, command):
    base = owned_base(world, 0o700)
    result = as_nobody(world, command, base)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith("rear: error: ") and base in result.stderr
    assert "cannot be read" in result.stderr and "intact" not in result.stdout


def test_a_missing_base_this_user_cannot_create_is_refused_when_entered(world):
    locked = os.path.join(world, "locked")
    os.makedirs(locked, mode=0o755)             # root's: nobody cannot create in it
    base = os.path.join(locked, "run42", "base")
    result = as_nobody(world, "-c", "import rear, sys\n"
                       "try:\n    fs = rear.rear_fs(sys.argv[1]).__enter__()\n"
                       "except rear.RearError as err:\n    print(err)\n", base)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("%s cannot be created: %s is not writable by this user; give "
                             "rear a base directory the job can write to\n" % (base, locked))


def test_files_root_creates_in_a_users_base_stay_usable_by_that_user(world):
    import pwd
    nobody = pwd.getpwnam("nobody")
    base = os.path.join(world, "users-base")
    os.makedirs(base)
    os.chown(base, nobody.pw_uid, nobody.pw_gid)
    written = as_nobody(world, "-c", "import rear, sys\n"
                        "with rear.rear_fs(sys.argv[1]) as fs:\n"
                        "    fs.write_bytes('a.zip/by-nobody', b'n')\n"
                        "    fs.write_bytes('sub/b.zip/by-nobody', b'n')\n", base)
    assert written.returncode == 0, written.stderr
    fill(base, {"a.zip/by-root": b"r"})                  # root writes, and scavenges first
    assert rear.scavenge(base).errors == []
    assert rear.status(base).archives                    # root read it too (lock files)
    not_theirs = [os.path.join(directory, name)
                  for directory, subdirs, files in os.walk(base) for name in subdirs + files
                  if os.lstat(os.path.join(directory, name)).st_uid != nobody.pw_uid]
    assert not_theirs == []
    more = as_nobody(world, "-c", "import rear, sys\n"
                     "with rear.rear_fs(sys.argv[1]) as fs:\n"
                     "    fs.write_bytes('a.zip/later', b'l')\n", base)
    assert more.returncode == 0, more.stderr
    scavenged = as_nobody(world, "scavenge", "--flush", base)
    assert scavenged.returncode == 0, scavenged.stderr
    assert archives_of(base) == {"a.zip": {"by-nobody": b"n", "by-root": b"r", "later": b"l"},
                                 "sub/b.zip": {"by-nobody": b"n"}}


def test_a_subdirectory_this_user_cannot_read_fails_verify_and_status_naming_it(world):
    base = owned_base(world, 0o755)
    fill(base, {"hidden/b.zip/x": b"x"})
    rear.scavenge(base)
    os.chmod(os.path.join(base, "hidden"), 0o700)
    for command in ("verify", "status"):
        result = as_nobody(world, command, base)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert "%s: cannot list this directory (Permission denied)" % os.path.join(
            base, "hidden") in result.stderr, result.stderr


def test_a_read_only_base_can_be_verified_but_not_scavenged_or_written(world):
    base = owned_base(world, 0o755)
    verified = as_nobody(world, "verify", base)
    assert verified.returncode == 3, verified.stderr       # a sealed temp zip waits
    assert "verified 1 archive, 1 entry under %s" % base in verified.stdout
    scavenged = as_nobody(world, "scavenge", base)
    assert scavenged.returncode == 1
    assert "base directory %s cannot be read and written by this user" % base \
        in scavenged.stderr
    written = as_nobody(world, "-c", "import rear\nwith rear.rear_fs(%r):\n    pass" % base)
    assert written.returncode == 1
    assert "rear.RearError: %s is not writable by this user" % base in written.stderr
    assert rear.scavenge(base).files_moved == 1       # nothing of it was lost meanwhile


# ---------------------------------------------------------------- reading: open_archive, read_bytes, cat, ls


SPARSE_SIZE = 256 * 1024 ** 2


@pytest.fixture
def sparse_member(base, tmp_path):
    """A 256 MiB sparse file picked up and archived as big.zip/sparse.dat:
    its member compresses to about 250 KB, one read chunk."""
    source = str(tmp_path / "sparse.dat")
    with open(source, "wb") as handle:
        handle.truncate(SPARSE_SIZE)
    with rear.rear_fs(base, compression="deflated") as fs:
        with fs.pickup(source, "big.zip/sparse.dat"):
            pass
    assert rear.scavenge(base).files_moved == 1
    return os.path.join(base, "big.zip")


def test_a_sparse_files_member_reads_in_bounded_memory(sparse_member):
    tracemalloc.start()
    try:
        zeros = 0
        with rear.open_archive(sparse_member) as archive:
            with archive.open("sparse.dat") as member:
                for chunk in iter(lambda: member.read(64 * 1024), b""):
                    zeros += chunk.count(0)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert zeros == SPARSE_SIZE
    # One read chunk inflated whole was 256 MiB here
    assert peak < 8 * 1024 ** 2, "peak %d bytes" % peak


# VmHWM, not ru_maxrss: Linux carries ru_maxrss over an exec, so a child of
# a big pytest process reports the parent's peak.
CAT_AND_REPORT_PEAK = """
    import sys, rear
    code = rear.main(["cat", sys.argv[1], "big.zip/sparse.dat"])
    with open("/proc/self/status") as status:
        (peak,) = [line.split()[1] for line in status if line.startswith("VmHWM:")]
    sys.stderr.write("%d %s" % (code, peak))
"""


def test_rear_cat_of_a_sparse_files_member_streams_in_bounded_memory(base, sparse_member):
    child = run_child(CAT_AND_REPORT_PEAK, base, stdout=subprocess.DEVNULL,
                      stderr=subprocess.PIPE)
    _out, err = child.communicate(timeout=300)
    code, peak_kib = err.decode().split()[-2:]
    # Held whole, the member alone is 256 MiB (the peak was 634 MiB); streamed,
    # the interpreter and a few read chunks (32 MiB measured).
    assert code == "0" and int(peak_kib) < 50 * 1024, "peak %s KiB" % peak_kib


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA],
                         ids=["deflated", "bzip2", "lzma"])
def test_a_decompression_step_yields_at_most_a_chunk_however_far_the_data_expands(method):
    data = bytes(24 * 1024 ** 2)
    compressor = zipfile._get_compressor(method)
    compressed = compressor.compress(data) + compressor.flush()
    decompressor = rear._new_decompressor(method)
    pieces = list(rear._decompressed_pieces(decompressor, compressed))
    assert b"".join(pieces) == data
    limit = rear._CHUNK if method != zipfile.ZIP_LZMA else 32 * 1024 ** 2
    assert max(len(piece) for piece in pieces) <= limit


def test_a_reader_reads_infos_and_streams_members_checking_their_crc(base):
    files = {"a.zip/d/%d.txt" % n: (b"line %d\n" % n) * (n + 1) for n in range(50)}
    files["a.zip/big.bin"] = os.urandom(3 * 1024 * 1024)      # streamed, several chunks
    fill(base, files)
    rear.scavenge(base)
    with rear.open_archive(os.path.join(base, "a.zip")) as reader:
        assert reader.read("d/7.txt") == files["a.zip/d/7.txt"]
        with reader.open("big.bin") as handle:
            assert handle.read(10) == files["a.zip/big.bin"][:10]
            assert handle.read() == files["a.zip/big.bin"][10:]
        assert "d/7.txt" in reader and "d/99.txt" not in reader
        info = reader.info("d/7.txt")
        assert (info.size, info.crc) == (len(files["a.zip/d/7.txt"]),
                                          zlib.crc32(files["a.zip/d/7.txt"]))
        assert info.mode == 0o100644 and abs(info.mtime - time.time()) < 120
        assert list(reader) == ["d/%d.txt" % n for n in range(50)] + ["big.bin"]
        assert list(reader.names(prefix="d/4")) == ["d/4.txt"] + ["d/%d.txt" % n
                                                                  for n in range(40, 50)]
        with pytest.raises(KeyError, match="has no member 'nope'"):
            reader.read("nope")


def test_opening_and_reading_one_member_uses_the_index_not_the_central_directory(
        base, monkeypatch):
    fill(base, {"a.zip/%d" % n: b"%d" % n for n in range(300)})
    rear.scavenge(base)
    real = rear._iter_central_records

    def one_record_at_a_time(reader, directory, path, *args, **kwargs):
        assert kwargs.get("count") == 1, "the central directory was walked"
        return real(reader, directory, path, *args, **kwargs)

    monkeypatch.setattr(rear, "_iter_central_records", one_record_at_a_time)
    with rear.open_archive(os.path.join(base, "a.zip")) as reader:
        assert reader.read("123") == b"123"
        assert "nope" not in reader


def make_stored_zip(path, count, prefix="old/"):
    """A stored zip of ``count`` tiny entries made with rear's header
    functions (zip64 past 65,535), as bench/bench.py makes them."""
    data = b"0123456789"
    records, offset = [], 0
    with open(path, "wb") as handle:
        for number in range(count):
            entry = rear._Entry("%s%07d" % (prefix, number), 0, 0, 0, 33, zlib.crc32(data),
                                len(data), len(data))
            local = rear._pack_local_header(entry) + data
            records.append(rear._pack_central_record(entry, offset))
            handle.write(local)
            offset += len(local)
        central = b"".join(records)
        handle.write(central + rear._pack_end_records(count, len(central), offset))


@pytest.mark.parametrize("kind", ["foreign", "zip64", "stale index", "no index directory"])
def test_a_reader_falls_back_to_one_streaming_pass_where_there_is_no_index(base, kind):
    archive = os.path.join(base, "a.zip")
    if kind == "foreign":                  # not under a rear base at all
        with zipfile.ZipFile(archive, "w") as handle:
            for n in range(100):
                handle.writestr("f/%d" % n, b"%d" % n)
        wanted, data = "f/42", b"42"
    elif kind == "zip64":
        make_stored_zip(archive, 70000)
        wanted, data = "old/0069999", b"0123456789"
    else:
        fill(base, {"a.zip/%d" % n: b"%d" % n for n in range(100)})
        rear.scavenge(base)
        if kind == "stale index":          # changed by another tool since
            with zipfile.ZipFile(archive, "a") as handle:
                handle.writestr("added/by/zipfile", b"new")
            wanted, data = "added/by/zipfile", b"new"
        else:
            shutil.rmtree(os.path.join(base, "inbox", "archives"))
            wanted, data = "42", b"42"
    with rear.open_archive(archive) as reader:
        assert reader._views[0].index is None
        assert reader.read(wanted) == data and "absent" not in reader


def test_a_damaged_member_raises_instead_of_returning_its_bytes(base):
    fill(base, {"a.zip/x": b"precious " * 1000}, compression="stored")
    rear.scavenge(base)
    archive = os.path.join(base, "a.zip")
    data = bytearray(open(archive, "rb").read())
    data[data.index(b"precious") + 100] ^= 0x01
    open(archive, "wb").write(bytes(data))
    with rear.open_archive(archive) as reader:
        with pytest.raises(rear.ArchiveError, match="fails its CRC-32 or size check"):
            reader.read("x")


def test_a_reader_waits_for_a_commit_and_says_so_when_it_takes_too_long(base):
    fill(base, {"a.zip/x": b"x"})
    rear.scavenge(base)
    lock = rear._ArchivePaths(base, "a.zip").lock
    holder = run_child("""
        import fcntl, os, sys, time
        fd = os.open(sys.argv[1], os.O_RDWR)
        fcntl.lockf(fd, fcntl.LOCK_EX)            # a scavenger committing
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
    """, lock, "1.0", stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "locked\n"
    with pytest.raises(rear.ArchiveError, match="a scavenger is committing to it for more "
                       "than 0.2 s; try again"):
        rear.open_archive(os.path.join(base, "a.zip"), lock_timeout=0.2)
    with rear.open_archive(os.path.join(base, "a.zip"), lock_timeout=30) as reader:
        assert reader.read("x") == b"x"          # waited for the commit
    holder.wait(30)


def run_cli_background(*args):
    return subprocess.Popen([sys.executable, "-m", "rear"] + list(args), env=CHILD_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def archive_sizes(base):
    """{file name: (entries, bytes)} of the archives directly under ``base``."""
    sizes = {}
    for name in sorted(os.listdir(base)):
        if name.endswith(".zip"):
            path = os.path.join(base, name)
            unzip_test(path)
            with zipfile.ZipFile(path) as handle:
                sizes[name] = (len(handle.infolist()), os.path.getsize(path))
    return sizes


def test_a_commit_past_max_entries_continues_in_the_next_archive_of_the_series(base):
    files = {"a.zip/%04d" % n: b"%d" % n for n in range(2500)}
    fill(base, files)                               # one temp zip of 2,500 entries
    stats = rear.scavenge(base, max_entries=1000)
    assert stats.errors == [] and stats.files_moved == 2500
    assert {name: entries for name, (entries, _size) in archive_sizes(base).items()} == {
        "a.~1~.zip": 1000, "a.~2~.zip": 1000, "a.zip": 500}
    assert_exactly_once(base, files)
    assert inbox_temp_zips(base) == []


def test_a_commit_past_max_size_continues_in_the_next_archive_of_the_series(base):
    files = {"a.zip/%02d" % n: os.urandom(3000) for n in range(30)}
    fill(base, files, compression="stored")
    rear.scavenge(base, max_size=20000)
    sizes = archive_sizes(base)
    # Six 3000-byte entries and their headers fill 18.6 kB; a seventh would
    # pass 20000, so thirty entries make five archives, none over the cap.
    assert sorted(entries for entries, _size in sizes.values()) == [6] * 5
    assert all(size <= 20000 for _entries, size in sizes.values())
    assert_exactly_once(base, files)


def test_an_entry_larger_than_max_size_gets_an_archive_of_its_own(base):
    files = {"a.zip/small-1": b"1", "a.zip/big": os.urandom(30000), "a.zip/small-2": b"2"}
    fill(base, files, compression="stored")
    rear.scavenge(base, max_size=20000)
    assert {name: entries for name, (entries, _size) in archive_sizes(base).items()} == {
        "a.~1~.zip": 1, "a.~2~.zip": 1, "a.zip": 1}
    assert read_archive(os.path.join(base, "a.~2~.zip")) == {"big": files["a.zip/big"]}
    assert_exactly_once(base, files)


def test_two_scavengers_at_once_keep_every_archive_within_max_entries(base):
    files = fill_temp_zips(base, 8, 700, "a.zip/%d/%04d")
    scavengers = [run_cli_background("scavenge", base, "--max-entries", "1000")
                  for _ in range(2)]
    assert [scavenger.wait(120) for scavenger in scavengers] == [0, 0]
    rear.scavenge(base, max_entries=1000)
    counts = [entries for entries, _size in archive_sizes(base).values()]
    assert sum(counts) == 5600 and max(counts) == 1000
    assert_exactly_once(base, files)


def test_a_users_archive_named_like_name_dash_number_is_not_part_of_a_series(base, caplog):
    fill(base, {"run-0.zip/b.txt": b"mine", "run-2024.zip/b.txt": b"2024"})
    rear.scavenge(base)
    fill(base, {"run.zip/b.txt": b"new"})
    with caplog.at_level(logging.WARNING, logger="rear"):
        stats = rear.scavenge(base)
    assert (stats.files_moved, stats.conflicts) == (1, 0) and "already holds" not in caplog.text
    assert archives_of(base) == {"run-0.zip": {"b.txt": b"mine"}, "run-2024.zip": {"b.txt": b"2024"},
                                 "run.zip": {"b.txt": b"new"}}
    assert rear.read_bytes(base, "run.zip/b.txt") == b"new"
    assert run_cli("cat", base, "run.zip/b.txt").stdout == "new"


def test_after_a_rollover_a_users_archive_named_like_name_dash_number_stays_its_own(base):
    fill(base, {"run.zip/%d" % n: b"%d" % n for n in range(3)})
    rear.scavenge(base, max_entries=3)
    fill(base, {"run.zip/late": b"late"})
    rear.scavenge(base, max_entries=3)           # run.zip rolled over
    fill(base, {"run-0.zip/mine": b"mine"})
    rear.scavenge(base, max_entries=3)
    assert archives_of(base) == {"run.~1~.zip": {"0": b"0", "1": b"1", "2": b"2"},
                                 "run.zip": {"late": b"late"}, "run-0.zip": {"mine": b"mine"}}
    with rear.open_archive(base, "run-0.zip") as reader:
        assert sorted(reader.names()) == ["mine"]
    with rear.open_archive(base, "run.zip") as reader:
        assert sorted(reader.names()) == ["0", "1", "2", "late"]


def test_writing_to_a_rolled_over_archives_name_is_refused_naming_the_series(base):
    with rear.rear_fs(base):
        with pytest.raises(rear.PathError, match=r"'s/run.~2~.zip', which is how rear names a "
                           r"rolled-over archive \(s/run.zip rolls over to s/run.~1~.zip, "
                           r"...\); write to 's/run.zip' or choose another name"):
            rear.rear_open("s/run.~2~.zip/x", "w")
    assert inbox_temp_zips(base) == []


def test_a_rollover_never_replaces_an_archive_already_under_the_next_name(base, monkeypatch):
    fill(base, {"run.zip/%d" % n: b"%d" % n for n in range(3)})
    rear.scavenge(base, max_entries=3)
    # A run.~1~.zip this client's listing missed (a stale cache elsewhere)
    # stands for itself here: the rollover must not replace it.
    shutil.copy(os.path.join(base, "run.zip"), os.path.join(base, "run.~1~.zip"))
    before = open(os.path.join(base, "run.~1~.zip"), "rb").read()
    with monkeypatch.context() as patch:
        patch.setattr(rear, "_rolled_members", lambda archive: [])   # the missed listing
        fill(base, {"run.zip/late": b"late"})
        stats = rear.scavenge(base, max_entries=3)
    assert stats.errors == [] and stats.files_moved == 1
    assert open(os.path.join(base, "run.~1~.zip"), "rb").read() == before
    assert sorted(os.listdir(base)) == ["inbox", "run.zip", "run.~1~.zip", "run.~2~.zip"]
    for name in ("run.zip", "run.~1~.zip", "run.~2~.zip"):
        unzip_test(os.path.join(base, name))


def test_a_series_is_one_archive_to_readers_and_to_duplicate_checks(base):
    first = {"s/a.zip/%d" % n: b"%d" % n for n in range(10)}
    fill(base, first)
    rear.scavenge(base, max_entries=10)
    fill(base, {"s/a.zip/late": b"late"})
    rear.scavenge(base, max_entries=10)          # a.zip held 10: rolled over
    assert sorted(os.listdir(os.path.join(base, "s"))) == ["a.zip", "a.~1~.zip"]
    fill(base, {"s/a.zip/3": b"3", "s/a.zip/4": b"changed"})
    stats = rear.scavenge(base, max_entries=10)
    assert (stats.duplicates, stats.conflicts, stats.files_moved) == (1, 1, 1)
    with rear.open_archive(base, "s/a.zip") as reader:
        assert reader.read("3") == b"3" and reader.read("late") == b"late"
        assert reader.read("4.~1~") == b"changed" and reader.read("4") == b"4"
        assert sorted(reader.names()) == sorted(["%d" % n for n in range(10)]
                                                + ["late", "4.~1~"])
    result = run_cli("cat", base, "s/a.zip/7")
    assert result.returncode == 0 and result.stdout == "7"
    assert read_archive(os.path.join(base, "s", "a.zip")) == {"late": b"late",
                                                              "4.~1~": b"changed"}


def test_rollover_by_entry_count_and_its_validation(base):
    fill(base, {"a.zip/%d" % n: b"%d" % n for n in range(5)})
    rear.scavenge(base, max_entries=3)
    fill(base, {"a.zip/more": b"m"})
    rear.scavenge(base, max_entries=3)
    assert sorted(os.listdir(base)) == ["a.zip", "a.~1~.zip", "inbox"]
    with pytest.raises(ValueError, match="max_entries must be a positive number"):
        rear.scavenge(base, max_entries=0)
    result = run_cli("scavenge", base, "--max-entries", "0")
    assert result.returncode == 2 and "--max-entries: must be at least 1" in result.stderr


READS_WHILE_WRITING = """
    import os, sys, rear
    base = sys.argv[1]
    fs = rear.rear_fs(base, rotation_span=3600)
    fs.write_bytes("a.zip/live", b"written by a live writer")
    print("written", flush=True)
    sys.stdin.readline()          # stays alive, its temp zip open, until told
    if sys.argv[2] == "die":
        os._exit(0)
    fs.close()
"""


def test_files_not_yet_scavenged_are_readable_from_the_inbox(base):
    fill(base, {"a.zip/archived": b"in the archive"})
    rear.scavenge(base)
    fill(base, {"a.zip/sealed": b"in a sealed temp zip"})
    live = run_child(READS_WHILE_WRITING, base, "die", stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, text=True)
    assert live.stdout.readline() == "written\n"
    assert rear.read_bytes(base, "a.zip/archived") == b"in the archive"
    assert rear.read_bytes(base, "a.zip/sealed") == b"in a sealed temp zip"
    assert rear.read_bytes(base, "a.zip/live") == b"written by a live writer"
    with pytest.raises(KeyError):
        rear.read_bytes(base, "a.zip/never-written")
    listed = run_cli("ls", base, "a.zip", "--pending").stdout
    assert "archived\n" in listed and "sealed  (pending: not scavenged yet)" in listed
    assert "live  (pending: not scavenged yet)" in listed
    live.stdin.write("go\n")
    live.stdin.close()
    assert live.wait(30) == 0                    # died without sealing
    assert rear.read_bytes(base, "a.zip/live") == b"written by a live writer"
    assert run_cli("cat", base, "a.zip/live").stdout == "written by a live writer"
    rear.scavenge(base, flush=True)
    assert rear.read_bytes(base, "a.zip/live") == b"written by a live writer"


def test_a_torn_last_entry_of_a_temp_zip_is_never_returned(base):
    whole, torn = os.urandom(500), os.urandom(500)     # incompressible: stored as is
    path = write_raw_temp_zip(base, [("a.zip/whole", whole), ("a.zip/torn", torn)])
    with open(path, "r+b") as handle:                # a writer killed mid-write
        handle.truncate(os.path.getsize(path) - 100)
    assert rear.read_bytes(base, "a.zip/whole") == whole
    with pytest.raises(KeyError):
        rear.read_bytes(base, "a.zip/torn")
    data = bytearray(open(path, "rb").read())        # all there, but damaged
    data[data.index(whole) + 7] ^= 0x20
    open(path, "wb").write(bytes(data))
    with pytest.raises(rear.ArchiveError, match="fails its CRC-32 or size check"):
        rear.read_bytes(base, "a.zip/whole")


def test_cli_ls_streams_names_json_lines_and_prefixes(base):
    fill(base, {"a.zip/x/1": b"1", "a.zip/x/2": b"22", "a.zip/y": b"y"})
    rear.scavenge(base)
    archive = os.path.join(base, "a.zip")
    assert run_cli("ls", "-1", archive).stdout == "x/1\nx/2\ny\n"
    lines = run_cli("ls", "--json", "--prefix", "x/", archive).stdout.splitlines()
    assert [json.loads(line)["name"] for line in lines] == ["x/1", "x/2"]
    assert json.loads(lines[1])["size"] == 2
    assert run_cli("ls", base, "a.zip", "-1").stdout == "x/1\nx/2\ny\n"
    missing = run_cli("ls", base)
    assert missing.returncode == 1 and "give the archive path in it too" in missing.stderr
    nothing = run_cli("ls", base, "b.zip")
    assert nothing.returncode == 1 and "has no archive b.zip yet" in nothing.stderr


def test_cat_of_an_archive_names_the_command_that_reads_a_name_not_scavenged_yet(base):
    fill(base, {"a.zip/old": b"archived"})
    rear.scavenge(base)
    fill(base, {"a.zip/new": b"pending"})
    failed = run_cli("cat", os.path.join(base, "a.zip"), "new")
    assert failed.returncode == 1
    suggested = "'rear cat %s a.zip/new'" % base
    assert suggested in failed.stderr and "pending=True" in failed.stderr
    assert run_cli("cat", base, "a.zip/new").stdout == "pending"


def test_a_missing_member_of_an_archive_outside_any_base_says_to_read_through_the_base(
        tmp_path):
    archive = str(tmp_path / "lone.zip")
    with zipfile.ZipFile(archive, "w") as made:
        made.writestr("there", b"x")
    with rear.open_archive(archive) as reader:
        with pytest.raises(KeyError, match=r"open_archive\(BASE, DEST, pending=True\), "
                                           r"'rear cat BASE DEST/gone'"):
            reader.read("gone")


def test_ls_of_a_base_without_the_archive_yet_names_the_pending_listing(base):
    fill(base, {"b.zip/new": b"pending"})
    nothing = run_cli("ls", base, "b.zip")
    assert nothing.returncode == 1
    assert "'rear ls %s b.zip --pending'" % base in nothing.stderr
    assert run_cli("ls", base, "b.zip", "--pending", "-1").stdout == "new\n"


def test_ls_into_a_closed_pipe_ends_quietly(base):
    fill(base, {"a.zip/%d" % n: b"x" for n in range(20000)}, compression="stored")
    rear.scavenge(base)
    result = subprocess.run("%s -m rear ls %s | head -1" % (sys.executable,
                                                            os.path.join(base, "a.zip")),
                            shell=True, env=CHILD_ENV, capture_output=True, text=True)
    assert result.stdout.startswith("      Length") and result.stderr == ""


def test_a_read_only_base_can_be_read_by_another_user(world):
    base = owned_base(world, 0o755)
    listed = as_nobody(world, "ls", base, "a.zip", "-1", "--pending")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["1", "2"]     # archived, and pending in a temp zip
    for member, data in (("a.zip/1", "1"), ("a.zip/2", "2")):
        shown = as_nobody(world, "cat", base, member)
        assert shown.returncode == 0 and shown.stdout == data, shown.stderr


# ---------------------------------------------------------------- the end of a campaign tells the truth


def test_a_flush_that_leaves_temp_zips_names_them_and_exits_3(base):
    writer = run_child(READS_WHILE_WRITING, base, "seal", stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline() == "written\n"      # alive, holding its temp zip
    result = run_cli("scavenge", base, "--flush")
    assert result.returncode == 3, result.stderr
    assert "a live writer holds it (pid %d on %s, still running)" % (
        writer.pid, socket.gethostname()) in result.stderr
    assert "1 temp zip not archived; once their writers have ended" in result.stderr
    writer.stdin.write("go\n")
    writer.stdin.close()
    assert writer.wait(30) == 0
    again = run_cli("scavenge", base, "--flush")
    assert again.returncode == 0 and run_cli("verify", base).returncode == 0


def test_scavenge_watch_ends_on_sigterm_as_on_ctrl_c(base):
    fill(base, {"a.zip/1": b"1"})
    child = subprocess.Popen([sys.executable, "-m", "rear", "scavenge", base, "--watch", "0.1"],
                             env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    time.sleep(1.5)
    child.send_signal(signal.SIGTERM)       # scancel, a job's time limit
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert out.splitlines()[0].startswith("moved 1 files")      # flushed as it happened
    assert out.splitlines()[-1].startswith("stopped; in all: moved 1 files")


# ---------------------------------------------------------------- accounting: rear missing


@pytest.mark.parametrize("pattern, names", [
    ("out/{0..3}.json", ["out/0.json", "out/1.json", "out/2.json", "out/3.json"]),
    ("out/{000..002}.json", ["out/000.json", "out/001.json", "out/002.json"]),
    ("{8..11}", ["8", "9", "10", "11"]),
    ("{08..11}", ["08", "09", "10", "11"]),
    ("{3..1}", ["3", "2", "1"]),
    ("{0..10..5}", ["0", "5", "10"]),
    ("{a,b}/{1..2}.log", ["a/1.log", "a/2.log", "b/1.log", "b/2.log"]),
    ("run{1..2}/task{00..01}", ["run1/task00", "run1/task01", "run2/task00", "run2/task01"]),
    ("plain.txt", ["plain.txt"]),
    ("{x}/{1..1}", ["{x}/1"]),
])
def test_expected_names_expand_as_bash_expands_the_pattern(pattern, names):
    assert [name for name, _value in rear._expand_pattern(pattern)] == names
    if shutil.which("bash"):
        expanded = subprocess.run(["bash", "-c", "printf '%s\\n' " + pattern],
                                  capture_output=True, text=True).stdout.split()
        assert expanded == names


def test_each_name_carries_the_value_of_the_patterns_first_numeric_range():
    assert list(rear._expand_pattern("{a,b}/{07..08}/{1..2}")) == [
        ("a/07/1", 7), ("a/07/2", 7), ("a/08/1", 8), ("a/08/2", 8),
        ("b/07/1", 7), ("b/07/2", 7), ("b/08/1", 8), ("b/08/2", 8)]


def test_a_pattern_is_expanded_lazily_whatever_its_size():
    names = rear._expand_pattern("{0..999999}/{0..999999}")     # 10^12 names
    assert next(names) == ("0/0", 0)
    assert next(names) == ("0/1", 0)


def campaign(base, done, pending=(), dest="results.zip"):
    """Task outputs out/NNN.json: ``done`` archived, ``pending`` written
    but not scavenged yet."""
    with rear.rear_fs(base) as fs:
        for number in done:
            fs.write_bytes("%s/out/%03d.json" % (dest, number), b"%d" % number)
    rear.scavenge(base, flush=True)
    with rear.rear_fs(base) as fs:
        for number in pending:
            fs.write_bytes("%s/out/%03d.json" % (dest, number), b"%d" % number)


def test_missing_names_what_is_neither_archived_nor_pending(base):
    campaign(base, done=[n for n in range(20) if n not in (3, 4, 17)], pending=[4])
    found = rear.missing(base, "results.zip", "out/{000..019}.json")
    assert list(found) == ["out/003.json", "out/017.json"]
    assert (found.expected, found.archived, found.pending, found.missing) == (20, 17, 1, 2)
    assert found.values == {3, 17}


def test_missing_looks_in_every_archive_of_the_series(base):
    with rear.rear_fs(base) as fs:
        for number in range(30):
            fs.write_bytes("results.zip/out/%03d.json" % number, b"%d" % number)
    rear.scavenge(base, flush=True, max_entries=10)
    assert len(glob.glob(os.path.join(base, "results*.zip"))) == 3
    assert list(rear.missing(base, "results.zip", "out/{000..030}.json")) == ["out/030.json"]


def test_missing_reads_an_archive_of_another_tool_once(base):
    with zipfile.ZipFile(os.path.join(base, "results.zip"), "w") as handle:
        for number in range(5):
            handle.writestr("out/%03d.json" % number, b"x")
    assert list(rear.missing(base, "results.zip", "out/{000..006}.json")) == [
        "out/005.json", "out/006.json"]


def test_missing_cli_prints_names_and_exits_3_then_0_once_all_are_there(base):
    campaign(base, done=[0, 1, 3])
    result = run_cli("missing", base, "results.zip", "--expect", "out/{000..003}.json")
    assert (result.returncode, result.stdout) == (3, "out/002.json\n")
    assert result.stderr == ("rear: 1 of 4 expected missing from results.zip (3 archived, 0 "
                             "pending in inbox/)\n")
    campaign(base, done=[], pending=[2])
    result = run_cli("missing", base, "results.zip", "--expect", "out/{000..003}.json")
    assert (result.returncode, result.stdout) == (0, "")
    assert "none of 4 expected missing from results.zip (3 archived, 1 pending" in result.stderr


def test_missing_array_prints_the_task_ids_to_resubmit_in_sbatch_syntax(base):
    campaign(base, done=[n for n in range(60) if n not in (3, 17, 50, 51, 52)])
    result = run_cli("missing", base, "results.zip", "--expect", "out/{000..059}.json",
                     "--array")
    assert (result.returncode, result.stdout) == (3, "3,17,50-52\n")


def test_missing_json_has_the_counts_names_and_array(base):
    campaign(base, done=[0, 2])
    result = run_cli("missing", base, "results.zip", "--expect", "out/{000..002}.json",
                     "--json")
    assert result.returncode == 3
    assert json.loads(result.stdout) == {
        "base": base, "archive": "results.zip", "expected": 3, "archived": 2, "pending": 0,
        "missing": 1, "names": ["out/001.json"], "array": "1"}


def test_missing_takes_literal_names_from_a_file(base, tmp_path):
    campaign(base, done=[0])
    listing = tmp_path / "expected.txt"
    listing.write_text("out/000.json\nout/{odd}.json\n\n")
    result = run_cli("missing", base, "results.zip", "--expect-file", str(listing))
    assert (result.returncode, result.stdout) == (3, "out/{odd}.json\n")


@pytest.mark.parametrize("arguments, message", [
    ([], "say which names are expected: --expect PATTERN"),
    (["--expect", "out/{a,b}.json", "--array"], "--array needs an --expect pattern with a "
     "numeric range"),
])
def test_missing_without_a_usable_expectation_is_a_usage_error(base, arguments, message):
    result = run_cli("missing", base, "results.zip", *arguments)
    assert result.returncode == 2 and message in result.stderr


def test_missing_with_a_mistyped_archive_says_so_and_lists_the_archives_there(base):
    campaign(base, done=[0])
    result = run_cli("missing", base, "result.zip", "--expect", "out/{000..001}.json")
    assert result.returncode == 3
    assert ("has no archive result.zip and nothing pending for it; is the name right? "
            "(archives there: results.zip)") in result.stderr


def test_missing_tells_names_whose_hashes_collide_apart(base, monkeypatch):
    monkeypatch.setattr(rear, "_name_hash", lambda encoded: 1)    # every name collides
    campaign(base, done=[0, 2, 4])
    assert list(rear.missing(base, "results.zip", "out/{000..005}.json")) == [
        "out/001.json", "out/003.json", "out/005.json"]


def test_missing_finds_a_non_ascii_name_another_tool_stored_in_cp437(base):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as handle:
        handle.writestr("X.txt", b"x")
    # 4.4.4: without bit 11 a name is IBM code page 437, where 0x82 is 'é'
    archive = os.path.join(base, "results.zip")
    with open(archive, "wb") as handle:
        handle.write(buffer.getvalue().replace(b"X.txt", b"\x82.txt"))
    campaign(base, done=[9])                       # a commit: rear's index of it
    assert os.path.exists(index_path(base, "results.zip"))
    assert list(rear.missing(base, "results.zip", ["\u00e9.txt", "\u00e8.txt",
                                                   "out/009.json"])) == ["\u00e8.txt"]


# ---------------------------------------------------------------- accounting: provenance, versions


WRITE_ONE_SCRIPT = """
    import sys, rear
    with rear.rear_fs(sys.argv[1]) as fs:
        fs.write_bytes(sys.argv[2], sys.argv[3].encode())
"""

SLURM_TASK_ENV = {"SLURM_JOB_ID": "1235", "SLURM_ARRAY_JOB_ID": "1230",
                  "SLURM_ARRAY_TASK_ID": "5"}


def write_as_task(base, path, text, **env):
    """Write one file from a process with the scheduler's environment ``env``;
    returns that process's pid."""
    child = run_child(WRITE_ONE_SCRIPT, base, path, text, env=dict(CHILD_ENV, **env))
    assert child.wait(60) == 0
    return child.pid


def test_each_entry_records_who_wrote_it_host_pid_and_the_jobs_ids(base):
    pid = write_as_task(base, "r.zip/out/5.json", "x", OMPI_COMM_WORLD_RANK="7",
                        **SLURM_TASK_ENV)
    expected = {"host": socket.gethostname().split(".")[0], "pid": str(pid),
                "slurm_job": "1235",
                "slurm_array_job": "1230", "slurm_array_task": "5", "mpi_rank": "7"}
    with rear.open_archive(base, "r.zip", pending=True) as reader:      # still pending
        assert reader.provenance("out/5.json") == expected
    rear.scavenge(base)
    with rear.open_archive(base, "r.zip") as reader:                    # archived
        assert reader.provenance("out/5.json") == expected
    read_archive(os.path.join(base, "r.zip"))                          # unzip -t, zipfile


def test_a_salvaged_entry_keeps_who_wrote_it(base):
    killed = run_child("""
        import os, signal, sys, rear
        fs = rear.rear_fs(sys.argv[1]).__enter__()
        fs.write_bytes("r.zip/a", b"a")
        os.kill(os.getpid(), signal.SIGKILL)      # never sealed
    """, base, env=dict(CHILD_ENV, **SLURM_TASK_ENV))
    assert killed.wait(60) == -signal.SIGKILL
    assert rear.scavenge(base, flush=True).salvaged == 1
    with rear.open_archive(base, "r.zip") as reader:
        assert reader.provenance("a") == {
            "host": socket.gethostname().split(".")[0], "pid": str(killed.pid),
            "slurm_job": "1235",
            "slurm_array_job": "1230", "slurm_array_task": "5"}


def test_provenance_is_only_in_local_headers_and_every_reader_accepts_it(base):
    write_as_task(base, "r.zip/x", "x", **SLURM_TASK_ENV)
    rear.scavenge(base)
    archive = os.path.join(base, "r.zip")
    with zipfile.ZipFile(archive) as handle:
        (info,) = handle.infolist()
    assert struct.pack("<H", rear._PROVENANCE_ID) not in info.extra    # central record
    assert struct.pack("<H", rear._PROVENANCE_ID) in open(archive, "rb").read()
    unzip_test(archive)


def test_a_requeued_tasks_two_runs_are_told_apart_by_ls_versions(base):
    write_as_task(base, "r.zip/out/5.json", "first run", **SLURM_TASK_ENV)
    rear.scavenge(base)
    write_as_task(base, "r.zip/out/5.json", "second run", SLURM_RESTART_COUNT="1",
                  **SLURM_TASK_ENV)
    rear.scavenge(base)
    result = run_cli("ls", "--versions", "--json", base, "r.zip")
    copies = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(c["name"], c["version"], c["stored_as"]) for c in copies] == [
        ("out/5.json", 1, "out/5.json"), ("out/5.json", 2, "out/5.json.~1~")]
    assert "slurm_restart" not in copies[0]["provenance"]
    assert copies[1]["provenance"]["slurm_restart"] == "1"
    assert copies[0]["provenance"]["slurm_array_task"] == "5"
    lines = run_cli("ls", "--versions", base, "r.zip").stdout.splitlines()
    assert len(lines) == 2 and "slurm_restart=1" in lines[1] and "out/5.json.~1~" in lines[1]


def test_a_name_means_its_first_copy_before_and_after_scavenging(base):
    with rear.rear_fs(base) as fs:
        fs.write_bytes("r.zip/x", b"first")
    rear.scavenge(base)
    with rear.rear_fs(base) as fs:
        fs.write_bytes("r.zip/x", b"second")
    assert rear.read_bytes(base, "r.zip/x") == b"first"            # second still pending
    assert run_cli("cat", base, "r.zip/x").stdout == "first"
    assert list(rear.missing(base, "r.zip", "x")) == []
    rear.scavenge(base)
    assert rear.read_bytes(base, "r.zip/x") == b"first"
    assert run_cli("cat", base, "r.zip/x").stdout == "first"
    assert unzip_p(os.path.join(base, "r.zip"), "x") == b"first"


@pytest.mark.parametrize("version, expected", [("first", b"one"), ("last", b"three"),
                                               (1, b"two"), (2, b"three")])
def test_the_other_copies_of_a_name_are_read_by_version(base, version, expected):
    for content in (b"one", b"two", b"three"):
        with rear.rear_fs(base) as fs:
            fs.write_bytes("r.zip/x", content)
        rear.scavenge(base)
    assert rear.read_bytes(base, "r.zip/x", version=version) == expected
    with rear.open_archive(base, "r.zip") as reader:
        assert reader.copies("x") == ["x", "x.~1~", "x.~2~"]
        assert reader.read("x", version=version) == expected
    result = run_cli("cat", "--version", str(version), base, "r.zip/x")
    assert result.stdout.encode() == expected


@pytest.mark.parametrize("version", [0, -1, "newest", True])
def test_a_version_that_is_not_one_is_refused_saying_what_is(base, version):
    with rear.rear_fs(base) as fs:
        fs.write_bytes("r.zip/x", b"x")
    with pytest.raises(ValueError, match="version must be 'first', 'last' or a copy number"):
        rear.read_bytes(base, "r.zip/x", version=version)


def unzip_p(archive, member):
    """The bytes Info-ZIP unzip gives for ``member``: an independent reader's
    answer to which copy a name means."""
    if shutil.which("unzip") is None:
        pytest.skip("Info-ZIP unzip is not installed (apt-get install unzip)")
    return subprocess.run(["unzip", "-p", archive, member], capture_output=True,
                          check=True).stdout


@pytest.mark.parametrize("arguments, message", [
    (["results", "--expect", "x"], "'results' is not an archive path; give one like "
     "'results.zip' or 'sub/name.zip'"),
    (["results.zip", "--expect-file", "/nonexistent/names.txt"], "cannot read --expect-file "
     "/nonexistent/names.txt: No such file or directory; give a file of expected names"),
])
def test_missing_with_a_bad_archive_or_names_file_says_what_to_give(base, arguments, message):
    result = run_cli("missing", base, *arguments)
    assert result.returncode == 1
    assert result.stderr.startswith("rear: error: " + message)
    assert "Traceback" not in result.stderr


def test_ls_versions_lists_a_name_that_only_looks_like_a_copy_under_itself(base):
    with rear.rear_fs(base) as fs:
        fs.write_bytes("r.zip/notes.~1~", b"a user's own name")
    rear.scavenge(base)
    lines = run_cli("ls", "--versions", base, "r.zip").stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("notes.~1~  notes.~1~  17  ")


@pytest.mark.parametrize("pattern, hint", [
    ("out/{0..2}.json", "Zero padding is {000..999}, not {0..999}"),
    ("out/*.json", "'*' and '?' are not expanded: use braces"),
])
def test_missing_whose_pattern_matches_nothing_there_says_so_before_a_resubmission_of_all(
        base, pattern, hint):
    campaign(base, done=[0, 1, 2])
    result = run_cli("missing", base, "results.zip", "--expect", pattern)
    assert result.returncode == 3
    assert ("none of the expected names is in results.zip, which holds others "
            "(out/000.json, out/001.json, out/002.json, ...); is the pattern right?"
            in result.stderr) and hint in result.stderr


SLOW_SCAVENGER_SCRIPT = """
    import sys, time, rear

    def checkpoint(name):
        if name == "journal-written":       # a commit that takes its time
            time.sleep(float(sys.argv[2]))

    rear._crash_test_point = checkpoint
    sys.exit(1 if rear.scavenge(sys.argv[1], flush=True).errors else 0)
"""


def test_two_flushing_scavengers_both_exit_0_when_together_they_finished(base):
    files = fill_temp_zips(base, 4, 10)
    slow = run_child(SLOW_SCAVENGER_SCRIPT, base, "2.0")
    journal = os.path.join(base, "inbox", "archives", rear._archive_key("a.zip") + ".journal")
    deadline = time.monotonic() + 60
    while not os.path.exists(journal):          # it has claimed every temp zip
        assert time.monotonic() < deadline and slow.poll() is None
        time.sleep(0.01)
    result = run_cli("scavenge", "--flush", base)
    assert result.returncode == 0, result.stderr
    assert "remains" not in result.stderr
    assert slow.wait(60) == 0
    assert inbox_temp_zips(base) == []
    assert_exactly_once(base, files)


def temp_zips_by_part(base, count):
    """{K: the temp zip names of part K of ``count``} (scavenge's split)."""
    parts = {number: set() for number in range(1, count + 1)}
    inbox = os.path.join(base, "inbox")
    for path in inbox_temp_zips(base):
        key = rear._part_key(inbox, os.path.join(inbox, path))
        for number in parts:
            if rear._in_part(key, (number, count)):
                parts[number].add(path)
    return parts


def fill_as_host(base, host, files, monkeypatch, **fs_options):
    """fill() by a writer on ``host`` (sealed: a scavenger here takes it)."""
    with monkeypatch.context() as patch:
        patch.setattr(socket, "gethostname", lambda: host)
        fill(base, files, **fs_options)


def test_a_sharded_inbox_keeps_each_hosts_temp_zips_in_a_directory_of_its_own(base, monkeypatch):
    files = {}
    for host in ("node1", "node2"):
        batch = {"a.zip/%s/%d" % (host, n): b"%d" % n for n in range(5)}
        fill_as_host(base, host, batch, monkeypatch, shard_inbox=True)
        files.update(batch)
    temps = inbox_temp_zips(base)
    assert [path.split(os.sep)[:2] for path in temps] == [["hosts", "node1"],
                                                          ["hosts", "node2"]]
    stats = rear.scavenge(base)
    assert stats.errors == [] and stats.files_moved == 10 and inbox_temp_zips(base) == []
    assert_exactly_once(base, files)


def test_rear_shard_inbox_in_the_environment_shards_and_a_bad_value_says_what_to_give(
        base, monkeypatch):
    monkeypatch.setenv("REAR_SHARD_INBOX", "1")
    fill(base, {"a.zip/x": b"x"})
    (path,) = inbox_temp_zips(base)
    assert path.startswith(os.path.join("hosts", rear._short_hostname(), ""))
    monkeypatch.setenv("REAR_SHARD_INBOX", "per-node")
    with pytest.raises(ValueError, match="REAR_SHARD_INBOX='per-node': give 1 "):
        rear.rear_fs(base)
    with pytest.raises(ValueError, match="shard_inbox must be True or False, not 'yes'"):
        rear.rear_fs(base, shard_inbox="yes")


def test_status_and_the_pending_views_see_a_sharded_inbox(base):
    fill(base, {"a.zip/out/1.txt": b"one", "a.zip/out/2.txt": b"two"}, shard_inbox=True)
    (temp,) = rear.status(base).temp_zips
    assert temp.state == "sealed"
    assert temp.path.startswith("hosts/%s/" % rear._short_hostname())
    assert run_cli("cat", base, "a.zip/out/2.txt").stdout == "two"
    listed = run_cli("ls", base, "a.zip", "--pending", "-1")
    assert listed.stdout.split() == ["out/1.txt", "out/2.txt"]
    missing = run_cli("missing", base, "a.zip", "--expect", "out/{1..3}.txt")
    assert missing.returncode == 3 and missing.stdout.split() == ["out/3.txt"]


def test_a_killed_sharded_writer_is_salvaged_by_a_flush(base):
    writer = run_child(READS_WHILE_WRITING, base, "seal", stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE, text=True,
                       env=dict(CHILD_ENV, REAR_SHARD_INBOX="1"))
    assert writer.stdout.readline() == "written\n"
    writer.kill()
    writer.wait(30)
    (path,) = inbox_temp_zips(base)
    assert path.startswith("hosts" + os.sep)
    result = run_cli("scavenge", "--flush", base)
    assert result.returncode == 0, result.stderr
    assert inbox_temp_zips(base) == [] and run_cli("verify", base).returncode == 0


def test_parts_of_a_sharded_inbox_are_whole_hosts(base, monkeypatch):
    files = {}
    for host in ("node%d" % number for number in range(8)):
        for rotation in range(2):
            batch = {"a.zip/%s/%d/%d" % (host, rotation, n): b"x" for n in range(3)}
            fill_as_host(base, host, batch, monkeypatch, shard_inbox=True)
            files.update(batch)
    listed = []
    real_listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda path: listed.append(path) or real_listdir(path))
    hosts_left = {path.split(os.sep)[1] for path in inbox_temp_zips(base)}
    for number in (1, 2):
        del listed[:]
        rear.scavenge(base, part=(number, 2))
        # Its own hosts' directories listed, and no other's.
        shards = {os.path.basename(path) for path in listed
                  if os.path.dirname(path) == os.path.join(base, "inbox", "hosts")}
        now_left = {path.split(os.sep)[1] for path in inbox_temp_zips(base)}
        taken, hosts_left = hosts_left - now_left, now_left
        assert shards == taken and taken
    assert hosts_left == set() and inbox_temp_zips(base) == []
    assert_exactly_once(base, files)


@pytest.mark.parametrize("where", ["hosts", "host"])
def test_a_file_where_a_shard_belongs_is_refused_when_the_rear_fs_is_entered(base, where):
    fill(base, {"a.zip/before": b"kept"}, shard_inbox=False)
    hosts = os.path.join(base, "inbox", "hosts")
    obstacle = hosts if where == "hosts" else os.path.join(hosts, rear._short_hostname())
    os.makedirs(os.path.dirname(obstacle), exist_ok=True)
    with open(obstacle, "w") as handle:
        handle.write("a user's file")
    with pytest.raises(rear.RearError, match="%s is not a directory; a sharded inbox keeps "
                       "each host's temp zips in inbox/hosts/HOST/: move it out of the inbox"
                       % re.escape(obstacle)):
        with rear.rear_fs(base, shard_inbox=True):
            pass
    assert open(obstacle).read() == "a user's file"
    assert rear.scavenge(base).files_moved == 1


def test_parts_of_the_inbox_are_disjoint_and_cover_every_temp_zip(base):
    fill_temp_zips(base, 45, 1, shard_inbox=False)      # one host: sharded, one part
    parts = temp_zips_by_part(base, 3)
    assert sum(len(names) for names in parts.values()) == 45
    assert set.union(*parts.values()) == set(inbox_temp_zips(base))
    assert all(parts.values()), "45 temp zips split 3 ways left a part empty"


def test_a_scavenger_given_a_part_takes_that_part_only(base):
    files = fill_temp_zips(base, 12, 2)
    parts = temp_zips_by_part(base, 3)
    for number in (1, 2, 3):
        left = set(inbox_temp_zips(base))
        stats = rear.scavenge(base, part=(number, 3))
        assert stats.errors == [] and stats.temp_zips_done == len(parts[number])
        assert left - set(inbox_temp_zips(base)) == parts[number]
    assert_exactly_once(base, files)


def test_a_flush_of_one_part_exits_0_leaving_the_other_parts_untouched(base):
    files = fill_temp_zips(base, 8, 2)
    parts = temp_zips_by_part(base, 2)
    result = run_cli("scavenge", "--flush", "--part", "1/2", base)
    assert result.returncode == 0, result.stderr
    assert "remains" not in result.stderr
    assert set(inbox_temp_zips(base)) == parts[2]
    assert run_cli("scavenge", "--flush", "--part", "2/2", base).returncode == 0
    assert_exactly_once(base, files)


def test_scavengers_given_every_part_at_once_archive_everything_once(base):
    files = fill_temp_zips(base, 20, 50)
    children = [subprocess.Popen([sys.executable, "-m", "rear", "scavenge", "--flush", "--part",
                                  "%d/3" % number, base], env=CHILD_ENV,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                for number in (1, 2, 3)]
    for child in children:
        _out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
    assert inbox_temp_zips(base) == []
    assert_exactly_once(base, files)


@pytest.mark.parametrize("given", ["0/4", "5/4", "4", "1/0", "1/2/3", "a/b"])
def test_a_part_that_is_not_k_of_n_is_refused_saying_how_to_give_one(base, given):
    fill(base, {"a.zip/x": b"x"})
    result = run_cli("scavenge", "--part", given, base)
    assert result.returncode == 2
    assert "%r is not a part: give K/N with 1 <= K <= N, like 1/4 to 4/4" % given \
        in result.stderr
    assert len(inbox_temp_zips(base)) == 1


@pytest.mark.parametrize("given", [(0, 4), (5, 4), (1,), "1/4", (1.0, 4), (1, 4, 2)])
def test_scavenge_refuses_a_part_that_is_not_k_of_n(base, given):
    with pytest.raises(ValueError, match="part must be \\(K, N\\) with 1 <= K <= N"):
        rear.scavenge(base, part=given)


def test_a_picked_up_executable_keeps_its_mode_and_who_wrote_it(base, tmp_path):
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)        # a mode field goes between the time and the provenance
    with rear.rear_fs(base) as fs:
        with fs.pickup(str(script), "r.zip/run.sh"):
            pass
    rear.scavenge(base)
    with rear.open_archive(base, "r.zip") as reader:
        assert stat.S_IMODE(reader.info("run.sh").mode) == 0o755
        assert reader.provenance("run.sh")["pid"] == str(os.getpid())
