"""rear:// for fsspec, and the engines that read through it for real:
fsspec, pandas, xarray, Dask distributed (a LocalCluster of two worker
processes) and PyTorch's DataLoader.  Each engine's tests skip, saying
so, where it is not installed; .ci/run installs them all."""

import io
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

import rear
from tests.support import (CHILD_ENV, HERE, SCAVENGER_LOOP_SCRIPT, fill, run_child,
                           series_member, write_series)

fsspec = pytest.importorskip("fsspec", reason="fsspec is not installed (pip install fsspec)")

LOGS = {"logs.zip/task-%d/stdout.txt" % task: b"task %d done\n" % task for task in range(5)}
CSV = b"step,value\n0,1\n1,2\n"
#: Members of a deflated one whose size is well past a read chunk.
BIG = bytes(range(256)) * 9000


@pytest.fixture
def archived(base):
    """A base with logs.zip, sub/res.zip and big.zip archived, and
    logs.zip/pending.txt still in the inbox."""
    fill(base, dict(LOGS, **{"sub/res.zip/a.csv": CSV, "big.zip/blob.bin": BIG}))
    assert rear.scavenge(base, flush=True).errors == []
    fill(base, {"logs.zip/pending.txt": b"not scavenged yet"})
    rear.register_fsspec()
    return base


def rear_fs(base, **options):
    return fsspec.filesystem("rear", fo=base, **options)


# ---------------------------------------------------------------- optional, never required


def test_rear_imports_and_works_without_fsspec_and_says_how_to_get_it(base, tmp_path):
    shutil.copy(os.path.join(HERE, "rear.py"), str(tmp_path))     # a vendored copy
    script = textwrap.dedent("""
        import sys
        sys.modules["fsspec"] = None       # as if it were not installed
        import rear
        fs = rear.rear_fs(sys.argv[1]); fs.write_bytes("a.zip/x", b"x"); fs.close()
        rear.scavenge(sys.argv[1])
        assert rear.read_bytes(sys.argv[1], "a.zip/x") == b"x"
        for attempt in (lambda: rear.RearFileSystem, rear.register_fsspec):
            try:
                attempt()
            except ImportError as err:
                print(err)
    """)
    result = subprocess.run([sys.executable, "-c", script, base], cwd=str(tmp_path),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("rear's fsspec filesystem (rear://) needs fsspec: pip install "
                               "fsspec; the rest of rear works without it") == 2


def test_an_installed_rear_is_known_to_fsspec_through_its_entry_point(archived):
    from importlib.metadata import entry_points
    specs = entry_points()
    specs = (specs.select(group="fsspec.specs") if hasattr(specs, "select")
             else specs.get("fsspec.specs", []))
    if not any(spec.name == "rear" for spec in specs):
        pytest.skip("rear is not installed here ('python3 -m pip install .' registers it)")
    script = ("import fsspec, sys; print(fsspec.filesystem('rear', fo=sys.argv[1])"
              ".cat_file('logs.zip/task-1/stdout.txt'))")
    result = subprocess.run([sys.executable, "-c", script, archived], cwd="/",
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "b'task 1 done\\n'\n"


def test_register_fsspec_returns_the_class_pickle_and_fsspec_know_as_rear_filesystem():
    cls = rear.register_fsspec()
    assert cls is rear.RearFileSystem and fsspec.get_filesystem_class("rear") is cls
    assert (cls.__module__, cls.__qualname__) == ("rear", "RearFileSystem")


# ---------------------------------------------------------------- what is there


def test_a_chained_url_opens_a_member_of_an_archive_under_a_base(archived):
    with fsspec.open("rear://logs.zip/task-3/stdout.txt::" + archived) as handle:
        assert handle.read() == b"task 3 done\n"


def test_ls_lists_directories_and_archives_of_the_base_then_members(archived):
    fs = rear_fs(archived)
    assert fs.ls("", detail=False) == ["big.zip", "logs.zip", "sub"]     # no inbox/
    assert fs.ls("sub", detail=False) == ["sub/res.zip"]
    assert fs.ls("logs.zip", detail=False) == ["logs.zip/task-%d" % n for n in range(5)]
    assert fs.ls("logs.zip/task-2", detail=False) == ["logs.zip/task-2/stdout.txt"]
    assert fs.ls("logs.zip/task-2/stdout.txt", detail=False) == ["logs.zip/task-2/stdout.txt"]


def test_info_says_file_or_directory_with_size_crc_and_where_it_is(archived):
    fs = rear_fs(archived)
    info = fs.info("logs.zip/task-1/stdout.txt")
    assert (info["type"], info["size"], info["pending"]) == ("file", 12, False)
    assert info["archive"] == os.path.join(archived, "logs.zip")
    for directory in ("", "sub", "logs.zip", "logs.zip/task-1"):
        assert fs.info(directory)["type"] == "directory"
    assert fs.isdir("logs.zip") and fs.isfile("logs.zip/task-1/stdout.txt")


def test_a_missing_member_archive_or_directory_is_file_not_found_saying_where(archived):
    fs = rear_fs(archived)
    for path in ("logs.zip/task-9/stdout.txt", "nope.zip/x", "nodir", "inbox/x"):
        assert not fs.exists(path)
        with pytest.raises(FileNotFoundError):
            fs.info(path)
    with pytest.raises(FileNotFoundError, match="pending=True"):
        fs.info("logs.zip/pending.txt")


def test_a_damaged_archive_says_so_rather_than_not_found(archived):
    with open(os.path.join(archived, "bad.zip"), "wb") as handle:
        handle.write(b"not a zip")
    with pytest.raises(rear.ArchiveError, match="bad.zip is not a zip archive"):
        rear_fs(archived).cat_file("bad.zip/x")


def test_a_base_that_does_not_exist_is_refused_naming_it(tmp_path):
    rear.register_fsspec()
    missing = str(tmp_path / "typo")
    with pytest.raises(rear.RearError, match="base directory %s does not exist" % missing):
        fsspec.open("rear://a.zip/x::" + missing).open()


def test_a_url_without_a_base_says_how_to_give_one(monkeypatch):
    monkeypatch.delenv("REAR_BASE", raising=False)
    rear.register_fsspec()
    with pytest.raises(ValueError, match=r"rear:// needs the base directory: chain it, like "
                       r"'rear://logs.zip/task-1/out.txt::/scratch/run42'"):
        fsspec.open("rear://logs.zip/x").open()


def test_find_and_glob_stream_members(archived):
    fs = rear_fs(archived)
    assert fs.find("logs.zip") == sorted(LOGS)
    assert fs.find("") == sorted(list(LOGS) + ["big.zip/blob.bin", "sub/res.zip/a.csv"])
    assert fs.glob("logs.zip/task-[13]/*.txt") == ["logs.zip/task-1/stdout.txt",
                                                    "logs.zip/task-3/stdout.txt"]
    assert fs.glob("*.zip") == ["big.zip", "logs.zip"]
    assert fs.glob("logs.zip/task-*") == ["logs.zip/task-%d" % n for n in range(5)]
    assert fs.find("logs.zip", maxdepth=1, withdirs=True) == [
        "logs.zip/task-%d" % n for n in range(5)]


def test_glob_reads_only_names_that_begin_with_the_literal_part_of_the_pattern(
        archived, monkeypatch):
    prefixes = []
    real_rows = rear.ArchiveReader.rows

    def recording_rows(self, prefix=""):
        prefixes.append(prefix)
        return real_rows(self, prefix)

    monkeypatch.setattr(rear.ArchiveReader, "rows", recording_rows)
    assert rear_fs(archived).glob("logs.zip/task-4*/stdout.txt") == [
        "logs.zip/task-4/stdout.txt"]
    assert prefixes == ["task-4"]


# ---------------------------------------------------------------- reading


def test_open_is_seekable_and_reads_any_range_of_a_deflated_member(archived):
    fs = rear_fs(archived)
    assert fs.info("big.zip/blob.bin")["compressed_size"] < len(BIG)
    with fs.open("big.zip/blob.bin") as handle:
        assert handle.seekable()
        handle.seek(1000000)
        assert handle.read(10) == BIG[1000000:1000010]
        handle.seek(5)                                    # back: the stream is reopened
        assert handle.read(3) == BIG[5:8]
        handle.seek(-4, io.SEEK_END)
        assert handle.read() == BIG[-4:] and handle.tell() == len(BIG)
        handle.seek(0)
        assert handle.read() == BIG


def test_cat_file_takes_byte_ranges(archived):
    fs = rear_fs(archived)
    assert fs.cat_file("big.zip/blob.bin", start=300, end=310) == BIG[300:310]
    assert fs.cat_file("big.zip/blob.bin", start=-5) == BIG[-5:]
    assert fs.cat("logs.zip/task-0/stdout.txt") == b"task 0 done\n"


def test_pending_true_also_reads_files_not_scavenged_yet(archived):
    fs = rear_fs(archived, pending=True)
    info = fs.info("logs.zip/pending.txt")
    assert info["pending"] is True
    assert fs.cat_file("logs.zip/pending.txt") == b"not scavenged yet"
    assert "logs.zip/pending.txt" in fs.find("logs.zip")


def test_a_file_archived_after_the_reader_opened_is_found(archived):
    fs = rear_fs(archived)
    assert fs.cat_file("logs.zip/task-0/stdout.txt")           # its reader is open now
    rear.scavenge(archived, flush=True)                        # pending.txt archived
    assert fs.cat_file("logs.zip/pending.txt") == b"not scavenged yet"


def test_a_series_reads_as_one_archive(base):
    fill(base, {"s.zip/first": b"1"})
    rear.scavenge(base)
    fill(base, {"s.zip/second": b"2"})
    rear.scavenge(base, max_entries=1)                         # s.zip -> s.~1~.zip
    rear.register_fsspec()
    fs = rear_fs(base)
    assert sorted(os.listdir(base)) == ["inbox", "s.zip", "s.~1~.zip"]
    assert fs.ls("", detail=False) == ["s.zip"]
    assert fs.cat_file("s.zip/first") == b"1" and fs.cat_file("s.zip/second") == b"2"
    assert fs.find("s.zip") == ["s.zip/first", "s.zip/second"]


def test_every_write_is_refused_and_points_to_rear_open(archived):
    fs = rear_fs(archived)
    before = sorted(os.listdir(archived))
    for attempt in (lambda: fs.open("logs.zip/new.txt", "wb"),
                    lambda: fs.pipe("logs.zip/new.txt", b"x"),
                    lambda: fs.rm("logs.zip/task-1/stdout.txt"),
                    lambda: fs.mkdir("logs.zip/d"),
                    lambda: fs.mv("logs.zip/task-1/stdout.txt", "logs.zip/x"),
                    lambda: fs.touch("logs.zip/t")):
        with pytest.raises(OSError, match=r"rear:// is read-only; write files with "
                           r"rear.rear_open\(\) inside a rear.rear_fs\(\)"):
            attempt()
    assert sorted(os.listdir(archived)) == before
    assert fs.cat_file("logs.zip/task-1/stdout.txt") == b"task 1 done\n"


def test_instances_are_cached_and_pickle_as_their_base(archived):
    fs = rear_fs(archived, pending=True)
    assert rear_fs(archived, pending=True) is fs
    assert rear_fs(archived) is not fs
    copy = pickle.loads(pickle.dumps(fs))
    assert copy is fs                     # the same process: the cached instance
    script = ("import pickle, sys; fs = pickle.loads(sys.stdin.buffer.read()); "
              "print(fs.base, fs.pending, fs.cat_file('logs.zip/pending.txt'))")
    result = subprocess.run([sys.executable, "-c", script], input=pickle.dumps(fs),
                            env=CHILD_ENV, capture_output=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == "%s True b'not scavenged yet'\n" % archived


def test_threads_share_one_instance(archived):
    from concurrent.futures import ThreadPoolExecutor
    fs = rear_fs(archived)
    names = sorted(LOGS) * 40
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(fs.cat_file, names)) == [LOGS[name] for name in names]


# ---------------------------------------------------------------- engines


def test_pandas_reads_a_csv_member_with_storage_options(archived):
    pandas = pytest.importorskip("pandas", reason="pandas is not installed")
    frame = pandas.read_csv("rear://sub/res.zip/a.csv::" + archived)
    assert list(frame["value"]) == [1, 2]
    fill(archived, {"sub/res.zip/b.csv": CSV})                 # not scavenged
    frame = pandas.read_csv("rear://sub/res.zip/b.csv::" + archived,
                            storage_options={"rear": {"pending": True}})
    assert list(frame["step"]) == [0, 1]


def test_xarray_opens_a_netcdf_member(base, tmp_path):
    xarray = pytest.importorskip("xarray", reason="xarray is not installed")
    pytest.importorskip("scipy", reason="scipy (xarray's netCDF3 engine) is not installed")
    source = str(tmp_path / "grid.nc")
    xarray.Dataset({"t": ("x", [1.5, 2.5, 3.5])}).to_netcdf(source, engine="scipy")
    with rear.rear_fs(base) as fs:
        with fs.pickup(source, "fields.zip/task-1/grid.nc"):
            pass
    rear.scavenge(base, flush=True)
    rear.register_fsspec()
    with fsspec.open("rear://fields.zip/task-1/grid.nc::" + base) as handle:
        grid = xarray.open_dataset(handle, engine="scipy").load()
    assert list(grid["t"].values) == [1.5, 2.5, 3.5]


@pytest.fixture(scope="module")
def million(tmp_path_factory):
    """A base with a series of 1,000,000 members: big.zip and three
    rolled-over archives of 250,000 each."""
    base = str(tmp_path_factory.mktemp("million"))
    write_series(base, "big.zip", 1000000, 250000)
    return base


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed",
                                      reason="dask distributed is not installed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True,
                                  dashboard_address=":0") as local:
        with distributed.Client(local) as client:
            yield client


def test_a_dask_cluster_of_two_processes_reads_members_of_a_million_entry_series(
        million, cluster):
    bag = pytest.importorskip("dask.bag")
    rear.register_fsspec()
    fs = rear_fs(million)
    assert fs.info("big.zip")["type"] == "directory"
    assert sorted(os.listdir(million)) == ["big.zip", "big.~1~.zip", "big.~2~.zip", "big.~3~.zip",
                                           "inbox"]
    numbers = list(range(7, 1000000, 997))        # spread over all four archives
    paths = ["rear://big.zip/%s::%s" % (series_member(number)[0], million)
             for number in numbers]
    lines = bag.read_text(paths).compute()
    assert lines == [series_member(number)[1].decode() for number in numbers]
    workers = cluster.run(lambda: os.getpid())
    assert len(workers) == 2 and os.getpid() not in workers.values()
    # a glob narrowed to one part: 10,000 members through the cluster
    part = bag.read_text("rear://big.zip/part-042/*::" + million)
    assert part.count().compute() == 10000


def _read_or_missing(base, names):
    found = {}
    fs = rear.RearFileSystem(fo=base, pending=True)
    for name in names:
        try:
            found[name] = fs.cat_file(name)
        except FileNotFoundError:
            found[name] = None
    return found


def test_dask_reads_pending_files_exactly_or_not_yet_while_a_scavenger_commits(
        base, cluster):
    rear.register_fsspec()
    files = {"live.zip/w%d/f%04d" % (writer, number): os.urandom(300)
             for writer in range(3) for number in range(300)}
    until = time.time() + 8
    scavenger = run_child(SCAVENGER_LOOP_SCRIPT, base, str(until), "0.2")
    names = sorted(files)
    try:
        for start in range(0, len(names), 150):        # written while the cluster reads
            fill(base, {name: files[name] for name in names[start:start + 150]})
            chunks = [names[index:index + 100] for index in range(0, len(names), 100)]
            for found in cluster.gather(cluster.map(_read_or_missing, [base] * len(chunks),
                                                    chunks, pure=False)):
                for name, data in found.items():
                    assert data is None or data == files[name], name
    finally:
        assert scavenger.wait(60) == 0
    rear.scavenge(base, flush=True)
    final = _read_or_missing(base, names)
    assert final == files


# ---------------------------------------------------------------- a PyTorch-like dataset


def test_the_example_dataset_serves_members_by_index_in_forked_workers(archived, monkeypatch):
    import multiprocessing
    monkeypatch.syspath_prepend(os.path.join(HERE, "examples"))
    from dataset import ArchiveDataset
    dataset = ArchiveDataset(archived, "logs.zip")
    assert len(dataset) == 5 and dataset[2] == LOGS["logs.zip/" + dataset.names[2]]   # opened here
    with multiprocessing.get_context("fork").Pool(2) as pool:
        served = pool.map(dataset.__getitem__, range(5))
    assert served == [LOGS["logs.zip/" + name] for name in dataset.names]


def test_the_example_dataset_under_torchs_dataloader_with_two_workers(archived, monkeypatch):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    monkeypatch.syspath_prepend(os.path.join(HERE, "examples"))
    from dataset import ArchiveDataset
    dataset = ArchiveDataset(archived, "logs.zip")
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2,
                                         collate_fn=list)
    assert [item for batch in loader for item in batch] == [LOGS["logs.zip/" + name]
                                                             for name in dataset.names]


# ---------------------------------------------------------------- the docs


def test_the_analysis_guide_runs_as_written(tmp_path):
    for module in ("pandas", "xarray", "scipy", "distributed", "torch"):
        pytest.importorskip(module, reason="%s is not installed" % module)
    shutil.copy(os.path.join(HERE, "rear.py"), str(tmp_path))
    shutil.copy(os.path.join(HERE, "examples", "dataset.py"), str(tmp_path))
    guide = open(os.path.join(HERE, "docs", "analysis.md")).read()
    blocks = [block.split("```", 1)[0] for block in guide.split("```python\n")[1:]]
    # As the guide says: in a script, under a main guard (Dask's workers
    # re-import the main module).
    script = "if __name__ == '__main__':\n" + textwrap.indent("\n".join(blocks), "    ")
    (tmp_path / "guide.py").write_text(script)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "guide.py"], cwd=str(tmp_path), env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()
               if line.startswith("print(") or line.lstrip().startswith("print(")]
    expected = [line.split("# ", 1)[1].split(":")[0] for block in blocks
                for line in block.splitlines() if "print(" in line and "# " in line]
    shown = result.stdout.splitlines()
    for value in expected:
        assert value in shown, (value, shown)
    assert len(printed) == len(shown)
