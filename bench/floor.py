"""How fast could a scavenger in Python be?  A bound, against rear itself.

Times the least per-entry work any design of rear's scavenger must do in
CPython, written as one hand-fused loop over a temp zip already in memory:
parse each central record, match its local header, split and check the
name, hash it (blake2b, as the name index does), look it up among the names
seen, pack the archive's local header and central record, copy the data,
and CRC-32 the data as the claim's check does.  No I/O, no journal, no
index file, no zip64, provenance or salvage: what is left out only makes
the real thing slower.  Then rear.scavenge() moves the same entries, in
the same process, and both are printed per entry, with the ratio.

    python3 bench/floor.py                 # 100,000 entries of 1 KiB
    python3 bench/floor.py --entries 20000
"""

import argparse
import hashlib
import io
import os
import shutil
import sys
import tempfile
import time
import zipfile
import zlib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import rear  # noqa: E402  (this checkout's, not an installed one)

# The zip records as rear.py names them (APPNOTE 4.3.7, 4.3.12, 4.3.16).
LOCAL, CENTRAL, END = rear._LOCAL_STRUCT, rear._CENTRAL_STRUCT, rear._EOCD_STRUCT
LOCAL_SIG, CENTRAL_SIG = rear._LOCAL_SIG, rear._CENTRAL_SIG


def names(count):
    return ["a.zip/w0/%05d/out-%d.txt" % (number // 1000, number) for number in range(count)]


def temp_zip(count, data):
    """A stored zip of ``count`` entries, as bytes."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as made:
        for name in names(count):
            made.writestr(name, data)
    return out.getvalue()


def fused_pass(archive):
    """The per-entry work, one loop; returns the bytes it would append."""
    end = END.unpack_from(archive, len(archive) - END.size)
    count, cd_offset = end[4], end[6]
    unpack, pack_local, pack_central = CENTRAL.unpack_from, LOCAL.pack, CENTRAL.pack
    blake2b, from_bytes, crc32 = hashlib.blake2b, int.from_bytes, zlib.crc32
    view = memoryview(archive)
    out, central, seen, known = bytearray(), bytearray(), {}, {}
    position, offset = cd_offset, 0
    for _ in range(count):
        fields = unpack(archive, position)
        if fields[0] != CENTRAL_SIG:
            raise ValueError("bad central record")
        name_length, extra_length = fields[12], fields[13]
        name = archive[position + 46:position + 46 + name_length]
        header = fields[18]
        if (archive[header:header + 4] != LOCAL_SIG
                or archive[header + 30:header + 30 + name_length] != name):
            raise ValueError("no matching local header")
        data_start = (header + 30 + name_length
                      + from_bytes(archive[header + 28:header + 30], "little"))
        directory, _slash, last = name.rpartition(b"/")
        split = known.get(directory)
        if split is None:
            dest, _slash, prefix = directory.partition(b"/")
            split = known[directory] = (dest, prefix + b"/" if prefix else b"")
        if last in (b"", b".", b"..") or b"\\" in last or b"\x00" in last:
            raise ValueError("bad name")
        member = split[1] + last
        name_hash = from_bytes(blake2b(member, digest_size=8).digest(), "little")
        if name_hash in seen:
            raise ValueError("duplicate")
        size = fields[10]
        data = view[data_start:data_start + size]
        if crc32(data) != fields[9]:
            raise ValueError("CRC")
        out += pack_local(LOCAL_SIG, 20, 0, 0, fields[6], fields[7], fields[8], fields[9],
                          size, fields[11], len(member), 0)
        out += member
        out += data
        central += pack_central(CENTRAL_SIG, 20, 3, 20, 0, 0, fields[6], fields[7],
                                fields[8], fields[9], size, fields[11], len(member), 0,
                                0, 0, 0, fields[17], offset)
        central += member
        seen[name_hash] = offset
        offset += 30 + len(member) + size
        position += 46 + name_length + extra_length + fields[14]
    return len(out) + len(central)


def rear_pass(count, data, root):
    """(CPU seconds, wall seconds) of rear.scavenge() moving the same entries."""
    base = os.path.join(root, "base")
    with rear.rear_fs(base, compression="stored") as writer:
        for name in names(count):
            writer.write_bytes(name, data)
    wall, cpu = time.perf_counter(), time.process_time()
    moved = rear.scavenge(base, flush=True).files_moved
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if moved != count:
        raise SystemExit("rear moved %d of %d entries" % (moved, count))
    return cpu, wall


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=1024, help="bytes per entry")
    args = parser.parse_args(argv)
    data = os.urandom(args.size)
    archive = temp_zip(args.entries, data)
    best = min(_timed(fused_pass, archive) for _ in range(3))
    root = tempfile.mkdtemp(prefix="rear-floor-")
    try:
        cpu, wall = rear_pass(args.entries, data, root)
    finally:
        shutil.rmtree(root)
    per_entry = 1e6 / args.entries
    print("%d entries of %d bytes" % (args.entries, args.size))
    print("  fused loop, no I/O     %6.2f us/entry  (%7.0f entries/s)"
          % (best * per_entry, args.entries / best))
    print("  rear.scavenge, CPU     %6.2f us/entry  (%.1fx the fused loop)"
          % (cpu * per_entry, cpu / best))
    print("  rear.scavenge, wall    %6.2f us/entry  (%7.0f entries/s)"
          % (wall * per_entry, args.entries / wall))
    return 0


def _timed(function, *args):
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
