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
import inspect
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
import zipfile

import pytest

import rear
from tests import netfs_harness
from tests.support import (SCAVENGER_LOOP_SCRIPT, STUCK_SCAVENGER_SCRIPT, WriterContents,
                           archives_of, as_sets, check_archives, fill, inbox_temp_zips, run_child, run_cli,
                           start_torture_writer, torture_content)

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
        self.failed = {}     # filesystem -> why it could not be brought up

    def get(self, filesystem):
        reason = netfs_harness.unavailable_reason(filesystem)
        if reason:
            pytest.skip(reason)
        if filesystem in self.failed:    # every dependent test fails for the same reason
            pytest.fail("%s could not be brought up: %s" % (filesystem, self.failed[filesystem]))
        if filesystem not in self.up:
            workdir = tempfile.mkdtemp(prefix="rear-%s-" % filesystem)
            cluster = netfs_harness.FILESYSTEMS[filesystem](workdir)
            try:
                cluster.up()
            except BaseException as err:
                self.failed[filesystem] = "%s: %s" % (type(err).__name__, err)
                cluster.down()
                raise
            self.up[filesystem] = cluster
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


def test_writers_on_one_client_scavengers_on_both_killed_at_random_lose_nothing(tally, clients,
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
    tally.netfs[target]["reads"] += reads["exact"]
    # The final flush on the other client, then everything read back
    # through the writers' client.
    stats = rear.scavenge(base_b, flush=True, rotation_span=3600)
    assert stats.errors == []
    time.sleep(CACHE_SETTLE[target])
    assert inbox_temp_zips(base_a) == []
    assert len(acknowledged) > 100
    check_archives(base_a, as_sets(acknowledged), WriterContents(), conflicts=True,
                   tally=tally.netfs[target])
    tally.netfs[target]["files"] += len(acknowledged)
    tally.netfs[target]["writer kills"] += kills["writer"]
    tally.netfs[target]["scavenger kills"] += kills["scavenger"]
    tally.netfs[target]["runs"] += 1


# ---------------------------------------------------------------- a node crash


# A writer that reports each acknowledged file ("ack NAME") and, under
# sync="rotation", each seal it made ("sealed") over its stdout, a pipe that
# does not go through the filesystem that is about to lose its client.
CRASH_WRITER = "import random\n" + inspect.getsource(torture_content) + '''
import sys, rear
base, sync, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
with rear.rear_fs(base, rotation_span=3600, sync=sync) as fs:
    n = 0
    while True:
        name = "%s/%s/w%d/%06d" % (("a.zip", "sub/c.zip")[n % 2], sync, seed, n)
        fs.write_bytes(name, torture_content(name))
        print("ack " + name, flush=True)
        n += 1
        if sync == "rotation" and n % 40 == 0:
            fs.rotate()
            print("sealed", flush=True)
'''


class CrashWriter:
    """The files a CRASH_WRITER acknowledged, and which of them were sealed."""

    def __init__(self, base, sync, seed):
        self.sync = sync
        self.acknowledged = []
        self.sealed = 0        # how many of them were acknowledged before the last seal
        self.process = run_child(CRASH_WRITER, base, sync, str(seed), stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.process.stdout:
            if line == "sealed\n":
                self.sealed = len(self.acknowledged)
            elif line.startswith("ack ") and line.endswith("\n"):
                self.acknowledged.append(line[4:-1])

    def kill(self):
        self.process.kill()
        self.process.wait(60)
        self.thread.join(60)

    def durable(self):
        """What must survive a node crash: every file under sync="file", the
        sealed ones under sync="rotation"."""
        return self.acknowledged if self.sync == "file" else self.acknowledged[:self.sealed]


CRASH_TARGETS = [("glusterfs", "default"), ("cephfs", "default"), ("moosefs", "default")]


@pytest.mark.parametrize("target", CRASH_TARGETS, ids=_target_id)
def test_a_client_crash_loses_nothing_acknowledged_and_durable_before_it(tally, target, clusters):
    """Writers on a third client whose FUSE daemon is SIGKILLed (what the
    cluster sees of a node crash), then the writers too; the other client
    salvages their temp zips once the filesystem frees their locks, or by
    --dead-host where it keeps them (MooseFS, for a day by default)."""
    filesystem, mode = target
    cluster = clusters.get(filesystem)
    mount_a, mount_b = cluster.mounts[mode]
    mount_c = cluster.mount_client("crash-%s" % uuid.uuid4().hex[:8])
    name = "t-%s" % uuid.uuid4().hex[:12]
    base_a, base_b, base_c = (os.path.join(point, name) for point in (mount_a, mount_b, mount_c))
    os.makedirs(base_c)
    _wait_until(lambda: os.path.isdir(base_b))
    writers = [CrashWriter(base_c, sync, seed)
               for seed, sync in enumerate(["file", "file", "rotation", "rotation"])]
    try:
        _wait_until(lambda: all(writer.sealed >= 40 if writer.sync == "rotation"
                                else len(writer.acknowledged) >= 40 for writer in writers),
                    timeout=120)
        crashed = time.monotonic()
        cluster.kill_client(mount_c)
    finally:
        for writer in writers:    # a crashed node's processes die with it
            writer.kill()
    dead_hosts = ()
    if filesystem == "moosefs":
        # The crashed client's session, and its locks, live on for
        # SESSION_SUSTAIN_TIME: a flush says so and says what to do.
        result = run_cli("scavenge", "--flush", base_b, timeout=300)
        assert result.returncode == 3, result.stderr
        assert "--dead-host %s" % socket.gethostname() in result.stderr
        dead_hosts = (socket.gethostname(),)
    taken_over = _salvage_everything(base_b, dead_hosts, crashed)
    salvaged_after = time.monotonic() - crashed
    time.sleep(CACHE_SETTLE[target])
    durable = [key for writer in writers for key in writer.durable()]
    check_archives(base_a, as_sets({key: torture_content(key) for key in durable}),
                   WriterContents(), conflicts=True, tally=tally.netfs[target])
    archived = set()
    for archive, members in archives_of(base_a).items():
        archived.update("%s/%s" % (archive, member) for member in members)
    unsealed = [key for writer in writers if writer.sync == "rotation"
                for key in writer.acknowledged[writer.sealed:]]
    measured = tally.measured[target]
    measured["salvaged after the crash"] = "%.0f s%s" % (
        salvaged_after, " (%d taken over, --dead-host)" % taken_over if taken_over else "")
    measured["sync=rotation files acknowledged after the last seal that survived"] = (
        "%d of %d" % (sum(key in archived for key in unsealed), len(unsealed)))
    tally.netfs[target]["client crashes"] += 1
    tally.netfs[target]["files"] += sum(len(writer.acknowledged) for writer in writers)


WRITE_AND_EXIT_SCRIPT = """
    import json, sys, rear
    with rear.rear_fs(sys.argv[1]) as fs:
        for name, text in json.load(sys.stdin).items():
            fs.write_bytes(name, text.encode())
"""


def _write_and_exit(base, files):
    """Write ``files`` ({path: text}) from a process that then exits, as a
    crashed node's writers would have."""
    writer = run_child(WRITE_AND_EXIT_SCRIPT, base, stdin=subprocess.PIPE)
    writer.communicate(json.dumps(files).encode(), timeout=120)
    assert writer.returncode == 0


@pytest.mark.parametrize("step", ["journal-written", "entries-written"])
def test_a_scavenger_node_crash_mid_commit_is_taken_over_by_dead_host(tally, clusters,
                                                                      monkeypatch, step):
    """MooseFS keeps a crashed client's locks, an archive lock held mid-commit
    too, for SESSION_SUSTAIN_TIME (a day by default).  A scavenger on a third
    client stopped mid-commit (its journal written; or its new entries
    written over the old tail too, not yet fsynced), that client's FUSE
    daemon SIGKILLed, then the scavenger: from another client a scavenger
    says who holds the lock and gives up in bounded time, and --dead-host
    takes the lock over, rolls the commit back and commits everything.
    (Where the dead client was writing the archive's chunk, MooseFS 3.0
    makes every client wait about two minutes for that chunk.)"""
    cluster = clusters.get("moosefs")
    target = ("moosefs", "default")
    mount_a, mount_b = cluster.mounts["default"]
    mount_c = cluster.mount_client("crash-%s" % uuid.uuid4().hex[:8])
    name = "t-%s" % uuid.uuid4().hex[:12]
    base_a, base_b, base_c = (os.path.join(point, name) for point in (mount_a, mount_b, mount_c))
    os.makedirs(base_c)
    _wait_until(lambda: os.path.isdir(base_b))
    files = {"a.zip/old/%d" % n: "old %d" % n for n in range(20)}
    _write_and_exit(base_c, files)
    rear.scavenge(base_c)
    stuck = {"a.zip/stuck/%d" % n: "stuck %d " % n * 100 for n in range(200)}
    _write_and_exit(base_c, stuck)
    files.update(stuck)
    scavenger = run_child(STUCK_SCAVENGER_SCRIPT, base_c, "", step)
    try:
        _wait_until(lambda: rear._process_state(scavenger.pid) == rear._PROCESS_STOPPED,
                    timeout=120)
        crashed = time.monotonic()
        cluster.kill_client(mount_c)
    finally:
        scavenger.kill()            # a crashed node's processes die with it
        scavenger.wait()
    host = socket.gethostname()
    files["a.zip/after"] = "written after the crash"
    _write_and_exit(base_b, {"a.zip/after": files["a.zip/after"]})
    monkeypatch.setattr(rear, "_ARCHIVE_LOCK_WAIT", 5.0)      # instead of 600 s
    stats = rear.scavenge(base_b, flush=True)
    assert any("pid %d on host %s" % (scavenger.pid, host) in reason
               and "--dead-host %s" % host in reason for _path, reason in stats.errors), stats
    started = time.monotonic()
    result = run_cli("scavenge", "--flush", "--dead-host", host, base_b, timeout=600)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "1 archive lock taken over" in result.stdout, result.stdout
    assert not inbox_temp_zips(base_b)
    time.sleep(CACHE_SETTLE[target])
    expected = {key.split("/", 1)[1]: text.encode() for key, text in files.items()}
    assert archives_of(base_a) == {"a.zip": expected}        # unzip -t and zipfile
    tally.measured[target]["archive lock taken over (--dead-host) at %s" % step] = (
        "%.0f s after the crash, %.0f s for the scavenge" % (time.monotonic() - crashed, took))
    tally.netfs[target]["client crashes"] += 1
    tally.netfs[target]["files"] += len(files)


def _salvage_everything(base, dead_hosts, since, timeout=300):
    """Flush ``base`` until its inbox is empty; returns how many temp zips
    had to be taken over.  A takeover is refused (an error naming the wait)
    while a temp zip changed within the last 10 s."""
    deadline = since + timeout
    taken_over = 0
    while True:
        stats = rear.scavenge(base, flush=True, rotation_span=3600, dead_hosts=dead_hosts)
        taken_over += stats.taken_over
        refused = [reason for _path, reason in stats.errors if "may be alive" in reason]
        assert len(refused) == len(stats.errors), stats.errors
        if not inbox_temp_zips(base):
            return taken_over
        assert time.monotonic() < deadline, "the crashed client's temp zips are still locked"
        time.sleep(1.0)


# ---------------------------------------------------------------- what differs between filesystems


def _seconds_until(condition, timeout=60.0):
    """How long until ``condition()`` holds (errors count as not yet)."""
    started = time.monotonic()
    while True:
        try:
            if condition():
                return time.monotonic() - started
        except (OSError, rear.RearError, zipfile.BadZipFile, KeyError):
            pass
        assert time.monotonic() - started < timeout, "not seen after %.0f s" % timeout
        time.sleep(0.01)


def test_a_commit_on_one_client_is_seen_on_the_other(tally, clients):
    """Measured: how long after a commit on A a reader on B sees it, with
    rear's reader and with zipfile (a reader that is not rear)."""
    target, base_a, base_b = clients
    fill(base_a, {"a.zip/first": b"1"})
    rear.scavenge(base_a)
    archive_b = os.path.join(base_b, "a.zip")
    _seconds_until(lambda: rear.read_bytes(base_b, "a.zip/first") == b"1")
    with zipfile.ZipFile(archive_b) as handle:    # B's caches now hold the archive
        assert handle.read("first") == b"1"
    # Each reader after a commit of its own: rear's view refresh would
    # also refresh the view of a reader in the same client.
    fill(base_a, {"a.zip/second": b"2"})
    assert rear.scavenge(base_a).files_moved == 1

    def seen_by_zipfile():
        with zipfile.ZipFile(archive_b) as handle:
            return handle.read("second") == b"2"

    seen_by_zipfile = _seconds_until(seen_by_zipfile)
    fill(base_a, {"a.zip/third": b"3"})
    assert rear.scavenge(base_a).files_moved == 1
    seen_by_rear = _seconds_until(lambda: rear.read_bytes(base_b, "a.zip/third") == b"3")
    tally.measured[target]["commit seen on the other client by rear"] = "%.2f s" % seen_by_rear
    tally.measured[target]["by zipfile"] = "%.2f s" % seen_by_zipfile


def test_whether_the_view_refresh_is_needed(tally, clients):
    """Measured: after A appends to a file B has read, does a fresh open on
    B see the new size without rear's view refresh (chmod to its own mode,
    drop cached pages)?  And rear's read with it must, every time."""
    target, base_a, base_b = clients
    path_a, path_b = os.path.join(base_a, "f"), os.path.join(base_b, "f")
    # rear keeps cached pages only on filesystems whose page cache is the
    # file; a client of this one must have its pages dropped.
    kind = rear._filesystem_type(os.stat(base_b).st_dev)
    assert kind is not None and kind not in rear._COHERENT_FILESYSTEMS
    tally.measured[target]["filesystem type (mountinfo)"] = kind
    with open(path_a, "wb") as handle:
        handle.write(b"0" * 1000)
    _seconds_until(lambda: os.path.getsize(path_b) == 1000)
    stale = 0
    trials = 10
    for trial in range(1, trials + 1):
        with open(path_b, "rb") as handle:      # B caches size and pages
            handle.read()
        with open(path_a, "ab") as handle:
            handle.write(b"%d" % (trial % 10) * 1000)
            handle.flush()
            os.fsync(handle.fileno())
        size = 1000 * (trial + 1)
        fd = os.open(path_b, os.O_RDONLY)
        try:
            stale += os.fstat(fd).st_size != size
            st, _changed = rear._refresh_view(fd)
            assert st.st_size == size     # rear's view: the server's, at once
        finally:
            os.close(fd)
    tally.measured[target]["stale sizes without the view refresh"] = "%d of %d" % (stale, trials)


# ---------------------------------------------------------------- one test per fix


def test_a_file_another_client_appended_to_is_seen_as_the_server_has_it(tally, clients):
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
        # as rear's parsers do: bytes short of the size are an error, and so
        # is a tail that is not what ends the file (an archive's end records;
        # here the last write): under load, Gluster's client has served the
        # new size with zeros for the new bytes.
        data = os.pread(fd, st.st_size, 0)
        if len(data) != st.st_size or not data.endswith(b"new" if st.st_size > 300 else b"old"):
            raise rear.ArchiveError("short read, or not the end of the file")
        return data

    fd = os.open(path_b, os.O_RDONLY)
    try:
        assert rear._await_current_view(fd, path_b, read) == b"old" * 100 + b"new" * 100
    finally:
        os.close(fd)
    tally.netfs[target]["fix checks"] += 1


def test_a_sidecar_another_client_keeps_replacing_is_read_not_reported_stale(tally, clients):
    target, base_a, base_b = clients
    os.makedirs(os.path.join(base_a, "inbox"))
    path_a = os.path.join(base_a, "inbox", "w.json")
    path_b = os.path.join(base_b, "inbox", "w.json")
    manifest = rear._Sidecar(time.time())
    rear._write_sidecar(path_a, manifest)
    _wait_until(lambda: os.path.exists(path_b))
    for number in range(60):
        manifest.entries = number
        rear._write_sidecar(path_a, manifest)       # os.replace: a new inode each time
        read = rear._read_sidecar(path_b)           # must not raise ESTALE
        assert read.format == "rear-manifest"
    tally.netfs[target]["fix checks"] += 1


def test_a_temp_zip_another_client_just_ingested_is_skipped_without_an_error(tally, clients):
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
    tally.netfs[target]["fix checks"] += 1


def test_a_commit_journal_another_client_finished_is_not_read(tally, clients):
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
    tally.netfs[target]["fix checks"] += 1


# ---------------------------------------------------------------- the summary


def test_a_filesystem_that_cannot_come_up_fails_each_dependent_test_with_its_reason(
        monkeypatch, tmp_path):
    downs = []

    class PortTaken:
        def __init__(self, workdir):
            self.workdir = workdir

        def up(self):
            raise RuntimeError("port 6789 is taken")

        def down(self):
            downs.append(self.workdir)

    monkeypatch.setattr(netfs_harness, "FILESYSTEMS", {"cephfs": PortTaken})
    monkeypatch.setattr(netfs_harness, "unavailable_reason", lambda filesystem: None)
    monkeypatch.setattr(tempfile, "mkdtemp", lambda prefix: str(tmp_path))
    clusters = _Clusters()
    with pytest.raises(RuntimeError, match="port 6789 is taken"):
        clusters.get("cephfs")
    for _test in range(2):
        with pytest.raises(pytest.fail.Exception,
                           match="cephfs could not be brought up: RuntimeError: port 6789 "
                           "is taken"):
            clusters.get("cephfs")
    assert downs == [str(tmp_path)] and clusters.up == {}
