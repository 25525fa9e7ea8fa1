"""What the test suites share: independent readers of archives, the
invariant every suite checks (check_archives), child processes that write
through rear, and hand-made temp zips.  No test module imports another;
they all import this."""

import collections
import contextlib
import glob
import inspect
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zipfile

import pytest

import rear
from bench.bench import write_stored_archive


#: The repository's top directory, where rear.py is.
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNZIP_UNSUPPORTED_METHOD = 81
NOT_IN_INFO_ZIP = {zipfile.ZIP_LZMA, getattr(zipfile, "ZIP_ZSTANDARD", -1)}
#: Child processes import the rear.py under test.
CHILD_ENV = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))


@contextlib.contextmanager
def mounted(mount_command, mount_point, unmount_command, what):
    """Run ``mount_command`` onto a new directory ``mount_point``, yield it,
    and run ``unmount_command`` after; skip the test, saying why, where
    ``what`` cannot be mounted."""
    os.makedirs(mount_point)
    result = subprocess.run(mount_command, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip("cannot mount %s here: %s" % (what, result.stderr.strip()))
    try:
        yield mount_point
    finally:
        subprocess.run(unmount_command, capture_output=True)


def fill(base, files, **fs_options):
    """Write ``files`` ({archive path: bytes}) through one rear_fs on ``base``."""
    with rear.rear_fs(base, **fs_options) as fs:
        for name, data in files.items():
            fs.write_bytes(name, data)


def fill_temp_zips(base, count, per_zip, name="a.zip/%d/%d", **fs_options):
    """``count`` temp zips (fill) of ``per_zip`` small files each, named
    ``name % (zip number, file number)``; returns every file written."""
    files = {}
    for number in range(count):
        batch = {name % (number, n): b"%d" % n for n in range(per_zip)}
        fill(base, batch, **fs_options)
        files.update(batch)
    return files


def unzip_test(path):
    """Info-ZIP's verdict on an archive: an independent reader."""
    if shutil.which("unzip") is None:
        pytest.skip("Info-ZIP unzip is not installed (apt-get install unzip)")
    result = subprocess.run(["unzip", "-tqq", path], capture_output=True, text=True)
    if result.returncode == UNZIP_UNSUPPORTED_METHOD:
        # Info-ZIP 6.0 as Debian builds it has no LZMA (or zstd): that is the
        # only refusal accepted, and only for archives holding such entries.
        with zipfile.ZipFile(path) as handle:
            methods = {info.compress_type for info in handle.infolist()}
        assert methods & NOT_IN_INFO_ZIP, "unzip -t %s: unsupported method" % path
        return
    assert result.returncode == 0, "unzip -t %s: %s%s" % (path, result.stdout, result.stderr)


def read_archive(path):
    """{name: bytes} of an archive, after unzip -t and zipfile's CRC check."""
    unzip_test(path)
    with zipfile.ZipFile(path) as handle:
        assert handle.testzip() is None
        names = handle.namelist()
        assert len(names) == len(set(names)), "duplicate names in %s" % path
        return {name: handle.read(name) for name in names}


def archives_of(base):
    """{relative archive path: {name: bytes}} for every final archive under base."""
    found = {}
    for directory, subdirs, files in os.walk(base):
        if os.path.abspath(directory) == os.path.abspath(base) and "inbox" in subdirs:
            subdirs.remove("inbox")
        for name in files:
            if name.endswith(".zip"):
                path = os.path.join(directory, name)
                found[os.path.relpath(path, base)] = read_archive(path)
    return found


def inbox_temp_zips(base):
    """The temp zips in inbox/ and in its hosts' directories (a sharded
    inbox), by their paths in inbox/."""
    inbox = os.path.join(base, "inbox")
    found = []
    for directory in [inbox] + sorted(glob.glob(os.path.join(inbox, "hosts", "*"))):
        if os.path.isdir(directory):
            found += [os.path.relpath(os.path.join(directory, name), inbox)
                      for name in os.listdir(directory)
                      if name.endswith(".zip") and not name.startswith(".")]
    return sorted(found)


def logical_key(archive, member, conflicts):
    """Rolled-over name.~N~.zip counts as name.zip; with ``conflicts``, a
    conflict name.~N~ counts as name."""
    archive = re.sub(r"\.~\d+~\.zip$", ".zip", archive)
    if conflicts:
        member = re.sub(r"\.~\d+~$", "", member)
    return archive + "/" + member


def check_archives(base, must_have, allowed, conflicts=False, tally=None):
    """The invariant, over every final archive under ``base``.

    ``must_have`` and ``allowed`` map "dest/member" to sets of contents: each
    content in must_have is archived exactly once; every archived entry has a
    content from allowed (nothing torn, nothing invented).  Every archive is
    read by Info-ZIP unzip -t and by zipfile with CRC checks.  A breach is
    counted as "lost" or "corrupt" in ``tally`` (a Counter) when given.
    """
    tally = collections.Counter() if tally is None else tally
    found = collections.defaultdict(list)
    for archive, members in archives_of(base).items():
        for member, data in members.items():
            found[logical_key(archive, member, conflicts)].append(data)
    for key, contents in found.items():
        if len(contents) != len(set(contents)):
            tally["corrupt"] += 1
            pytest.fail("%s is archived twice with the same content" % key)
        for data in contents:
            if data not in allowed.get(key, ()):
                tally["corrupt"] += 1
                pytest.fail("%s holds content nobody wrote (%d bytes)" % (key, len(data)))
    for key, contents in must_have.items():
        for data in contents:
            if data not in found.get(key, ()):
                tally["lost"] += 1
                pytest.fail("acknowledged %s was lost" % key)


def as_sets(files):
    sets = collections.defaultdict(set)
    for key, data in files.items():
        sets[key].add(data)
    return sets


def run_in_threads(count, target, *args):
    """Run target(*args, n) in count threads at once and wait for them all."""
    threads = [threading.Thread(target=target, args=args + (n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def ctrl_c_as_at_a_terminal():
    """preexec_fn of a child a test sends SIGINT: a suite run in the
    background (``pytest &`` without job control, nohup) ignores SIGINT,
    and a child inheriting that never sees the Ctrl-C the test is about."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_child(script, *args, **kwargs):
    kwargs.setdefault("env", CHILD_ENV)
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)] + list(args),
                            **kwargs)


def run_cli(*args, **kwargs):
    kwargs.setdefault("env", CHILD_ENV)
    return subprocess.run([sys.executable, "-m", "rear"] + list(args),
                          capture_output=True, text=True, **kwargs)


BAD_PATHS = [
    ("/abs/ar.zip/x", "absolute"),
    ("ar.zip/../x", "'..'"),
    ("../ar.zip/x", "'..'"),
    ("sub/../ar.zip/x", "'..'"),
    ("ar.zip/x/..", "'..'"),
    ("ar.zip//x", "''"),
    ("ar.zip/x/", "''"),
    ("ar.zip/./x", "'.'"),
    ("ar.zip\\x", "backslash"),
    ("ar.zip/x\x00y", "NUL"),
    ("nozip/x", "no component ending in '.zip'"),
    ("ar.zip", "no member"),
    ("ar.zip/", "''"),
    ("inbox/ar.zip/x", "reserves"),
    ("ar.zip/" + "x" * 65536, "65535"),
    ("ar.zip/\udcff", "component '\\udcff' is not valid UTF-8 (a file name in another "
     "encoding?); rename it"),
    ("ar.zip/d/\udcffname", "component '\\udcffname' is not valid UTF-8"),
    ("ar.zip/" + "n" * 256, "is 256 UTF-8 bytes; unzip and most filesystems cannot extract "
     "a name longer than 255"),
    (b"ar.zip/\xff", "UTF-8"),
    (42, "must be a str"),
    ("", "''"),
    (".zip/x", "no component ending in '.zip'"),
]


# Times chosen to catch each way a zip's time goes wrong: an odd second (DOS
# fields round to 2 s), 1970 (before the DOS epoch), 2050 (past 2^31, where
# a signed reading of the UT field breaks) and 2200 (past what UT holds).
MTIME_ODD = 1700000001           # 2023-11-14 22:13:21 UTC


MTIME_1970 = 86403               # 1970-01-02 00:00:03 UTC


MTIME_2050 = 2537697601          # 2050-06-01 12:00:01 UTC


MTIME_2200 = 7258118401          # 2200-01-01 00:00:01 UTC


def make_faithful_tree(root):
    """A tree with every kind of thing a pickup must keep; returns what each
    relative path must come back as: ("dir",), ("link", target) or
    ("file", bytes, permission bits, mtime)."""
    os.makedirs(os.path.join(root, "empty"))
    os.makedirs(os.path.join(root, "sub"))
    files = {"sub/odd.txt": (b"odd second\n", 0o644, MTIME_ODD),
             "old.txt": (b"from 1970\n", 0o640, MTIME_1970),
             "run.sh": (b"#!/bin/sh\necho 2050\n", 0o755, MTIME_2050)}
    for relative, (data, mode, mtime) in files.items():
        path = os.path.join(root, relative)
        with open(path, "wb") as handle:
            handle.write(data)
        os.chmod(path, mode)
        os.utime(path, (mtime, mtime))
    links = {"to-file": "sub/odd.txt", "to-dir": "sub", "dangling": "no/such/file",
             "out-of-tree": "../../../etc/hostname", "absolute": "/etc/hostname"}
    for relative, target in links.items():
        os.symlink(target, os.path.join(root, relative))
    expected = {"empty": ("dir",), "sub": ("dir",)}
    expected.update((relative, ("link", target)) for relative, target in links.items())
    expected.update((relative, ("file",) + spec) for relative, spec in files.items())
    return expected


SALVAGED_PICKUP = """
    import os, sys, rear
    base, source = sys.argv[1:3]
    fs = rear.rear_fs(base)
    with fs.pickup(source, "t.zip/tree"):
        pass
    os._exit(0)          # never sealed: the temp zip is a dead writer's
"""


class Acknowledged:
    """Collects the files a writer process acknowledged on its stdout."""

    def __init__(self, process):
        self.files = {}
        self.process = process
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.process.stdout:
            if line.endswith("\n"):
                name, hexdata = line.split()
                self.files[name] = bytes.fromhex(hexdata)

    def wait_for_first(self, timeout=60):
        """Wait until the writer acknowledged a file: a loaded machine may
        take a while to start it, and a kill before that proves nothing."""
        deadline = time.monotonic() + timeout
        while not self.files and self.process.poll() is None:
            assert time.monotonic() < deadline, "the writer acknowledged nothing"
            time.sleep(0.01)

    def kill(self):
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(60)
        self.thread.join(60)
        return self.files


def write_raw_temp_zip(base, entries, sealed=False, cut=0, sidecar=True):
    """A temp zip built by zipfile (an independent writer), optionally torn."""
    inbox = os.path.join(base, "inbox")
    os.makedirs(inbox, exist_ok=True)
    path = os.path.join(inbox, "handmade-%d.zip" % random.getrandbits(32))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as handle:
        for name, data in entries:
            handle.writestr(name, data)
    if not sealed:
        size = zipfile.ZipFile(path).start_dir
        with open(path, "r+b") as handle:
            handle.truncate(size - cut)
    an_hour_ago = time.time() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))    # its writer died long ago
    if sidecar:
        manifest = rear._Sidecar(an_hour_ago).to_json()
        manifest["state"] = "sealed" if sealed else "open"
        with open(path[:-4] + ".json", "w") as handle:
            json.dump(manifest, handle)
    return path


SCAVENGER_LOOP_SCRIPT = """
    import sys, time, rear
    base, until, rotation = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    while time.time() < until:
        stats = rear.scavenge(base, rotation_span=rotation)
        if stats.errors:
            print(stats.errors, file=sys.stderr)
            sys.exit(1)
        time.sleep(0.05)
"""


STUCK_SCAVENGER_SCRIPT = """
    import os, signal, socket, sys, rear
    base, host = sys.argv[1], sys.argv[2]
    step = sys.argv[3] if len(sys.argv) > 3 else "entries-written"
    if host:
        socket.gethostname = lambda: host      # a scavenger on another node

    def checkpoint(name):
        # Frozen mid-commit with the archive lock held: what other clients see
        # of a node that died there while the filesystem keeps its locks.
        if name == step:
            os.kill(os.getpid(), signal.SIGSTOP)

    rear._crash_test_point = checkpoint
    rear.scavenge(base, flush=True)
"""

# ---------------------------------------------------------------- big archives


def series_member(number):
    """The name and bytes of member ``number`` of write_series's archives."""
    name = "part-%03d/item-%07d.txt" % (number // 10000, number)
    return name, ("%s\n" % name).encode()


def write_series(base, dest, count, per_archive):
    """A series of ``count`` small stored members (series_member) under
    ``base``: ``dest`` and its rolled-over ``name.~N~.zip``, each of
    ``per_archive`` members, written directly with rear's header functions
    (zipfile needs minutes for a million entries), then indexed by one rear
    commit (member "indexed")."""
    stem = dest[:-len(".zip")]
    archives = (count + per_archive - 1) // per_archive
    for archive in range(archives):
        path = os.path.join(base, (stem + ".~%d~.zip" % (archive + 1)) if archive < archives - 1
                            else dest)
        first = archive * per_archive
        write_stored_archive(path, (series_member(number) for number in
                                     range(first, min(count, first + per_archive))))
    fill(base, {dest + "/indexed": b"i"})
    stats = rear.scavenge(base, max_entries=per_archive + 1)
    assert stats.errors == [] and stats.files_moved == 1


# ---------------------------------------------------------------- torture writers

# The content of any file a torture writer may write follows from its name
# (the writer processes run this function's source), so a file whose with
# block exited just before the kill, not yet reported, is still known.
def torture_content(name):
    """The content a torture writer writes as ``name``: a directory entry
    (a name ending in "/") is empty, a symlink's (".lnk") is its target."""
    rng = random.Random(name)
    if name.endswith("/"):
        return b""
    if name.endswith(".lnk"):
        return ("../target-%08x" % rng.getrandbits(32)).encode()
    return rng.randbytes(rng.randint(0, 1500)) + b"y" * rng.randint(0, 5000)


class WriterContents:
    """``allowed`` for check_archives: any name's content follows from it."""

    def get(self, key, default=()):
        return {torture_content(key)}


TORTURE_WRITER = "import random\n" + inspect.getsource(torture_content) + '''
import os, sys, threading, rear
base, seed, threads, rotation = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rng = random.Random(seed)
compression = rng.choice(["stored", "deflated", "bzip2", "lzma"])
sync = rng.choice(["rotation", "file"])
report = threading.Lock()
# Picked-up symlinks and empty directories come from here (never followed,
# removed once archived).
scratch = os.path.join(base, "pickup-scratch-%d" % seed)
os.makedirs(scratch, exist_ok=True)
def work(fs, thread):
    local = random.Random(seed * 1000 + thread)
    n = 0
    while True:
        name = "%s/s%d/t%d/%06d" % (local.choice(["a.zip", "b.zip", "sub/c.zip"]), seed, thread, n)
        data = torture_content(name)
        kind = local.random()
        if kind < 0.03:       # a symlink, stored as a link (Info-ZIP convention)
            source = os.path.join(scratch, "%d-%d" % (thread, n))
            os.symlink(torture_content(name + ".lnk").decode(), source)
            with fs.pickup(source, name + ".lnk"):
                pass
            name += ".lnk"
        elif kind < 0.06:     # an empty directory, stored as "name/"
            source = os.path.join(scratch, "%d-%d" % (thread, n))
            os.mkdir(source)
            with fs.pickup(source, name):
                pass
            name += "/"
        elif kind < 0.5:
            with rear.rear_open(name, "wb") as handle:
                handle.write(data[:100])
                handle.write(data[100:])
        else:
            fs.write_bytes(name, data)
        with report:   # acknowledged: the with block exited
            sys.stdout.write(name + "\\n")
            sys.stdout.flush()
        n += 1
with rear.rear_fs(base, rotation_span=rotation, compression=compression, sync=sync) as fs:
    for thread in range(1, threads):
        threading.Thread(target=work, args=(fs, thread), daemon=True).start()
    work(fs, 0)
'''


class Reported(Acknowledged):
    """The names a torture writer reported as acknowledged."""

    def _read(self):
        for line in self.process.stdout:
            if line.endswith("\n"):
                self.files[line.strip()] = torture_content(line.strip())


def start_torture_writer(base, seed, threads, rotation):
    return Reported(run_child(TORTURE_WRITER, base, str(seed), str(threads), str(rotation),
                              stdout=subprocess.PIPE, text=True))


# ---------------------------------------------------------------- summary lines


#: The network filesystems' names as the summary lines spell them.
NETFS_LABELS = {"glusterfs": "GlusterFS", "cephfs": "CephFS", "moosefs": "MooseFS"}
TORTURE_COUNTS = ("writer kills", "scavenger kills", "crash states", "injected errors",
                  "hostile inputs", "fuzzed zips", "lost", "corrupt")


class Tally:
    """What the torture and network-filesystem suites counted and measured,
    for their summary lines.  conftest.py keeps one per run and hands it to
    tests as the ``tally`` fixture."""

    def __init__(self):
        self.torture = collections.Counter()
        #: (filesystem, mode) -> counts, and -> {what: measured value}
        self.netfs = collections.defaultdict(collections.Counter)
        self.measured = collections.defaultdict(dict)

    def summary_lines(self):
        lines = []
        if any(self.torture[key] for key in TORTURE_COUNTS[:-2]):
            lines.append("torture: " + ", ".join(
                "%d %s" % (self.torture[key], key) for key in TORTURE_COUNTS))
        for filesystem, label in NETFS_LABELS.items():
            counts = collections.Counter()
            for (name, _mode), counter in self.netfs.items():
                if name == filesystem:
                    counts.update(counter)
            if any(counts.values()):
                lines.append(self._netfs_line(filesystem, label, counts))
        return lines

    def _netfs_line(self, filesystem, label, counts):
        """``netfs: CephFS, 2 clients; ...`` from the counts of its tests."""
        parts = ["%d writer kills" % counts["writer kills"],
                 "%d scavenger kills" % counts["scavenger kills"],
                 "%d client crash%s" % (counts["client crashes"],
                                        "" if counts["client crashes"] == 1 else "es"),
                 "%d files acknowledged" % counts["files"],
                 "%d exact reads during the chaos" % counts["reads"],
                 "%d fix checks" % counts["fix checks"]]
        for (name, mode), measured in sorted(self.measured.items()):
            if name == filesystem:
                suffix = "" if mode == "default" else " (%s)" % mode
                parts += ["%s%s: %s" % (key, suffix, value) for key, value in measured.items()]
        parts += ["%d lost" % counts["lost"], "%d corrupt" % counts["corrupt"]]
        return "netfs: %s, 2 clients; %s" % (label, ", ".join(parts))
