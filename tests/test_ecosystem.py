"""rear in its ecosystem: every reader accepts every archive, zip64, reading
archives like folders, Python 3.8, vendoring, async callers, schedulers, and
the CLI people use.

Readers that are not installed are skipped with the reason; .ci/run installs
Info-ZIP unzip, 7-Zip, bsdtar (libarchive) and fuse-zip.
"""

import asyncio
import contextlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
import zipfile

import pytest

import rear
from tests.support import (CHILD_ENV, HERE, MTIME_ODD, NOT_IN_INFO_ZIP, SALVAGED_PICKUP,
                           UNZIP_UNSUPPORTED_METHOD, make_faithful_tree, mounted,
                           write_raw_temp_zip)

EXAMPLES = os.path.join(HERE, "examples")

# name, command (archive appended), exit codes meaning "method not supported"
READERS = [
    ("unzip", ["unzip", "-tqq"], {UNZIP_UNSUPPORTED_METHOD}),
    ("7z", ["7z", "t", "-bso0", "-bsp0"], set()),
    ("bsdtar", ["bsdtar", "-xOf"], set()),
]


def methods_of(path):
    with zipfile.ZipFile(path) as handle:
        return {info.compress_type for info in handle.infolist()}


def reader_accepts(reader, path):
    name, command, unsupported = next(r for r in READERS if r[0] == reader)
    if shutil.which(command[0]) is None:
        pytest.skip("%s is not installed" % name)
    result = subprocess.run(command + [path], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    if result.returncode in unsupported:
        assert methods_of(path) & NOT_IN_INFO_ZIP, "%s refused %s" % (name, path)
        return
    assert result.returncode == 0, "%s rejects %s: %s" % (name, path, result.stderr[-500:])


# ---------------------------------------------------------------- 1. every reader, every archive


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Archives of every kind rear makes: {kind: path}."""
    base = str(tmp_path_factory.mktemp("zoo"))
    kinds = {}
    for compression in sorted(rear._COMPRESSION):
        with rear.rear_fs(base, compression=compression) as fs:
            fs.write_bytes("%s.zip/log.txt" % compression, b"a log line\n" * 2000)
            fs.write_bytes("%s.zip/noise.bin" % compression, os.urandom(5000))
            fs.write_bytes("%s.zip/empty" % compression, b"")
            (temp,) = [name for name in os.listdir(os.path.join(base, "inbox"))
                       if name.endswith(".zip")]
        sealed = os.path.join(base, "sealed-%s.zip" % compression)   # as the writer left it
        shutil.copy(os.path.join(base, "inbox", temp), sealed)
        kinds["sealed temp zip, %s" % compression] = sealed
        rear.scavenge(base)
        kinds["archive, %s" % compression] = os.path.join(base, "%s.zip" % compression)
    write_raw_temp_zip(base, [("salvaged.zip/%d" % n, b"s" * n) for n in range(5)], cut=10)
    for content in (b"one", b"two", b"three"):
        with rear.rear_fs(base) as fs:
            fs.write_bytes("conflict.zip/same-name.txt", content)
        rear.scavenge(base, flush=True)
    for batch in range(3):
        with rear.rear_fs(base, compression="stored") as fs:
            for n in range(10):
                fs.write_bytes("rolled.zip/%d/%d" % (batch, n), os.urandom(1000))
        rear.scavenge(base, max_size=15000)
    with rear.rear_fs(base) as fs:
        fs.write_bytes("unicode.zip/é/ü ñ 東京.txt", "non-ASCII names\n".encode())
    # Links, directories, modes and exact times: sealed, appended, salvaged.
    tree = os.path.join(str(tmp_path_factory.mktemp("tree")), "tree")
    make_faithful_tree(tree)
    shutil.copytree(tree, tree + "-again", symlinks=True)
    before = set(os.listdir(os.path.join(base, "inbox")))
    with rear.rear_fs(base) as fs:
        with fs.pickup(tree, "tree.zip/tree"):
            pass
    (temp,) = [name for name in set(os.listdir(os.path.join(base, "inbox"))) - before
               if name.endswith(".zip")]
    kinds["sealed temp zip, tree"] = os.path.join(base, "sealed-tree.zip")
    shutil.copy(os.path.join(base, "inbox", temp), kinds["sealed temp zip, tree"])
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(SALVAGED_PICKUP).replace(
        '"t.zip/tree"', '"tree-salvaged.zip/tree"'), base, tree + "-again"], env=CHILD_ENV)
    assert child.returncode == 0
    with rear.rear_fs(base, compression="stored") as fs:
        for n in range(70000):
            fs.write_bytes("many.zip/%05x" % n, b"")
    assert rear.scavenge(base, flush=True).salvaged == 1     # the tree's dead writer
    kinds.update({
        "salvaged": os.path.join(base, "salvaged.zip"),
        "renamed conflicts": os.path.join(base, "conflict.zip"),
        "rolled over (newest)": os.path.join(base, "rolled.zip"),
        "rolled over (first)": os.path.join(base, "rolled.~1~.zip"),
        "non-ASCII names": os.path.join(base, "unicode.zip"),
        "tree: links, directories, times": os.path.join(base, "tree.zip"),
        "tree, salvaged": os.path.join(base, "tree-salvaged.zip"),
        "zip64: 70,000 entries": os.path.join(base, "many.zip"),
    })
    with zipfile.ZipFile(kinds["renamed conflicts"]) as handle:
        assert sorted(handle.namelist()) == ["same-name.txt", "same-name.txt.~1~",
                                             "same-name.txt.~2~"]
    return kinds


ZOO_KINDS = (["sealed temp zip, %s" % c for c in sorted(rear._COMPRESSION)]
             + ["archive, %s" % c for c in sorted(rear._COMPRESSION)]
             + ["salvaged", "renamed conflicts", "rolled over (newest)", "rolled over (first)",
                "non-ASCII names", "zip64: 70,000 entries", "sealed temp zip, tree",
                "tree: links, directories, times", "tree, salvaged"])


@pytest.mark.parametrize("reader", [reader[0] for reader in READERS] + ["zipfile"])
@pytest.mark.parametrize("kind", ZOO_KINDS)
def test_every_reader_accepts_every_kind_of_archive(zoo, kind, reader):
    path = zoo[kind]
    if reader == "zipfile":
        with zipfile.ZipFile(path) as handle:
            assert handle.testzip() is None
    else:
        reader_accepts(reader, path)



# Archives other tools make, as a user may already have them where rear's
# archive goes: (tool, command run in the source directory, archive last).
OTHER_TOOLS = [
    ("Info-ZIP zip", ["zip", "-qr"], "."),
    ("Info-ZIP zip, zip64", ["zip", "-qr", "-fz"], "."),
    ("Info-ZIP zip from a pipe", ["sh", "-c", 'cat a.txt | zip -q "$0" -'], None),
    ("7-Zip", ["7z", "a", "-tzip", "-bso0", "-bsp0"], "."),
    ("bsdtar", ["bsdtar", "-a", "-cf"], "."),
    ("jar", ["jar", "cf"], "."),
]


@pytest.mark.parametrize("tool, command, what", OTHER_TOOLS,
                         ids=[tool[0] for tool in OTHER_TOOLS])
def test_an_archive_another_tool_made_is_appended_to_and_every_reader_agrees(
        tmp_path, tool, command, what):
    if shutil.which(command[0] if command[0] != "sh" else "zip") is None:
        pytest.skip("%s is not installed" % tool)
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    (source / "a.txt").write_bytes(b"a line\n" * 100)
    (source / "b.bin").write_bytes(os.urandom(70000))
    (source / "sub" / "c").write_bytes(b"c")
    base = tmp_path / "base"
    base.mkdir()
    archive = str(base / "d.zip")
    subprocess.run(command + [archive] + ([what] if what else []), cwd=str(source),
                   check=True)
    with zipfile.ZipFile(archive) as handle:
        before = {name: handle.read(name) for name in handle.namelist()}
    with rear.rear_fs(str(base)) as fs:
        for number in range(3):
            fs.write_bytes("d.zip/new/%d" % number, b"%d" % number)
    stats = rear.scavenge(str(base), flush=True)
    assert stats.errors == [] and stats.files_moved == 3
    for reader in READERS:
        reader_accepts(reader[0], archive)
    with zipfile.ZipFile(archive) as handle:
        assert handle.testzip() is None
        assert {name: handle.read(name) for name in handle.namelist()} == dict(
            before, **{"new/%d" % number: b"%d" % number for number in range(3)})
    assert rear.verify(archive) == []


JAVA_READER = """
import java.io.FileInputStream;
import java.util.zip.ZipEntry;
import java.util.zip.ZipFile;
import java.util.zip.ZipInputStream;

// Java's two zip readers: ZipFile (the central directory) and
// ZipInputStream (local headers, in order, extra fields included).
public class ReadZips {
    public static void main(String[] paths) throws Exception {
        for (String path : paths) {
            int streamed = 0;
            try (ZipInputStream in = new ZipInputStream(new FileInputStream(path))) {
                while (in.getNextEntry() != null) {
                    in.readAllBytes();      // checks the CRC at the end of each entry
                    streamed++;
                }
            }
            try (ZipFile zip = new ZipFile(path)) {
                if (zip.size() != streamed) {
                    throw new Exception(path + ": " + zip.size() + " entries, " + streamed
                                        + " streamed");
                }
                for (ZipEntry entry : java.util.Collections.list(zip.entries())) {
                    zip.getInputStream(entry).readAllBytes();
                }
            }
        }
    }
}
"""


def test_java_reads_every_kind_of_archive(zoo, tmp_path):
    if shutil.which("java") is None or shutil.which("javac") is None:
        pytest.skip("no Java (apt-get install default-jdk-headless)")
    source = tmp_path / "ReadZips.java"
    source.write_text(JAVA_READER)
    paths = [zoo[kind] for kind in ZOO_KINDS
             if not methods_of(zoo[kind]) & {zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}]
    result = subprocess.run(["java", str(source)] + paths, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]

def test_zipfile_path_reads_an_archive_like_a_folder(zoo):
    root = zipfile.Path(zoo["non-ASCII names"])
    (directory,) = list(root.iterdir())
    assert directory.name == "é" and directory.is_dir()
    (member,) = list(directory.iterdir())
    assert member.read_text(encoding="utf-8") == "non-ASCII names\n"


@contextlib.contextmanager
def fuse_zip_mount(archive, tmp_path):
    """``archive`` mounted read-only with fuse-zip; skips where that cannot be."""
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip("mounting with FUSE needs root and /dev/fuse")
    if shutil.which("fuse-zip") is None or shutil.which("fusermount") is None:
        pytest.skip("fuse-zip is not installed (apt-get install fuse-zip)")
    mount_point = str(tmp_path / "mnt")
    with mounted(["fuse-zip", "-r", archive, mount_point], mount_point,
                 ["fusermount", "-u", mount_point], "fuse-zip") as mount_point:
        yield mount_point


def test_an_archive_mounted_read_only_with_fuse_zip_reads_back(zoo, tmp_path):
    with fuse_zip_mount(zoo["archive, deflated"], tmp_path) as mount_point:
        with open(os.path.join(mount_point, "log.txt"), "rb") as handle:
            assert handle.read() == b"a log line\n" * 2000
        assert sorted(os.listdir(mount_point)) == ["empty", "log.txt", "noise.bin"]


def test_fuse_zip_shows_links_as_links_and_empty_directories(zoo, tmp_path):
    with fuse_zip_mount(zoo["tree: links, directories, times"], tmp_path) as mount_point:
        tree = os.path.join(mount_point, "tree")
        assert os.readlink(os.path.join(tree, "to-dir")) == "sub"
        assert os.readlink(os.path.join(tree, "dangling")) == "no/such/file"
        assert os.path.isdir(os.path.join(tree, "empty"))
        assert os.listdir(os.path.join(tree, "empty")) == []
        assert stat.S_IMODE(os.stat(os.path.join(tree, "run.sh")).st_mode) == 0o755
        # (fuse-zip reads the UT field as signed: run.sh's 2050 shows as 1914,
        # where Info-ZIP unzip and bsdtar read it right; see the README)
        assert int(os.stat(os.path.join(tree, "sub", "odd.txt")).st_mtime) == MTIME_ODD


# ---------------------------------------------------------------- 2. zip64 beyond 4 GiB (long mode)


def _sparse(path, size):
    with open(path, "wb") as handle:
        handle.truncate(size)


@pytest.mark.parametrize("compression", ["deflated", "stored"])
def test_an_entry_and_an_archive_larger_than_4_gib(tmp_path, long_mode, compression):
    """Deflated: a 4.5 GiB entry (zip64 sizes).  Stored: also a 4.5 GiB
    archive, with an entry after the big one (zip64 offsets)."""
    if not long_mode:
        pytest.skip("writes 4.5 GiB; run with --long or REAR_TORTURE=long")
    base = str(tmp_path / "base")
    big = str(tmp_path / "big.bin")
    size = 4 * 1024 ** 3 + 512 * 1024 ** 2
    _sparse(big, size)
    with rear.rear_fs(base, compression=compression) as fs:
        with fs.pickup(big, "big.zip/big.bin"):
            pass
        fs.write_bytes("big.zip/after.txt", b"after the big one")
    stats = rear.scavenge(base)
    assert stats.errors == [] and stats.files_moved == 2
    archive = os.path.join(base, "big.zip")
    with zipfile.ZipFile(archive) as handle:
        assert handle.getinfo("big.bin").file_size == size
        assert handle.read("after.txt") == b"after the big one"
    for reader in READERS:
        reader_accepts(reader[0], archive)


# ---------------------------------------------------------------- 3. Python 3.8 and platforms without fcntl


def test_rear_py_needs_nothing_newer_than_python_3_8():
    if shutil.which("vermin") is None:
        pytest.skip("vermin is not installed (pip install vermin)")
    result = subprocess.run(["vermin", "-t=3.8-", "--violations", "--no-tips",
                             os.path.join(HERE, "rear.py")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rear_imports_without_fcntl_and_says_at_use_that_locking_needs_posix():
    script = textwrap.dedent("""
        import sys
        sys.modules["fcntl"] = None          # as on Windows: import fcntl fails
        import rear
        try:
            rear._lock(0, "x")
        except rear.LockingUnsupportedError as err:
            print(err)
    """)
    result = subprocess.run([sys.executable, "-c", script], env=CHILD_ENV,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "POSIX" in result.stdout


def test_importing_rear_imports_no_async_library():
    script = "import sys, rear; print(sorted({'asyncio', 'trio', 'anyio'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], env=CHILD_ENV,
                            capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


# ---------------------------------------------------------------- 4. async callers


def _record_seal_threads(monkeypatch):
    threads = []
    real_seal = rear._TempZip.seal
    real_scavenge = rear.scavenge

    def seal(self):
        threads.append(("seal", threading.current_thread()))
        return real_seal(self)

    def scavenge(*args, **kwargs):
        threads.append(("scavenge", threading.current_thread()))
        return real_scavenge(*args, **kwargs)

    monkeypatch.setattr(rear._TempZip, "seal", seal)
    monkeypatch.setattr(rear, "scavenge", scavenge)
    return threads


def _rear_0_1_usage(base):
    """The usage shown in rear 0.1.2's README, unchanged."""
    from rear import rear_fs, rear_open, rear_pickup, scavengerd

    async def worker():
        async with rear_fs(base):
            with rear_open("ar.zip/relpath/to/file", "w+b") as f:
                f.write(b"...")
            with rear_pickup(os.path.join(base, "..", "temp-file"), "ar.zip/picked"):
                with open(os.path.join(base, "..", "temp-file"), "wb") as f:
                    f.write(b"made by another program")

    async def main(run):
        async with scavengerd(base):
            await run(worker)

    return main


def test_async_with_under_asyncio_runs_blocking_work_off_the_event_loop(tmp_path, monkeypatch):
    base = str(tmp_path / "base")
    threads = _record_seal_threads(monkeypatch)

    async def run(worker):
        await worker()
        return threading.current_thread()

    async def main():
        loop_thread = threading.current_thread()
        await _rear_0_1_usage(base)(run)
        return loop_thread

    loop_thread = asyncio.run(main())
    assert threads and all(thread is not loop_thread for _kind, thread in threads), threads
    with zipfile.ZipFile(os.path.join(base, "ar.zip")) as handle:
        assert handle.read("relpath/to/file") == b"..."
        assert handle.read("picked") == b"made by another program"


def test_async_with_under_trio_runs_blocking_work_off_the_event_loop(tmp_path, monkeypatch):
    trio = pytest.importorskip("trio", reason="trio is a test-only dependency (pip install trio)")
    base = str(tmp_path / "base")
    threads = _record_seal_threads(monkeypatch)
    loop_threads = []

    async def run(worker):
        loop_threads.append(threading.current_thread())
        await worker()

    trio.run(_rear_0_1_usage(base), run)
    assert threads and all(thread is not loop_threads[0] for _kind, thread in threads), threads
    with zipfile.ZipFile(os.path.join(base, "ar.zip")) as handle:
        assert handle.read("relpath/to/file") == b"..."


# ---------------------------------------------------------------- 5. schedulers (stubbed), examples run for real


FAKE_SBATCH = """#!/usr/bin/env bash
# Stand-in for SLURM's sbatch: logs its arguments, runs the job at once (array
# tasks in parallel) and prints a job id like --parsable does.
echo "$*" >> "$SBATCH_LOG"
array=""
while [ $# -gt 1 ]; do
    case "$1" in --array=*) array=${1#--array=} ;; esac
    shift
done
script=$1
job=$(( 1000 + $(wc -l < "$SBATCH_LOG") ))
if [ -n "$array" ]; then
    for task in $(seq "${array%-*}" "${array#*-}"); do
        SLURM_JOB_ID=$job SLURM_ARRAY_TASK_ID=$task bash "$script" >> "$SBATCH_LOG.out" 2>&1 &
    done
    wait
else
    SLURM_JOB_ID=$job bash "$script" >> "$SBATCH_LOG.out" 2>&1 || exit 1
fi
echo $job
"""


def test_slurm_job_array_example_with_a_dependent_scavenger_job(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    base = str(tmp_path / "run")
    log = str(tmp_path / "sbatch.log")
    env = dict(CHILD_ENV, PATH=str(bin_dir) + os.pathsep + os.environ["PATH"],
               REAR_BASE=base, TASKS="6", SBATCH_LOG=log)
    result = subprocess.run(["bash", os.path.join(EXAMPLES, "slurm", "submit.sh")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr + open(log + ".out").read()
    calls = open(log).read().splitlines()
    assert "--array=0-5" in calls[0]
    assert "--dependency=afterany:1001" in calls[1]     # after the array job, however it ended
    with zipfile.ZipFile(os.path.join(base, "results.zip")) as handle:
        assert len(handle.namelist()) == 600
        assert handle.read("task-0003/step-042.txt").startswith(b"task 3, step 42")
    with zipfile.ZipFile(os.path.join(base, "logs.zip")) as handle:
        assert len(handle.namelist()) == 6
    assert [name for name in os.listdir(os.path.join(base, "inbox")) if name.endswith(".zip")] == []


FAKE_MPI = '''
"""Stand-in for mpi4py.MPI: rank and size from the environment, a file barrier."""
import os, time

class _Comm:
    def Get_rank(self):
        return int(os.environ["FAKE_MPI_RANK"])

    def Get_size(self):
        return int(os.environ["FAKE_MPI_SIZE"])

    def Barrier(self):
        directory = os.environ["FAKE_MPI_BARRIER"]
        open(os.path.join(directory, str(self.Get_rank())), "w").close()
        while len(os.listdir(directory)) < self.Get_size():
            time.sleep(0.01)

COMM_WORLD = _Comm()
'''


def test_mpi_example_every_rank_writes_and_rank_0_collects(tmp_path):
    stub = tmp_path / "stub" / "mpi4py"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("")
    (stub / "MPI.py").write_text(FAKE_MPI)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    base = str(tmp_path / "run")
    size = 4
    env = dict(CHILD_ENV, FAKE_MPI_SIZE=str(size), FAKE_MPI_BARRIER=str(barrier),
               PYTHONPATH=str(tmp_path / "stub") + os.pathsep + CHILD_ENV["PYTHONPATH"])
    ranks = [subprocess.Popen([sys.executable, os.path.join(EXAMPLES, "mpi_ranks.py"), base],
                              env=dict(env, FAKE_MPI_RANK=str(rank)), stdout=subprocess.PIPE,
                              text=True) for rank in range(size)]
    outputs = [rank.communicate(timeout=300)[0] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0] * size
    assert "rank 0 moved 4000 files" in outputs[0]
    with zipfile.ZipFile(os.path.join(base, "ranks.zip")) as handle:
        assert len(handle.namelist()) == 4000


def test_main_process_example_with_scavengerd_and_a_process_pool(tmp_path):
    base = str(tmp_path / "run")
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, "main_process.py"), base],
                            env=CHILD_ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # the pool's workers sealed their temp zips when they exited: nothing to salvage
    assert "1000 tasks; scavengerd moved 1000 files, salvaged 0 temp zips, 0 errors" \
        in result.stdout
    with zipfile.ZipFile(os.path.join(base, "tasks.zip")) as handle:
        assert len(handle.namelist()) == 1000


# ---------------------------------------------------------------- 6. a CLI people like


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_scavenge_shows_a_progress_line_on_a_terminal_when_it_takes_a_while(
        tmp_path, monkeypatch):
    base = str(tmp_path / "base")
    for batch in range(5):
        with rear.rear_fs(base) as fs:
            fs.write_bytes("a.zip/%d" % batch, b"x")
    monkeypatch.setattr(rear, "_PROGRESS_DELAY", 0.0)
    monkeypatch.setattr(rear, "_PROGRESS_INTERVAL", 0.0)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert rear.main(["scavenge", base]) == 0
    assert "\rrear: 5/5 temp zips, 5 files moved, 0 errors" in terminal.getvalue()
    assert terminal.getvalue().endswith("\n")


def test_scavenge_is_silent_on_stderr_when_not_a_terminal_or_quiet(tmp_path, monkeypatch):
    base = str(tmp_path / "base")
    with rear.rear_fs(base) as fs:
        fs.write_bytes("a.zip/x", b"x")
    monkeypatch.setattr(rear, "_PROGRESS_DELAY", 0.0)
    result = subprocess.run([sys.executable, "-m", "rear", "scavenge", base], env=CHILD_ENV,
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == ""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with rear.rear_fs(base) as fs:
        fs.write_bytes("a.zip/y", b"y")
    assert rear.main(["scavenge", "-q", base]) == 0
    assert terminal.getvalue() == ""


def test_cat_streams_a_large_member_byte_for_byte(tmp_path):
    base = str(tmp_path / "base")
    data = os.urandom(1024 * 1024) * 24
    with rear.rear_fs(base) as fs:
        fs.write_bytes("big.zip/big.bin", data)
    rear.scavenge(base)
    result = subprocess.run([sys.executable, "-m", "rear", "cat",
                             os.path.join(base, "big.zip"), "big.bin"], env=CHILD_ENV,
                            capture_output=True)
    assert result.returncode == 0 and result.stdout == data


def test_ls_lists_sizes_dates_and_names_like_unzip_l(tmp_path):
    base = str(tmp_path / "base")
    with rear.rear_fs(base) as fs:
        fs.write_bytes("a.zip/dir/log.txt", b"line\n" * 1000)
    rear.scavenge(base)
    result = subprocess.run([sys.executable, "-m", "rear", "ls", os.path.join(base, "a.zip")],
                            env=CHILD_ENV, capture_output=True, text=True)
    header, row, total = result.stdout.splitlines()
    assert header.split() == ["Length", "Compressed", "Date", "Time", "Name"]
    length, compressed, day, clock, name = row.split()
    assert (int(length), name) == (5000, "dir/log.txt") and int(compressed) < 5000
    assert len(day) == 10 and len(clock) == 5
    assert total.split()[-2:] == ["1", "file"]


def test_status_json_is_machine_readable(tmp_path):
    base = str(tmp_path / "base")
    with rear.rear_fs(base) as fs:
        fs.write_bytes("a.zip/x", b"x")
    result = subprocess.run([sys.executable, "-m", "rear", "status", "--json", base],
                            env=CHILD_ENV, capture_output=True, text=True)
    report = json.loads(result.stdout)
    assert [temp["state"] for temp in report["temp_zips"]] == ["sealed"]
    assert report["archives"] == [] and report["journals"] == []


def test_verbose_logs_what_the_scavenger_does(tmp_path):
    base = str(tmp_path / "base")
    for content in (b"1", b"2"):
        with rear.rear_fs(base) as fs:
            fs.write_bytes("a.zip/x", content)
    result = subprocess.run([sys.executable, "-m", "rear", "scavenge", "-v", base],
                            env=CHILD_ENV, capture_output=True, text=True)
    assert result.returncode == 0
    assert "rear: WARNING:" in result.stderr and "x.~1~" in result.stderr


def test_example_scripts_are_executable():
    for path in ("slurm/submit.sh", "slurm/task.sbatch", "slurm/scavenge.sbatch"):
        assert os.stat(os.path.join(EXAMPLES, path)).st_mode & stat.S_IXUSR, path
