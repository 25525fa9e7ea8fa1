"""Side-by-side benchmark of rear against what users would otherwise use.

Every comparison runs here, in one process tree, on the same data and the
same filesystem, and is reported as a ratio: absolute times on a shared
machine are noise, ratios within one run are not.

    python bench/bench.py                          # rear, zipfile, open(), cp
    python bench/bench.py --legacy-python /tmp/rear01/bin/python   # + rear 0.1.2
    python bench/bench.py --scale smoke            # seconds, for CI

rear 0.1.2 is the predecessor on PyPI; it is also called ``rear``, so it runs
in a venv of its own (see README.md, "Performance").  Each measurement runs
in a fresh subprocess of this script (``_worker`` mode), so imports, memory
peaks and module names never leak between the contenders.

Prints a table, then one line ``BENCH_JSON {...}`` with every number.
"""

import argparse
import base64
import importlib.util
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

SCALES = {
    # files per process for the writer rows, small entries for the scavenger,
    # archive sizes for append scaling, big entry size, memory-test file size
    "full": dict(small_files=20000, medium_files=2000, scavenge_small=100000,
                 big_entries=2, big_size=1024 ** 3, append_sizes=[0, 100000, 1000000],
                 append_new=1000, memory_size=2 * 1024 ** 3, strace_files=[1000, 10000],
                 read_entries=1000000, campaign_entries=5000000, campaign_max_entries=None,
                 fsspec_entries=[100000, 1000000], dask_members=10000,
                 dask_pattern="old/000*/*", dask_timeout=600,
                 missing_expected=1000000, missing_pending=10000,
                 flush_entries=1000000, scaleout_entries=200000,
                 inbox_live_writers=2000, inbox_sealed=20000, sizes_bytes=256 * 1024 ** 2,
                 repeats=3),
    # campaign_max_entries None: rear's default; smoke scale shrinks it to
    # keep the mechanics (a series of rolled archives) in seconds.
    "smoke": dict(small_files=300, medium_files=30, scavenge_small=2000,
                  big_entries=1, big_size=4 * 1024 ** 2, append_sizes=[0, 3000],
                  append_new=100, memory_size=32 * 1024 ** 2, strace_files=[100, 300],
                  read_entries=20000, campaign_entries=20000, campaign_max_entries=5000,
                  fsspec_entries=[20000], dask_members=100,
                  dask_pattern="old/0000/result-00000*.txt", dask_timeout=120,
                  missing_expected=20000, missing_pending=200, flush_entries=30000,
                  scaleout_entries=4000, inbox_live_writers=50, inbox_sealed=200,
                  sizes_bytes=8 * 1024 ** 2, repeats=1),
}
#: writestr_fsync: writestr, then the zip fsynced once at the end: what rear
#: does (durable on return), without which writestr is timed into the page cache.
WRITERS = ["rear", "legacy", "writestr", "writestr_fsync", "open"]
#: max_entries for rows that measure one archive as it grows (append, read).
NO_ROLLOVER = 10 ** 9
REAR_PY = os.path.join(REPO, "rear.py")
MIB = 1024 ** 2


# ---------------------------------------------------------------- payloads


def payload(size, seed):
    """Log-like data that deflate shrinks to about 3/4, like real output."""
    rng = random.Random(seed)
    text = base64.b64encode(rng.randbytes(size))[:size]
    return text


def _peak_rss_mib():
    """This process's peak RSS.  Not getrusage's ru_maxrss: Linux carries it
    over exec from the forking parent, so a worker forked by a parent that
    held a 1 GiB test payload reported 1 GiB.  VmHWM starts afresh at exec."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------- workers
# Run as ``bench.py _worker KIND JSON``, in this interpreter (rear, zipfile,
# open) or in the legacy venv's (rear 0.1.2).  Each prints one JSON line.


def _import_rear():
    sys.path.insert(0, REPO)
    import rear
    return rear


def worker_write(args):
    """Write ``count`` files of ``size`` bytes; stream if ``stream``."""
    method, base, count, size = args["method"], args["base"], args["count"], args["size"]
    compression, ident = args["compression"], args["id"]
    data = payload(min(size, MIB), ident)
    chunks = [data] * (size // len(data)) + [data[:size % len(data)]]
    names = ["a.zip/w%d/%05d/out-%d.txt" % (ident, n // 1000, n) for n in range(count)]
    if method == "rear":
        rear = _import_rear()
        start = time.time()
        with rear.rear_fs(base, compression=compression):
            for name in names:
                with rear.rear_open(name, "wb") as handle:
                    for chunk in chunks:
                        handle.write(chunk)
        end = time.time()
    elif method == "legacy":
        import builtins
        import trio
        import rear as legacy   # rear 0.1.2, in its own venv
        assert not hasattr(legacy, "__version__"), "this is rear 1.x, not 0.1.2"

        async def main():
            async with legacy.rear_fs(base):
                for name in names:
                    with builtins.rear_open(name, "w+b") as handle:
                        for chunk in chunks:
                            handle.write(chunk)

        start = time.time()
        trio.run(main)
        end = time.time()
    elif method in ("writestr", "writestr_fsync"):
        import zipfile
        kind = zipfile.ZIP_DEFLATED if compression == "deflated" else zipfile.ZIP_STORED
        os.makedirs(base, exist_ok=True)
        start = time.time()
        with open(os.path.join(base, "w%d.zip" % ident), "wb") as handle:
            with zipfile.ZipFile(handle, "w", kind) as archive:
                for name in names:
                    archive.writestr(name, b"".join(chunks))
            if method == "writestr_fsync":
                handle.flush()
                os.fsync(handle.fileno())
        end = time.time()
    else:   # one file per output, in a directory tree: what rear replaces
        start = time.time()
        made = set()
        for name in names:
            path = os.path.join(base, name)
            directory = os.path.dirname(path)
            if directory not in made:
                os.makedirs(directory, exist_ok=True)
                made.add(directory)
            with open(path, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
        end = time.time()
    return {"start": start, "end": end, "rss_mib": _peak_rss_mib()}


def worker_scavenge(args):
    method, base = args["method"], args["base"]
    if args.get("core") is not None:
        os.sched_setaffinity(0, {args["core"]})
    if method == "rear":
        rear = _import_rear()
        limits = {"max_entries": args["max_entries"]} if args.get("max_entries") else {}
        time.sleep(max(0.0, args.get("start_at", 0) - time.time()))   # start together
        started = time.time()
        start = time.perf_counter()
        if args.get("part"):
            limits["part"] = tuple(args["part"])
        stats = rear.scavenge(base, flush=True, **limits)
        assert not stats.errors, stats.errors
        moved = stats.files_moved
    else:
        from rear import scavenger   # rear 0.1.2
        start = time.perf_counter()
        scavenger.try_scan_once(base, flush=True)
        moved = None
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "moved": moved, "rss_mib": _peak_rss_mib(),
            "start": started if method == "rear" else None,
            "end": started + seconds if method == "rear" else None}


def worker_read(args):
    """rear.open_archive(archive) and one read(): seconds, memory added."""
    rear = _import_rear()
    before = _current_rss_mib()
    start = time.perf_counter()
    with rear.open_archive(args["archive"]) as reader:
        data = reader.read(args["member"])
    seconds = time.perf_counter() - start
    assert data == b"0123456789"
    return {"seconds": seconds, "added_mib": _peak_rss_mib() - before}


def worker_fsspec_read(args):
    """Open and read one member through a ``rear://`` or ``zip://`` URL in
    this fresh process, then a second member through a second URL:
    seconds after the imports, and the memory they added."""
    rear = _import_rear()
    import fsspec
    rear.register_fsspec()       # the entry point does it for an installed rear
    before = _current_rss_mib()
    times = []
    for member, expected in zip(args["members"], args["expected"]):
        start = time.perf_counter()
        with fsspec.open(args["url"] % member) as handle:
            data = handle.read()
        times.append(time.perf_counter() - start)
        assert data == expected.encode(), (data, expected)
    return {"first_seconds": times[0], "further_seconds": times[1],
            "added_mib": _peak_rss_mib() - before}


def worker_dask_bag(args):
    """Count the lines of the members a glob URL names with a Dask bag on a
    LocalCluster of two worker processes (one thread each)."""
    rear = _import_rear()
    rear.register_fsspec()
    import dask.bag
    from dask.distributed import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster):
        start = time.perf_counter()
        lines = dask.bag.read_text(args["url"]).count().compute()
        seconds = time.perf_counter() - start
    assert lines == args["members"], (lines, args["members"])
    return {"seconds": seconds}


def _current_rss_mib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def run_worker(python, kind, args, trace=None):
    settle()
    command = [python, os.path.abspath(__file__), "_worker", kind, json.dumps(args)]
    if trace:
        command = ["strace", "-f", "-qq", "-e", "trace=%file", "-o", trace] + command
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)   # rear 1.x must not shadow rear 0.1.2
    output = subprocess.run(command, check=True, stdout=subprocess.PIPE, env=env,
                            text=True, cwd=HERE).stdout
    return json.loads(output.strip().splitlines()[-1])


# ---------------------------------------------------------------- fixtures


def legacy_temp_name(inbox, number, start):
    # rear 0.1.2 names temp zips <host>-<%y%m%d_%H%M%S>.zip, one per second:
    # the stamps must differ, or a zip overwrites the one before (its known
    # bug), so they count back from one start time, never from the clock.
    stamp = time.strftime("%y%m%d_%H%M%S", time.gmtime(start - 86400 - number))
    return os.path.join(inbox, "bench-%s.zip" % stamp)


def make_legacy_inbox(base, entries, compression):
    """Temp zips in rear 0.1.2's format holding ``entries`` [(name, data)]."""
    import zipfile
    kind = zipfile.ZIP_DEFLATED if compression == "deflated" else zipfile.ZIP_STORED
    inbox = os.path.join(base, "inbox")
    os.makedirs(inbox, exist_ok=True)
    per_zip = 10000
    start = time.time()
    for number, first in enumerate(range(0, len(entries), per_zip)):
        with zipfile.ZipFile(legacy_temp_name(inbox, number, start), "w", kind) as archive:
            for name, data in entries[first:first + per_zip]:
                archive.writestr(name, data)


def make_rear_inbox(base, entries, compression, workers=4):
    """Sealed rear temp zips holding ``entries``, written by rear itself."""
    rear = _import_rear()
    share = (len(entries) + workers - 1) // workers
    for worker in range(workers):
        with rear.rear_fs(base, compression=compression) as fs:
            for name, data in entries[worker * share:(worker + 1) * share]:
                fs.write_bytes(name, data)


def make_archive(path, count):
    """A stored zip of ``count`` tiny entries (archive_member names, data
    b"0123456789")."""
    data = b"0123456789"
    write_stored_archive(path, ((archive_member(number), data) for number in range(count)))


def archive_member(number):
    return "old/%04d/result-%07d.txt" % (number // 1000, number)


def write_stored_archive(path, members):
    """A stored zip of ``members`` ((name, bytes) pairs), written directly
    with rear's own header functions: zipfile needs minutes for a million
    entries.  tests/support.py builds its big archives with it too."""
    rear = _import_rear()
    records = []
    offset = 0
    with open(path, "wb") as handle:
        chunk = []
        for name, data in members:
            entry = rear._Entry(name, 0, 0, 0, 33, zlib.crc32(data), len(data), len(data))
            local = rear._pack_local_header(entry) + data
            records.append(rear._pack_central_record(entry, offset))
            offset += len(local)
            chunk.append(local)
            if len(chunk) >= 10000:
                handle.write(b"".join(chunk))
                chunk = []
        handle.write(b"".join(chunk))
        central = b"".join(records)
        handle.write(central)
        handle.write(rear._pack_end_records(len(records), len(central), offset))


def indexed_archive(root, count):
    """(base, archive): a base whose a.zip holds ``count`` entries
    (make_archive) and is indexed by one rear commit."""
    base = fresh_dir(root, "r")
    archive = os.path.join(base, "a.zip")
    make_archive(archive, count)
    make_rear_inbox(base, [("a.zip/indexed", b"i")], "deflated", workers=1)
    run_worker(sys.executable, "scavenge", {"method": "rear", "base": base,
                                            "max_entries": NO_ROLLOVER})
    return base, archive


def fresh_dir(root, name):
    path = os.path.join(root, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


# ---------------------------------------------------------------- rows


def bench_writers(root, scale, pythons, results):
    """Row 1: files/s of each writer, best of ``repeats``."""
    rows = {}
    for size_name, size, count in (("1KiB", 1024, scale["small_files"]),
                                   ("64KiB", 64 * 1024, scale["medium_files"])):
        for compression in ("stored", "deflated"):
            for processes in (1, 8):
                per_process = max(1, count // processes) if processes > 1 else count
                for method in WRITERS:
                    if method not in pythons:
                        continue
                    if method == "legacy" and compression != "stored":
                        continue   # rear 0.1.2 can only store
                    rates = []
                    for _repeat in range(scale["repeats"]):
                        base = fresh_dir(root, "w")
                        reports = run_parallel(pythons[method], processes, lambda ident: {
                            "method": method, "base": base, "count": per_process,
                            "size": size, "compression": compression, "id": ident})
                        wall = max(r["end"] for r in reports) - min(r["start"] for r in reports)
                        rates.append(per_process * processes / wall)
                    key = "%s %s %dp" % (size_name, compression, processes)
                    rows.setdefault(key, {})[method] = max(rates)
                    print("  writer %-22s %-14s %10.0f files/s" % (key, method, max(rates)),
                          flush=True)
    results["writer_files_per_s"] = rows


def settle():
    """Write back what earlier rows left dirty, so it is not billed to the next."""
    os.sync()


def run_parallel(python, processes, make_args, kind="write"):
    settle()
    command = [python, os.path.abspath(__file__), "_worker", kind]
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    children = [subprocess.Popen(command + [json.dumps(make_args(ident))], cwd=HERE, env=env,
                                 stdout=subprocess.PIPE, text=True)
                for ident in range(processes)]
    reports = []
    for child in children:
        output, _ = child.communicate()
        if child.returncode:
            raise RuntimeError("a %s worker failed (exit %d)" % (kind, child.returncode))
        reports.append(json.loads(output.strip().splitlines()[-1]))
    return reports


METADATA_CALLS = re.compile(r"^\d+\s+(\w+)\((.*)$")


def count_metadata_calls(trace, base):
    """Calls naming a path under ``base``: open/creat, rename, unlink, mkdir, stat..."""
    counts = {}
    with open(trace) as handle:
        for line in handle:
            match = METADATA_CALLS.match(line)
            if match and '"%s' % base in match.group(2):
                counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return counts


def bench_metadata(root, scale, pythons, results):
    """Row 2: metadata calls on the base while writing, counted with strace."""
    if shutil.which("strace") is None:
        print("  metadata: strace is not installed; skipped")
        return
    rows = {}
    for method in ("rear", "legacy", "open"):
        if method not in pythons:
            continue
        for count in scale["strace_files"]:
            base = fresh_dir(root, "m")
            # Steady state: the base and its inbox exist (the first worker of
            # a job makes them, once, with a few calls more).
            os.makedirs(os.path.join(base, "inbox"))
            trace = os.path.join(root, "trace.txt")
            run_worker(pythons[method], "write", {
                "method": method, "base": base, "count": count, "size": 1024,
                "compression": "stored", "id": 0}, trace=trace)
            calls = count_metadata_calls(trace, base)
            rows["%s %d files" % (method, count)] = {"total": sum(calls.values()),
                                                     "by_call": calls}
            print("  metadata %-9s %6d files: %6d calls %s"
                  % (method, count, sum(calls.values()), calls), flush=True)
    results["metadata_calls_one_rotation"] = rows


def cp_rate(source_dir, root):
    """MB/s of cp of every file of ``source_dir``, fsynced (as rear fsyncs)."""
    target = fresh_dir(root, "cp")
    files = [os.path.join(source_dir, name) for name in sorted(os.listdir(source_dir))
             if name.endswith(".zip")]
    total = sum(os.path.getsize(path) for path in files)
    settle()
    start = time.perf_counter()
    subprocess.run(["cp"] + files + [target], check=True)
    # coreutils sync with file operands fsyncs each of them
    subprocess.run(["sync"] + [os.path.join(target, os.path.basename(path)) for path in files],
                   check=True)
    seconds = time.perf_counter() - start
    shutil.rmtree(target)
    return total / seconds / 1e6


def cat_rate(files, root, fsync):
    """MB/s of cat of ``files`` into one file (then fsynced, if ``fsync``):
    a raw byte copy of temp zips, what a scavenger of raw copies tends to."""
    total = sum(os.path.getsize(path) for path in files)
    target = os.path.join(fresh_dir(root, "cat"), "all")
    settle()
    start = time.perf_counter()
    with open(target, "wb") as out:
        subprocess.run(["cat"] + files, stdout=out, check=True)
        if fsync:
            os.fsync(out.fileno())
    seconds = time.perf_counter() - start
    shutil.rmtree(os.path.dirname(target))
    return total / seconds / 1e6


def bench_scavenger(root, scale, pythons, results):
    """Row 3: files/s and MB/s moving small and 1 GiB entries."""
    rows = {}
    cases = [("small", [("a.zip/s/%05d/out-%d.txt" % (n // 1000, n), None)
                        for n in range(scale["scavenge_small"])]),
             ("big", [("big.zip/entry-%d.bin" % n, None) for n in range(scale["big_entries"])])]
    for case, names in cases:
        size = 1024 if case == "small" else scale["big_size"]
        for compression in ("stored", "deflated"):
            key = "%s %s" % (case, compression)
            rows[key] = {}
            for method in ("rear", "legacy"):
                if method not in pythons:
                    continue
                base = fresh_dir(root, "s")
                if case == "small":
                    entries = [(name, payload(size, n)) for n, (name, _) in enumerate(names)]
                else:
                    entries = [(name, BigPayload(size, n)) for n, (name, _) in enumerate(names)]
                if method == "rear":
                    make_rear_inbox(base, entries, compression)
                else:
                    make_legacy_inbox(base, entries, compression)
                inbox = os.path.join(base, "inbox")
                inbox_bytes = sum(os.path.getsize(os.path.join(inbox, name))
                                  for name in os.listdir(inbox) if name.endswith(".zip"))
                if method == "rear":
                    rows[key]["cp_MBps"] = cp_rate(inbox, root)
                report = run_worker(pythons[method], "scavenge", {"method": method,
                                                                  "base": base})
                archived = archived_entries(base)
                assert archived == len(entries), "%s archived %d of %d entries" % (
                    method, archived, len(entries))
                rows[key][method] = {
                    "files_per_s": len(entries) / report["seconds"],
                    "MBps": inbox_bytes / report["seconds"] / 1e6,
                    "rss_mib": report["rss_mib"]}
                print("  scavenge %-15s %-7s %9.0f files/s %8.1f MB/s  (peak RSS %.0f MiB)"
                      % (key, method, len(entries) / report["seconds"],
                         inbox_bytes / report["seconds"] / 1e6, report["rss_mib"]), flush=True)
            if "cp_MBps" in rows[key]:
                print("  scavenge %-15s %-7s %28.1f MB/s" % (key, "cp", rows[key]["cp_MBps"]),
                      flush=True)
    results["scavenger"] = rows


def bench_sizes(root, scale, pythons, results):
    """The scavenger on 64 KiB and 1 MiB stored entries against cat of the
    same temp zips into one file, without and with an fsync (rear makes
    what it appends durable); best of ``repeats``, interleaved."""
    rows = {}
    for label, size in (("64KiB", 64 * 1024), ("1MiB", MIB)):
        template = fresh_dir(root, "sizes-" + label)
        data = payload(size, 0)   # one object: the row is about bytes moved, not content
        make_rear_inbox(template, [("a.zip/e-%06d.bin" % n, data)
                                   for n in range(max(1, scale["sizes_bytes"] // size))],
                        "stored")
        inbox = os.path.join(template, "inbox")
        files = [os.path.join(inbox, name) for name in sorted(os.listdir(inbox))
                 if name.endswith(".zip")]
        total = sum(os.path.getsize(path) for path in files)
        row = rows[label] = {"rear": 0.0, "cat": 0.0, "cat_fsync": 0.0}
        for _repeat in range(scale["repeats"]):
            row["cat"] = max(row["cat"], cat_rate(files, root, fsync=False))
            row["cat_fsync"] = max(row["cat_fsync"], cat_rate(files, root, fsync=True))
            base = os.path.join(root, "sizes-run")
            shutil.rmtree(base, ignore_errors=True)
            shutil.copytree(template, base, symlinks=True)
            report = run_worker(pythons["rear"], "scavenge", {"method": "rear", "base": base})
            row["rear"] = max(row["rear"], total / report["seconds"] / 1e6)
        shutil.rmtree(template, ignore_errors=True)
        print("  scavenge %-6s stored  rear %7.0f MB/s  cat %7.0f MB/s  cat+fsync %7.0f MB/s"
              "  (%.2fx cat, %.2fx cat+fsync)" % (label, row["rear"], row["cat"],
                                                  row["cat_fsync"], row["rear"] / row["cat"],
                                                  row["rear"] / row["cat_fsync"]), flush=True)
    results["sizes"] = rows


def archived_entries(base):
    """Entries in the final archives under ``base``, from their end records."""
    rear = _import_rear()
    total = 0
    for name in os.listdir(base):
        if name.endswith(".zip"):
            path = os.path.join(base, name)
            fd = os.open(path, os.O_RDONLY)
            try:
                total += rear._read_end_records(fd, os.fstat(fd).st_size, path).count
            finally:
                os.close(fd)
    return total


class BigPayload(bytes):
    """A big entry's bytes, built by repeating 1 MiB of log-like data."""

    def __new__(cls, size, seed):
        block = payload(MIB, seed)
        return super().__new__(cls, block * (size // MIB) + block[:size % MIB])


def bench_append(root, scale, pythons, results):
    """Row 4: seconds to add ``append_new`` entries to archives of each size."""
    rows = {}
    new = scale["append_new"]
    for existing in scale["append_sizes"]:
        rows[str(existing)] = {}
        for method in ("rear", "legacy"):
            if method not in pythons:
                continue
            base = fresh_dir(root, "a")
            if existing:
                make_archive(os.path.join(base, "a.zip"), existing)
            if method == "rear" and existing:
                # An archive rear has not indexed yet costs one full parse,
                # reported on its own; rear keeps the index from then on.
                make_rear_inbox(base, [("a.zip/warm-up", b"w")], "deflated", workers=1)
                warm = run_worker(pythons[method], "scavenge", {
                    "method": method, "base": base, "max_entries": NO_ROLLOVER})
                rows[str(existing)]["rear_first_append_s"] = warm["seconds"]
            times = []
            for repeat in range(scale["repeats"]):
                entries = [("a.zip/new%d/%d.txt" % (repeat, n), payload(1024, n))
                           for n in range(new)]
                if method == "rear":
                    make_rear_inbox(base, entries, "deflated", workers=1)
                else:
                    make_legacy_inbox(base, entries, "deflated")
                times.append(run_worker(pythons[method], "scavenge", {
                    "method": method, "base": base, "max_entries": NO_ROLLOVER})["seconds"])
            expected = existing + (1 if method == "rear" and existing else 0) + new * len(times)
            assert archived_entries(base) == expected, "%s lost entries" % method
            rows[str(existing)][method] = statistics.median(times)
            print("  append %d entries to %8d: %-7s %.3f s" % (new, existing, method,
                                                                 statistics.median(times)),
                  flush=True)
    results["append_seconds"] = rows


def timed(command, cwd=None, returncodes=(0,)):
    """(wall seconds, peak RSS MiB or None) of a command, output discarded.
    The peak comes from GNU time, which forks the command from itself: a
    child of this big process would carry its peak over exec (Linux keeps
    the larger ru_maxrss), and unzip would show 30 MiB."""
    settle()
    gnu_time = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
    with tempfile.NamedTemporaryFile("r") as peak:
        prefix = [gnu_time, "-f", "%M", "-o", peak.name] if gnu_time else []
        start = time.perf_counter()
        returncode = subprocess.run(prefix + command, stdout=subprocess.DEVNULL,
                                    cwd=cwd).returncode
        seconds = time.perf_counter() - start
        if returncode not in returncodes:
            raise subprocess.CalledProcessError(returncode, command)
        kib = peak.read().strip().splitlines()[-1:] if gnu_time else []
    return seconds, int(kib[0]) / 1024.0 if kib else None


def vendored_rear(root):
    """rear.py copied into a directory of its own and byte-compiled, as
    'pip install' or a first run leaves it: 'python -m rear' there then
    measures rear, not the compiling of 4,000 lines on every start."""
    directory = fresh_dir(root, "vendored")
    shutil.copy(REAR_PY, directory)
    subprocess.run([sys.executable, "-m", "compileall", "-q", directory], check=True)
    return directory


def best_of(command, repeats, cwd=None, returncodes=(0,)):
    runs = [timed(command, cwd, returncodes) for _repeat in range(max(repeats, 3))]
    peaks = [rss for _seconds, rss in runs if rss is not None]
    return min(seconds for seconds, _rss in runs), (max(peaks) if peaks else None)


def bench_read(root, scale, pythons, results):
    """Row 6: read one member of, and list, an archive of read_entries
    entries (indexed by a first rear commit), side by side with Info-ZIP."""
    count = scale["read_entries"]
    base, archive = indexed_archive(root, count)
    member = archive_member(count // 2)
    python = sys.executable
    vendored = vendored_rear(root)
    rows = {}
    commands = {
        "python start-up": [python, "-c", "pass"],
        "unzip -p": ["unzip", "-p", archive, member],
        "rear cat": [python, "-m", "rear", "cat", archive, member],
        "zipfile read": [python, "-c", "import sys, zipfile; "
                         "zipfile.ZipFile(sys.argv[1]).read(sys.argv[2])", archive, member],
        "zipinfo -1": ["zipinfo", "-1", archive],
        "unzip -l": ["unzip", "-l", archive],
        "rear ls": [python, "-m", "rear", "ls", archive],
        "rear ls -1": [python, "-m", "rear", "ls", "-1", archive],
        "rear ls --json": [python, "-m", "rear", "ls", "--json", archive],
        "zipfile namelist": [python, "-c", "import sys, zipfile; "
                             "zipfile.ZipFile(sys.argv[1]).namelist()", archive],
    }
    for what, command in commands.items():
        if shutil.which(command[0]) is None:
            continue
        seconds, rss = best_of(command, scale["repeats"], cwd=vendored)
        rows[what] = {"seconds": seconds, "rss_mib": rss}
        print("  read %8d entries: %-18s %7.3f s  (peak RSS %s MiB)"
              % (count, what, seconds, "?" if rss is None else "%.1f" % rss), flush=True)
    report = run_worker(python, "read", {"archive": archive, "member": member})
    rows["open_archive + read, in-process"] = report
    print("  read %8d entries: %-18s %7.4f s  (+%.1f MiB)" % (
        count, "open_archive+read", report["seconds"], report["added_mib"]), flush=True)
    results["read"] = {"entries": count, "rows": rows}


def bench_campaign(root, scale, pythons, results):
    """Row 7: what a 1,000-entry commit costs at the worst point of a long
    campaign with rear's defaults (the current archive just short of
    max_entries, every earlier one rolled over and consulted for
    duplicates), against the same commit into a 1,000-entry archive."""
    rear = _import_rear()
    limit = scale["campaign_max_entries"] or rear.DEFAULT_MAX_ENTRIES
    new = min(1000, limit // 4)
    rows = {}
    for what, rolled, current in (("small archive", 0, 1000),
                                  ("end of campaign", scale["campaign_entries"] // limit - 1,
                                   limit - 2 * new)):
        base = fresh_dir(root, "c")
        for number in range(rolled):
            make_archive(os.path.join(base, "a.~%d~.zip" % (number + 1)), limit)
        make_archive(os.path.join(base, "a.zip"), current)
        make_rear_inbox(base, [("a.zip/indexed", b"i")], "deflated", workers=1)
        run_worker(sys.executable, "scavenge", {"method": "rear", "base": base,
                                                "max_entries": limit})
        times = []
        for repeat in range(max(scale["repeats"], 2)):
            make_rear_inbox(base, [("a.zip/new%d/%d.txt" % (repeat, n), payload(1024, n))
                                   for n in range(new)], "deflated", workers=1)
            times.append(run_worker(sys.executable, "scavenge", {
                "method": "rear", "base": base, "max_entries": limit})["seconds"])
        rows[what] = {"seconds": max(times), "rolled": rolled, "entries": current}
        print("  campaign (max_entries %d): commit %d entries, %-16s %3d rolled, %8d "
              "entries: %.3f s" % (limit, new, what, rolled, current, max(times)), flush=True)
    results["campaign"] = {"max_entries": limit, "total": scale["campaign_entries"],
                           "rows": rows}


def bench_fsspec(root, scale, pythons, results):
    """Row 8: rear:// against fsspec's zip:// on the same archive: one
    member opened and read in a fresh process, a second URL, the memory
    added; a Dask bag over dask_members members with two workers."""
    if importlib.util.find_spec("fsspec") is None:
        print("  fsspec is not installed: row left out")
        return
    rows = {}
    for count in scale["fsspec_entries"]:
        base, archive = indexed_archive(root, count)
        members = [archive_member(count // 2), archive_member(count // 3)]
        urls = {"rear://": "rear://a.zip/%s::" + base, "zip://": "zip://%s::" + archive}
        for what, url in urls.items():
            report = run_worker(sys.executable, "fsspec_read", {
                "url": url, "members": members, "expected": ["0123456789"] * 2})
            rows["%s %d" % (what, count)] = report
            print("  %s %8d entries: open + read %7.1f ms, a further URL %7.1f ms, "
                  "+%.1f MiB" % (what, count, report["first_seconds"] * 1000,
                                 report["further_seconds"] * 1000, report["added_mib"]),
                  flush=True)
        if count != scale["fsspec_entries"][-1]:
            continue
        if importlib.util.find_spec("distributed") is None:
            print("  dask distributed is not installed: no Dask rows")
            continue
        pattern, expected = scale["dask_pattern"], scale["dask_members"]
        for what, url in (("rear://", "rear://a.zip/%s::%s" % (pattern, base)),
                          ("zip://", "zip://%s::%s" % (pattern, archive))):
            try:
                report = run_worker_with_timeout(sys.executable, "dask_bag", {
                    "url": url, "members": expected}, scale["dask_timeout"])
            except subprocess.TimeoutExpired:
                report = {"seconds": None, "timeout": scale["dask_timeout"]}
            rows["dask %s %d" % (what, count)] = dict(report, members=expected)
            print("  dask bag, %d members of %d, 2 workers, %s: %s" % (
                expected, count, what, "%.1f s" % report["seconds"] if report["seconds"]
                else "did not finish in %d s" % scale["dask_timeout"]), flush=True)
    results["fsspec"] = rows


def bench_missing(root, scale, pythons, results):
    """Row 9: 'rear missing' with missing_expected names against a series
    holding all but missing_pending + 100 of them, missing_pending of
    those still pending in the inbox (so 100 are missing)."""
    expected = scale["missing_expected"]
    pending = scale["missing_pending"]
    base = fresh_dir(root, "m")
    name = "out/%07d.json"
    archived = [number for number in range(expected) if number % (expected // (pending + 100))
                or number // (expected // (pending + 100)) >= pending + 100]
    half = len(archived) // 2      # a series: a.~1~.zip and a.zip
    write_stored_archive(os.path.join(base, "a.~1~.zip"),
                         ((name % number, b"x") for number in archived[:half]))
    write_stored_archive(os.path.join(base, "a.zip"),
                         ((name % number, b"x") for number in archived[half:]))
    make_rear_inbox(base, [("a.zip/indexed", b"i")], "deflated", workers=1)
    run_worker(sys.executable, "scavenge", {"method": "rear", "base": base,
                                            "max_entries": NO_ROLLOVER})
    gone = sorted(set(range(expected)) - set(archived))
    make_rear_inbox(base, [("a.zip/" + name % number, b"x") for number in gone[:pending]],
                    "deflated", workers=1)
    command = [sys.executable, "-m", "rear", "missing", base, "a.zip", "--expect",
               "out/{0000000..%07d}.json" % (expected - 1)]
    vendored = vendored_rear(root)
    seconds, rss = best_of(command, scale["repeats"], vendored, returncodes=(3,))
    result = subprocess.run(command, capture_output=True, text=True, cwd=vendored)
    assert result.returncode == 3 and len(result.stdout.split()) == len(gone) - pending, (
        result.stderr)
    results["missing"] = {"expected": expected, "pending": pending, "seconds": seconds,
                          "rss_mib": rss}
    print("  missing: %d expected, %d archived in 2 archives, %d pending, %d missing: "
          "%.2f s, peak RSS %s MiB" % (expected, len(archived), pending, len(gone) - pending,
                                       seconds, "?" if rss is None else "%.1f" % rss),
          flush=True)


def bench_provenance(root, scale, pythons, results):
    """Row 10: a commit of 1 KiB entries and the archive it makes, with the
    writers' provenance recorded (as rear writes them, under a SLURM
    array task's environment) and without it (the field left out), three
    interleaved rounds: ratios of the best times and of the sizes."""
    rear = _import_rear()
    entries = [("a.zip/s/%05d/out-%d.txt" % (n // 1000, n), payload(1024, n))
               for n in range(scale["scavenge_small"])]
    slurm = {"SLURM_JOB_ID": "4242137", "SLURM_ARRAY_JOB_ID": "4242100",
             "SLURM_ARRAY_TASK_ID": "37"}
    times = {True: [], False: []}
    sizes = {}
    recorded = rear._this_process_provenance
    for _round in range(max(scale["repeats"], 3)):
        for with_provenance in (True, False):
            base = fresh_dir(root, "p")
            saved = {name: os.environ.get(name) for name in slurm}
            os.environ.update(slurm)
            if not with_provenance:
                rear._this_process_provenance = lambda: None
            try:
                make_rear_inbox(base, entries, "deflated")
            finally:
                rear._this_process_provenance = recorded
                for name, value in saved.items():
                    if value is None:
                        os.environ.pop(name)
                    else:
                        os.environ[name] = value
            report = run_worker(sys.executable, "scavenge", {"method": "rear", "base": base})
            times[with_provenance].append(report["seconds"])
            sizes[with_provenance] = os.path.getsize(os.path.join(base, "a.zip"))
    rows = {"seconds_with": min(times[True]), "seconds_without": min(times[False]),
            "bytes_with": sizes[True], "bytes_without": sizes[False], "entries": len(entries)}
    results["provenance"] = rows
    print("  provenance: %d entries of 1 KiB: commit %.3f s with, %.3f s without; archive "
          "%d bytes with, %d without" % (len(entries), rows["seconds_with"],
                                         rows["seconds_without"], sizes[True], sizes[False]),
          flush=True)


def bench_flush(root, scale, pythons, results):
    """One scavenger flushing a big inbox of 1 KiB entries (rear's writers
    seal a temp zip every 10,000): its peak RSS, bounded whatever the inbox
    holds, and its entries/s."""
    count = scale["flush_entries"]
    base = fresh_dir(root, "flush")
    make_rear_inbox(base, [("a.zip/f/%05d/out-%d.txt" % (n // 1000, n), payload(1024, n))
                           for n in range(count)], "stored")
    temp_zips = len([name for name in os.listdir(os.path.join(base, "inbox"))
                     if name.endswith(".zip")])
    report = run_worker(pythons["rear"], "scavenge", {"method": "rear", "base": base})
    assert report["moved"] == count, report
    results["flush"] = {"entries": count, "temp_zips": temp_zips,
                        "seconds": report["seconds"], "rss_mib": report["rss_mib"]}
    print("  flush %d entries in %d temp zips: %.1f s, %.0f entries/s, peak RSS %.0f MiB"
          % (count, temp_zips, report["seconds"], count / report["seconds"],
             report["rss_mib"]), flush=True)
    shutil.rmtree(base, ignore_errors=True)


def bench_scaleout(root, scale, pythons, results):
    """1, 2 and 4 scavengers started together on one inbox of 1 KiB
    entries, all for one archive or spread over eight; each process pinned
    to one core (round robin over the cores there are); 2 and 4 also given
    parts of the inbox (--part K/N) instead of all sharing it.  Entries/s
    of the whole from the first start to the last end, best of interleaved
    rounds (each on a fresh copy of the same inbox)."""
    count = scale["scaleout_entries"]
    cores = sorted(os.sched_getaffinity(0))
    layouts = (("one archive", 1), ("eight archives", 8))
    templates = {}
    for layout, archives in layouts:
        templates[layout] = fresh_dir(root, "scaleout-%d" % archives)
        make_rear_inbox(templates[layout], [
            ("a%d.zip/s/%05d/out-%d.txt" % (n % archives, n // 1000, n), payload(1024, n))
            for n in range(count)], "stored", workers=16)
    rows = {"cores": len(cores), "entries": count}
    runs = [(1, False), (2, False), (4, False), (2, True), (4, True)]
    for _round in range(scale["repeats"]):
        for layout, _archives in layouts:
            for processes, parts in runs:
                base = os.path.join(root, "scaleout-run")
                shutil.rmtree(base, ignore_errors=True)
                shutil.copytree(templates[layout], base, symlinks=True)
                start_at = time.time() + 2.0     # after every process imported rear
                reports = run_parallel(pythons["rear"], processes, lambda ident: {
                    "method": "rear", "base": base, "core": cores[ident % len(cores)],
                    "start_at": start_at, "part": [ident + 1, processes] if parts else None},
                    kind="scavenge")
                moved = sum(report["moved"] for report in reports)
                assert moved == count, "%d scavengers moved %d of %d" % (processes, moved, count)
                seconds = max(r["end"] for r in reports) - min(r["start"] for r in reports)
                best = rows.setdefault(layout + (", parts" if parts else ""), {})
                best[processes] = max(best.get(processes, 0), count / seconds)
    for layout, _archives in layouts:
        for processes, parts in runs:
            rate = rows[layout + (", parts" if parts else "")][processes]
            print("  %d scavenger%s, %-14s %9.0f entries/s  (%.2fx one)%s"
                  % (processes, "s" if processes > 1 else " ", layout, rate,
                     rate / rows[layout][1],
                     ", each given a part (--part K/%d)" % processes if parts else ""),
                  flush=True)
    results["scaleout"] = rows


LIVE_WRITERS = """
import resource, sys
sys.path.insert(0, sys.argv[1])
import rear
count = int(sys.argv[3])
# One descriptor per live temp zip: raise the soft limit (often 1,024) as
# far as the hard one allows, and say so if that is not enough.
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
wanted = count + 100 if hard == resource.RLIM_INFINITY else min(hard, count + 100)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
if wanted < count + 100:
    sys.exit("%d live writers need %d open files; the hard limit is %d (ulimit -Hn)"
             % (count, count + 100, hard))
writers = []
for number in range(count):
    fs = rear.rear_fs(sys.argv[2], rotation_span=3600)
    fs.__enter__()
    fs.write_bytes("a.zip/live-%d.txt" % number, b"x")
    writers.append(fs)
print("ready", flush=True)
sys.stdin.read()          # until the benchmark closes it
for fs in writers:
    fs.__exit__(None, None, None)
"""


def bench_inbox(root, scale, pythons, results):
    """What an inbox costs a pass beside its entries: an idle pass with
    many live writers (each temp zip opened and found locked), and a pass
    over many small sealed temp zips (10 entries each)."""
    rows = {}
    base = fresh_dir(root, "inbox-live")
    writers = scale["inbox_live_writers"]
    holder = subprocess.Popen([sys.executable, "-c", LIVE_WRITERS, REPO, base, str(writers)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if holder.stdout.readline() != "ready\n":
            raise RuntimeError("the live writers did not start (their error is above)")
        report = run_worker(pythons["rear"], "scavenge", {"method": "rear", "base": base})
        assert report["moved"] == 0, report
    finally:
        holder.stdin.close()
        holder.wait(600)
    rows["idle pass"] = {"temp_zips": writers, "seconds": report["seconds"]}
    print("  idle pass, %d live writers: %.3f s (%.0f us a temp zip)"
          % (writers, report["seconds"], report["seconds"] / writers * 1e6), flush=True)
    base = fresh_dir(root, "inbox-sealed")
    sealed = scale["inbox_sealed"]
    rear = _import_rear()
    for number in range(sealed):
        with rear.rear_fs(base) as fs:
            for entry in range(10):
                fs.write_bytes("a.zip/t%d/%d.txt" % (number, entry), payload(1024, entry))
    template = fresh_dir(root, "inbox-sealed-copy")
    shutil.copytree(base, template, dirs_exist_ok=True, symlinks=True)
    report = run_worker(pythons["rear"], "scavenge", {"method": "rear", "base": base})
    assert report["moved"] == 10 * sealed, report
    rows["sealed pass"] = {"temp_zips": sealed, "seconds": report["seconds"],
                           "rss_mib": report["rss_mib"]}
    print("  pass over %d sealed temp zips of 10 entries: %.1f s, %.0f entries/s "
          "(%.2f ms a temp zip), peak RSS %.0f MiB"
          % (sealed, report["seconds"], 10 * sealed / report["seconds"],
             report["seconds"] / sealed * 1e3, report["rss_mib"]), flush=True)
    if shutil.which("strace") is not None:
        for parts in (False, True):
            opens = traced_scavengers(pythons["rear"], template, root, 4, parts)
            rows["4 scavengers" + (", parts" if parts else "")] = {"temp_zip_opens": opens}
            print("  4 scavengers%s over them: %.2f opens of each temp zip"
                  % (" given a part each (--part K/4)" if parts else " sharing the inbox",
                     opens / sealed), flush=True)
    results["inbox"] = rows


def traced_scavengers(python, template, root, processes, parts):
    """Opens of temp zips (each a lookup and a lock try on a network
    filesystem's metadata server) by ``processes`` scavengers started
    together on a copy of ``template``, sharing its inbox or each given a
    part of it."""
    base = os.path.join(root, "traced-run")
    shutil.rmtree(base, ignore_errors=True)
    shutil.copytree(template, base, symlinks=True)
    settle()
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    children = []
    for ident in range(processes):
        args = {"method": "rear", "base": base,
                "part": [ident + 1, processes] if parts else None}
        command = ["strace", "-f", "-qq", "-e", "trace=open,openat", "-o",
                   os.path.join(root, "scavenger-%d.trace" % ident), python,
                   os.path.abspath(__file__), "_worker", "scavenge", json.dumps(args)]
        children.append(subprocess.Popen(command, cwd=HERE, env=env, stdout=subprocess.PIPE,
                                         text=True))
    for child in children:
        child.communicate()
        if child.returncode:
            raise RuntimeError("a traced scavenger failed (exit %d)" % child.returncode)
    inbox = '"%s/' % os.path.join(base, "inbox")
    opens = 0
    for ident in range(processes):
        with open(os.path.join(root, "scavenger-%d.trace" % ident)) as handle:
            opens += sum(1 for line in handle if inbox in line and '.zip"' in line
                         and '/.' not in line)
    left = [name for _directory, _subdirs, names in os.walk(os.path.join(base, "inbox"))
            for name in names if name.endswith(".zip")]
    assert not left, "%d temp zips left in the inbox" % len(left)
    return opens


def run_worker_with_timeout(python, kind, args, timeout):
    """run_worker, killing the worker (and its process group) past ``timeout``."""
    settle()
    command = [python, os.path.abspath(__file__), "_worker", kind, json.dumps(args)]
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, text=True,
                               cwd=HERE, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.communicate()
        raise
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command)
    return json.loads(output.strip().splitlines()[-1])


def bench_memory(root, scale, pythons, results):
    """Row 5: peak RSS writing one big output through rear_open, and scavenging it."""
    rows = {}
    for method in ("rear", "legacy"):
        if method not in pythons:
            continue
        base = fresh_dir(root, "r")
        wrote = run_worker(pythons[method], "write", {
            "method": method, "base": base, "count": 1, "size": scale["memory_size"],
            "compression": "deflated" if method == "rear" else "stored", "id": 0})
        moved = run_worker(pythons[method], "scavenge", {"method": method, "base": base})
        rows[method] = {"worker_rss_mib": wrote["rss_mib"], "scavenger_rss_mib": moved["rss_mib"]}
        print("  memory %-7s worker %7.0f MiB, scavenger %7.0f MiB" % (
            method, wrote["rss_mib"], moved["rss_mib"]), flush=True)
    results["peak_rss_mib"] = rows


# ---------------------------------------------------------------- report


def ratio(numerator, denominator):
    if numerator is None or denominator in (None, 0):
        return None
    return numerator / denominator


def summary(results):
    """(what, measured ratio or value, target, met) for every target of issue 4."""
    lines = []
    writers = results.get("writer_files_per_s", {}).get("1KiB stored 1p", {})
    for other, target in (("writestr", 0.9), ("legacy", 1.0), ("open", 2.0)):
        value = ratio(writers.get("rear"), writers.get(other))
        shown = "rear 0.1.2" if other == "legacy" else other
        lines.append(("writer 1KiB stored 1p: rear / %s" % shown, value, ">= %.1fx" % target,
                      None if value is None else value >= target))
    medium = results.get("writer_files_per_s", {}).get("64KiB stored 1p", {})
    value = ratio(medium.get("rear"), medium.get("writestr"))
    lines.append(("writer 64KiB stored 1p: rear / writestr", value, ">= 1.0x",
                  None if value is None else value >= 1.0))
    value = ratio(medium.get("rear"), medium.get("writestr_fsync"))
    lines.append(("writer 64KiB stored 1p: rear / writestr+fsync", value, "(durable both)",
                  None))
    metadata = results.get("metadata_calls_one_rotation", {})
    for key, row in sorted(metadata.items()):
        if key.startswith("rear"):
            lines.append(("metadata calls per rotation, %s" % key, row["total"], "<= 10",
                          row["total"] <= 10))
    scavenger = results.get("scavenger", {})
    for key, target in (("small deflated", 5.0), ("small stored", 1.5),
                        ("big deflated", 5.0), ("big stored", 1.5)):
        row = scavenger.get(key, {})
        value = ratio(row.get("rear", {}).get("MBps"), row.get("legacy", {}).get("MBps"))
        lines.append(("scavenger %s: rear / rear 0.1.2 MB/s" % key, value, ">= %.1fx" % target,
                      None if value is None else value >= target))
    for key in ("big stored", "big deflated"):
        row = scavenger.get(key, {})
        value = ratio(row.get("rear", {}).get("MBps"), row.get("cp_MBps"))
        lines.append(("scavenger %s: rear / cp MB/s" % key, value, ">= 0.5x",
                      None if value is None else value >= 0.5))
    append = results.get("append_seconds", {})
    sizes = sorted(append, key=int)
    if sizes:
        largest = append[sizes[-1]]
        value = ratio(largest.get("rear"), append[sizes[0]].get("rear"))
        lines.append(("append to %s / to empty, rear" % sizes[-1], value, "<= 10x",
                      None if value is None else value <= 10))
        value = ratio(largest.get("legacy"), largest.get("rear"))
        lines.append(("append to %s: rear 0.1.2 / rear time" % sizes[-1], value, ">= 3x",
                      None if value is None else value >= 3))
    read = results.get("read", {}).get("rows", {})
    start_up = read.get("python start-up", {}).get("seconds")
    cat = read.get("rear cat", {})
    if cat and "unzip -p" in read:
        value = ratio(cat["seconds"] - (start_up or 0), read["unzip -p"]["seconds"])
        lines.append(("rear cat - start-up / unzip -p", value, "<= 2x",
                      None if value is None else value <= 2))
        lines.append(("rear cat peak RSS", cat["rss_mib"], "< 50 MiB",
                      None if cat["rss_mib"] is None else cat["rss_mib"] < 50))
    in_process = read.get("open_archive + read, in-process")
    if in_process:
        lines.append(("open_archive + read, ms", in_process["seconds"] * 1000, "< 10",
                      in_process["seconds"] < 0.010))
        lines.append(("open_archive + read, added MiB", in_process["added_mib"], "< 30",
                      in_process["added_mib"] < 30))
    listing = read.get("rear ls")
    if listing and "zipinfo -1" in read:
        for mine, theirs in (("rear ls", "zipinfo -1"), ("rear ls -1", "zipinfo -1"),
                             ("rear ls", "unzip -l")):
            if mine in read and theirs in read:
                value = ratio(read[mine]["seconds"], read[theirs]["seconds"])
                lines.append(("%s / %s" % (mine, theirs), value, "<= 2x",
                              None if value is None else value <= 2))
        lines.append(("rear ls peak RSS", listing["rss_mib"], "< 50 MiB",
                      None if listing["rss_mib"] is None else listing["rss_mib"] < 50))
    campaign = results.get("campaign", {}).get("rows", {})
    if campaign:
        value = ratio(campaign["end of campaign"]["seconds"],
                      campaign["small archive"]["seconds"])
        lines.append(("commit at end of campaign / into small archive", value, "<= 10x",
                      None if value is None else value <= 10))
    fsspec_rows = results.get("fsspec", {})
    largest = max([int(key.split()[1]) for key in fsspec_rows if key.startswith("rear://")]
                  or [0])
    if largest:
        row = fsspec_rows["rear:// %d" % largest]
        lines.append(("rear:// %d entries: open + read, ms" % largest,
                      row["first_seconds"] * 1000, "< 50", row["first_seconds"] < 0.050))
        lines.append(("rear:// %d entries: added MiB" % largest, row["added_mib"], "< 50",
                      row["added_mib"] < 50))
        mine = fsspec_rows.get("dask rear:// %d" % largest, {}).get("seconds")
        theirs = fsspec_rows.get("dask zip:// %d" % largest, {})
        if mine:
            value = ratio(theirs.get("seconds") or theirs.get("timeout"), mine)
            lines.append(("dask bag: zip:// / rear:// time%s" % (
                "" if theirs.get("seconds") else " (zip:// timed out)"), value, ">= 10x",
                None if value is None else value >= 10))
    row = results.get("missing")
    if row:
        lines.append(("rear missing, %d expected: seconds" % row["expected"], row["seconds"],
                      "< 10", row["seconds"] < 10))
        lines.append(("rear missing, %d expected: peak RSS" % row["expected"], row["rss_mib"],
                      "< 100 MiB", None if row["rss_mib"] is None else row["rss_mib"] < 100))
    row = results.get("provenance")
    if row:
        value = ratio(row["seconds_with"], row["seconds_without"])
        lines.append(("commit with / without provenance, time", value, "<= 1.05x",
                      None if value is None else value <= 1.05))
        value = ratio(row["bytes_with"], row["bytes_without"])
        lines.append(("archive with / without provenance, bytes", value, "<= 1.05x",
                      None if value is None else value <= 1.05))
    memory = results.get("peak_rss_mib", {}).get("rear", {})
    for key in ("worker_rss_mib", "scavenger_rss_mib"):
        value = memory.get(key)
        lines.append(("peak RSS, rear %s" % key.split("_")[0], value, "< 100 MiB",
                      None if value is None else value < 100))
    flush = results.get("flush")
    if flush:
        lines.append(("flush of %d entries: peak RSS" % flush["entries"], flush["rss_mib"],
                      "< 64 MiB", flush["rss_mib"] < 64))
        rate = flush["entries"] / flush["seconds"]
        lines.append(("flush of %d 1 KiB entries: entries/s" % flush["entries"], rate,
                      ">= 150000", rate >= 150000))
    scaleout = results.get("scaleout")
    for label, row in sorted(results.get("sizes", {}).items()):
        value = ratio(row["rear"], row["cat"])
        lines.append(("scavenger %s stored: rear / cat MB/s" % label, value, ">= 0.5x",
                      value >= 0.5))
        lines.append(("scavenger %s stored: rear / cat+fsync MB/s" % label,
                      ratio(row["rear"], row["cat_fsync"]), "(durable both)", None))
    for layout, target in (("one archive", 1.7), ("eight archives", 1.8)):
        if scaleout:
            value = ratio(scaleout[layout][2], scaleout[layout][1])
            lines.append(("2 scavengers / 1, %s" % layout, value, ">= %.1fx" % target,
                          value >= target))
    return lines


def print_summary(lines):
    print()
    print("%-52s %12s %10s  %s" % ("target", "measured", "wanted", "met"))
    for what, value, target, met in lines:
        shown = "n/a" if value is None else ("%.2f" % value if isinstance(value, float)
                                             else str(value))
        verdict = {True: "yes", False: "NO", None: "-"}[met]
        print("%-52s %12s %10s  %s" % (what, shown, target, verdict))


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "_worker":
        kind, args = argv[1], json.loads(argv[2])
        report = {"write": worker_write, "scavenge": worker_scavenge,
                  "read": worker_read, "fsspec_read": worker_fsspec_read,
                  "dask_bag": worker_dask_bag}[kind](args)
        print(json.dumps(report))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--legacy-python", metavar="PYTHON",
                        help="python of a venv with rear==0.1.2 (and trio, filelock)")
    parser.add_argument("--workdir", default=None,
                        help="where to write (default: a temporary directory; use the "
                             "filesystem you care about)")
    parser.add_argument("--only", action="append", choices=["writers", "metadata",
                                                            "scavenger", "append", "memory",
                                                            "read", "campaign", "fsspec",
                                                            "missing", "provenance",
                                                            "flush", "scaleout",
                                                            "inbox", "sizes"])
    args = parser.parse_args(argv)
    if args.workdir is not None and not os.path.isdir(args.workdir):
        parser.error("--workdir %s is not a directory: create it on the filesystem "
                     "to measure, or leave the option out" % args.workdir)
    scale = SCALES[args.scale]
    pythons = {"rear": sys.executable, "writestr": sys.executable,
               "writestr_fsync": sys.executable, "open": sys.executable}
    if args.legacy_python:
        pythons["legacy"] = args.legacy_python
    else:
        print("no --legacy-python: rear 0.1.2 is left out of every comparison")
    root = tempfile.mkdtemp(prefix="rear-bench-", dir=args.workdir)
    results = {"scale": args.scale, "python": sys.version.split()[0],
               "legacy": bool(args.legacy_python), "workdir": root}
    rows = [("writers", bench_writers), ("metadata", bench_metadata),
            ("scavenger", bench_scavenger), ("append", bench_append),
            ("memory", bench_memory), ("read", bench_read), ("campaign", bench_campaign),
            ("fsspec", bench_fsspec), ("missing", bench_missing),
            ("provenance", bench_provenance), ("flush", bench_flush),
            ("scaleout", bench_scaleout), ("inbox", bench_inbox), ("sizes", bench_sizes)]
    try:
        for name, function in rows:
            if args.only and name not in args.only:
                continue
            print("%s:" % name, flush=True)
            function(root, scale, pythons, results)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    lines = summary(results)
    print_summary(lines)
    results["targets"] = [{"what": what, "value": value, "target": target, "met": met}
                          for what, value, target, met in lines]
    print("BENCH_JSON " + json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
