"""rear on real distributed filesystems: GlusterFS, CephFS and MooseFS,
each mounted by two FUSE clients that stand in for two nodes.

netfs_harness.py brings each filesystem up on this machine (GlusterFS and
CephFS on loopback, MooseFS in a network namespace of its own).  GlusterFS
runs twice: volume ``default`` keeps Gluster's client caching (what users
get), ``nocache`` turns it off.  CephFS and MooseFS run with their stock
client and server settings.

The invariant is the torture suite's: every acknowledged file is in a final
archive exactly once, byte-identical, and every archive passes ``unzip -t``
and zipfile, read back through the other client.  A node crash is a third
client's FUSE daemon SIGKILLed under writers that report each acknowledged
file over a pipe.  The smaller tests pin down each way a second client broke
rear before it was fixed, and measure what differs between the filesystems.

Needs root and /dev/fuse (true on CI); skips with the reason elsewhere.  The
run ends with one summary line per filesystem, ``netfs: ...``, printed by
conftest.py.
"""

import collections
import errno
import fcntl
import inspect
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
import zipfile

import pytest

import netfs_harness
import rear
import test_rear
from conftest import fill
from test_rear import (SCAVENGER_LOOP_SCRIPT, as_sets, check_archives, inbox_temp_zips,
                       run_child, run_cli)
from test_torture import WriterContents, start_torture_writer, torture_content

#: (filesystem, mode) -> counter; conftest.py prints one line per filesystem.
COUNTS = collections.defaultdict(collections.Counter)
#: Measurements (seconds, yes/no) per filesystem, for the summary lines.
MEASURED = collections.defaultdict(dict)
LABELS = {"glusterfs": "GlusterFS", "cephfs": "CephFS", "moosefs": "MooseFS"}
TARGETS = [("glusterfs", "default"), ("glusterfs", "nocache"), ("cephfs", "default"),
           ("moosefs", "default")]
#: How long a change made through one client can take to show through the
#: other to readers that are not rear (unzip, zipfile): Gluster's default
#: caching 1-2 s measured; MooseFS's client caches attributes for 1 s.
CACHE_SETTLE = {("glusterfs", "default"): 3.0, ("glusterfs", "nocache"): 0.0,
                ("cephfs", "default"): 0.0, ("moosefs", "default"): 3.0}


class _Clusters:
    """Each filesystem brought up the first time a test asks for it, all
    of them taken down at the end of the session."""

    def __init__(self):
        self.up = {}

    def get(self, filesystem):
        reason = netfs_harness.unavailable_reason(filesystem)
        if reason:
            pytest.skip(reason)
        if filesystem not in self.up:
            workdir = tempfile.mkdtemp(prefix="rear-%s-" % filesystem)
            cluster = netfs_harness.FILESYSTEMS[filesystem](workdir)
            self.up[filesystem] = cluster
            cluster.up()
        return self.up[filesystem]

    def down(self):
        for cluster in self.up.values():
            cluster.down()


@pytest.fixture(scope="session")
def clusters():
    manager = _Clusters()
    try:
        yield manager
    finally:
        manager.down()   # also when a test failed, or bringing one up did


def _target_id(target):
    return "%s-%s" % target if target[0] == "glusterfs" else target[0]


@pytest.fixture(params=TARGETS, ids=_target_id)
def clients(request, clusters):
    """(target, base through client A, the same base through client B)."""
    filesystem, mode = request.param
    cluster = clusters.get(filesystem)
    mount_a, mount_b = cluster.mounts[mode]
    name = "t-%s" % uuid.uuid4().hex[:12]
    base_a, base_b = os.path.join(mount_a, name), os.path.join(mount_b, name)
    os.makedirs(base_a)
    _wait_until(lambda: os.path.isdir(base_b))
    yield request.param, base_a, base_b
    shutil.rmtree(base_a, ignore_errors=True)


def _wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _check_archives(target, base, must_have, allowed):
    """check_archives, its lost and corrupt files also counted for ``target``."""
    shared = test_rear.COUNTS
    before = shared["lost"], shared["corrupt"]
    try:
        check_archives(base, must_have, allowed, conflicts=True)
    finally:
        COUNTS[target]["lost"] += shared["lost"] - before[0]
        COUNTS[target]["corrupt"] += shared["corrupt"] - before[1]


# A reader on the other client during the chaos: every member it reads
# (archived or still in a temp zip) must come back with exactly the bytes
# its writer wrote, or not be found yet; never anything else.
READER_LOOP_SCRIPT = "import random\n" + inspect.getsource(torture_content) + '''
import json, sys, time, rear
base, until = sys.argv[1], float(sys.argv[2])
rng = random.Random(0)
counts = {"exact": 0, "not found yet": 0, "not readable now": 0}
while time.time() < until:
    for dest in ("a.zip", "b.zip", "sub/c.zip"):
        try:
            with rear.open_archive(base, dest, pending=True, lock_timeout=5) as reader:
                names = list(reader.names())
                for name in rng.sample(names, min(20, len(names))):
                    try:
                        data = reader.read(name)
                    except KeyError:
                        counts["not found yet"] += 1
                        continue
                    if data != torture_content(dest + "/" + name.split(".~")[0]):
                        sys.exit("%s/%s came back with other bytes" % (dest, name))
                    counts["exact"] += 1
        except rear.RearError as err:     # no archive yet, a view still settling
            counts["not readable now"] += 1
    time.sleep(0.05)
print(json.dumps(counts))
'''


# ---------------------------------------------------------------- the invariant across clients


def test_writers_on_one_client_scavengers_on_both_killed_at_random_lose_nothing(clients,
                                                                                long_mode):
    target, base_a, base_b = clients
    rng = random.Random(_target_id(target))
    duration = 90.0 if long_mode else 12.0
    until = time.time() + duration
    writers, scavengers, acknowledged = [], [], {}
    kills = collections.Counter()

    def start_scavenger():
        base = rng.choice([base_a, base_b])
        return run_child(SCAVENGER_LOOP_SCRIPT, base, str(until), "0.5",
                         stderr=subprocess.PIPE, text=True)

    seed = 0
    for seed in range(4):
        writers.append(start_torture_writer(base_a, seed=seed, threads=2, rotation=0.5))
    scavengers = [start_scavenger() for _ in range(3)]
    reader = run_child(READER_LOOP_SCRIPT, base_b, str(until), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    while time.time() < until - 1.5:
        time.sleep(rng.uniform(0.2, 1.0))
        if rng.random() < 0.5:
            victim = writers.pop(rng.randrange(len(writers)))
            acknowledged.update(victim.kill())
            kills["writer"] += 1
            seed += 1
            writers.append(start_torture_writer(base_a, seed=seed, threads=2, rotation=0.5))
        else:
            victim = scavengers.pop(rng.randrange(len(scavengers)))
            victim.kill()
            victim.wait(60)
            kills["scavenger"] += 1
            scavengers.append(start_scavenger())
    for writer in writers:
        acknowledged.update(writer.kill())
    kills["writer"] += len(writers)
    for scavenger in scavengers:
        assert scavenger.wait(300) == 0, scavenger.stderr.read()
    out, err = reader.communicate(timeout=300)
    assert reader.returncode == 0, err        # no read ever returned wrong bytes
    reads = json.loads(out)
    assert reads["exact"] > 0, reads
    COUNTS[target]["reads"] += reads["exact"]
    # The final flush on the other client, then everything read back
    # through the writers' client.
    stats = rear.scavenge(base_b, flush=True, rotation_span=3600)
    assert stats.errors == []
    time.sleep(CACHE_SETTLE[target])
    assert inbox_temp_zips(base_a) == []
    assert len(acknowledged) > 100
    _check_archives(target, base_a, as_sets(acknowledged), WriterContents())
    COUNTS[target]["files"] += len(acknowledged)
    COUNTS[target]["writer kills"] += kills["writer"]
    COUNTS[target]["scavenger kills"] += kills["scavenger"]
    COUNTS[target]["runs"] += 1


# ---------------------------------------------------------------- one test per fix


def test_a_file_another_client_appended_to_is_seen_as_the_server_has_it(clients):
    """The cause of a lost commit: with its size cached from before another
    client's commit, a scavenger appended over the entries it added."""
    target, base_a, base_b = clients
    path_a, path_b = os.path.join(base_a, "f"), os.path.join(base_b, "f")
    with open(path_a, "wb") as handle:
        handle.write(b"old" * 100)
    _wait_until(lambda: os.path.exists(path_b))
    with open(path_b, "rb") as handle:    # client B caches size and data
        assert handle.read() == b"old" * 100
    with open(path_a, "ab") as handle:
        handle.write(b"new" * 100)
        handle.flush()
        os.fsync(handle.fileno())
    def read(st):
        # as rear's parsers do: bytes short of the size are an error
        data = os.pread(fd, st.st_size, 0)
        if len(data) != st.st_size:
            raise rear.ArchiveError("short read")
        return data

    fd = os.open(path_b, os.O_RDONLY)
    try:
        assert rear._await_current_view(fd, path_b, read) == b"old" * 100 + b"new" * 100
    finally:
        os.close(fd)
    COUNTS[target]["fix checks"] += 1


def test_a_sidecar_another_client_keeps_replacing_is_read_not_reported_stale(clients):
    target, base_a, base_b = clients
    os.makedirs(os.path.join(base_a, "inbox"))
    path_a = os.path.join(base_a, "inbox", "w.json")
    path_b = os.path.join(base_b, "inbox", "w.json")
    manifest = rear._new_manifest(time.time())
    rear._write_manifest(path_a, manifest)
    _wait_until(lambda: os.path.exists(path_b))
    for number in range(60):
        manifest["entries"] = number
        rear._write_manifest(path_a, manifest)      # os.replace: a new inode each time
        read = rear._read_manifest(path_b)          # must not raise ESTALE
        assert read["format"] == "rear-manifest"
    COUNTS[target]["fix checks"] += 1


def test_a_temp_zip_another_client_just_ingested_is_skipped_without_an_error(clients):
    target, base_a, base_b = clients
    fill(base_a, {"a.zip/1": b"1"})
    [name] = inbox_temp_zips(base_a)
    path_b = os.path.join(base_b, "inbox", name)
    _wait_until(lambda: os.path.exists(path_b))      # client B has looked it up...
    assert rear.scavenge(base_a).files_moved == 1    # ...client A ingests and deletes it
    stats = rear.ScavengeStats()
    assert rear._claim(path_b, stats, flush=True, grace=0.0) is None   # B's cache still shows it
    assert stats.errors == []
    assert rear.scavenge(base_b, flush=True).errors == []
    COUNTS[target]["fix checks"] += 1


def test_a_commit_journal_another_client_finished_is_not_read(clients):
    target, base_a, base_b = clients
    fill(base_a, {"a.zip/1": b"1"})
    assert rear.scavenge(base_a).files_moved == 1
    paths_a = rear._ArchivePaths(base_a, "a.zip")
    paths_b = rear._ArchivePaths(base_b, "a.zip")
    with open(paths_a.commit, "wb") as handle:
        handle.write(b"a journal another scavenger is finishing")
    _wait_until(lambda: os.path.exists(paths_b.commit))   # B's entry cache holds it
    os.unlink(paths_a.commit)                             # finished on client A
    stats = rear.ScavengeStats()
    rear._recover_locked(paths_b, stats)                  # must not open a ghost
    assert stats.recovered_journals == 0
    COUNTS[target]["fix checks"] += 1


# ---------------------------------------------------------------- the summary


def summary_line(filesystem, label, counts):
    """``netfs: CephFS, 2 clients; ...`` from the counts of its tests."""
    parts = ["%d writer kills" % counts.get("writer kills", 0),
             "%d scavenger kills" % counts.get("scavenger kills", 0),
             "%d client crash%s" % (counts.get("client crashes", 0),
                                    "" if counts.get("client crashes", 0) == 1 else "es"),
             "%d files acknowledged" % counts.get("files", 0),
             "%d exact reads during the chaos" % counts.get("reads", 0),
             "%d fix checks" % counts.get("fix checks", 0)]
    measured = MEASURED.get(filesystem, {})
    parts += ["%s: %s" % item for item in sorted(measured.items())]
    parts += ["%d lost" % counts.get("lost", 0), "%d corrupt" % counts.get("corrupt", 0)]
    return "netfs: %s, 2 clients; %s" % (label, ", ".join(parts))
