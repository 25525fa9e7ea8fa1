"""rear -- Remote Archiver: safely collect many small output files into zip archives.

rear replaces ``open()`` for jobs whose many processes write many small files
(logs, per-task results) to a shared filesystem (NFS, Lustre, GPFS).  Each
worker appends its outputs to a *temporary* zip of its own in ``BASE/inbox/``;
a *scavenger* (any process, on any node, any number at once) later moves the
entries into the *final* archives ``BASE/<dest>.zip``.  One module, standard
library only, Python 3.8+: vendor this file into a job script if you like.

Guarantees
==========
1. When the ``with`` block of a file exits, its bytes have been handed to the
   operating system (one ``write()`` of header and data).  A worker killed with
   SIGKILL afterwards loses nothing acknowledged.  With ``sync="file"`` each
   file is also fsynced, so a node crash loses nothing either; with the
   default ``sync="rotation"`` a node crash can lose what was written since
   the last seal (at most ``rotation_span`` seconds of output).
2. A final archive is always a valid zip: it has either its old content or the
   old plus the new entries, whatever instant a scavenger dies at.
3. A temporary zip is deleted only after every archive it feeds has committed
   and been fsynced.  Re-running a scavenger after any crash never duplicates
   an entry and never drops one.
4. A temporary zip whose writer died (its fcntl lock is free, it was never
   sealed) is *salvaged*: every complete entry is recovered from its local
   headers and CRC-checked; a torn last entry is never ingested.  The bytes
   of a sealed temp zip's entries up to 64 KiB compressed are checked when
   claimed, against a CRC-32 its writer recorded in the sidecar; larger
   entries are copied raw (``verify`` checks them).

On-disk layout
==============
::

    BASE/inbox/<host>-<pid>-<ns>-<random>.zip    temporary zip, one writer
    BASE/inbox/<same stem>.json                  its manifest sidecar
    BASE/inbox/hosts/<host>/<stem>.zip, .json    the same, in a sharded inbox
                                                 (shard_inbox=True): a directory
                                                 per host, made by its first writer
    BASE/inbox/archives/<key>.lock               per-archive lock file; holds the
                                                 holder's JSON {host, pid, since}
    BASE/inbox/archives/<key>.takeover           orders takeovers of that lock
    BASE/inbox/archives/<key>.index              name index of the archive (a cache)
    BASE/inbox/archives/<key>.journal-new        a journal being written
    BASE/inbox/archives/<key>.journal            rollback journal of a commit
    BASE/inbox/archives/<key>.commit             the same journal, committed
    BASE/<subdir>/<name>.zip                     final archives
    BASE/<subdir>/<name>.~1~.zip, .~2~.zip, ...  rolled over at max_size or max_entries
    BASE/inbox/.<stem>.zip, .<name>.<hex>.tmp    being created; a crash may leave
                                                 them, scavengers remove them later

Every directory rear creates is made durable (its parent is fsynced), so a
power loss cannot take a fsynced file away with its new directory.
``<key>`` is the first 40 hex digits of the SHA-256 of the archive's path
relative to BASE (``sub/name.zip``): short and flat whatever the path.

**Temp zip.**  A plain zip: local header and data of each entry, appended
in order, no data descriptors; once sealed, a central directory and end
records.  Entry names are the full ``sub/name.zip/member`` paths, so a temp
zip describes itself even without its sidecar.  A local header whose mode
is not 0644 (a picked-up 0755 file, a symlink, a directory) also holds an
ASi Unix extra field (0x756E) with that mode, for salvage, which has no
central directory to read it from.

**Entries**, in temp zips and final archives alike: the Info-ZIP
extended-timestamp extra field (0x5455, flags 1, modification time in Unix
seconds, unsigned 32 bits) in local and central headers where the time fits
(1970-2106), and the MS-DOS time (local, clamped to 1980-2107); the mode in
the external attributes (version made by: Unix).  A directory is a
``name/`` entry (``S_IFDIR``, MS-DOS directory bit), a symlink an entry
with ``S_IFLNK`` whose data is the link target, as Info-ZIP ``zip -y``
stores them.  Local headers only also hold rear's provenance field
(0x7072, "rp"): a version byte (1), then (tag, length, ASCII value) items
for host, pid and, where set, the SLURM job, array job, array task and
restart count, PBS, LSF and Flux job ids and the MPI rank
(``_PROVENANCE_TAGS``); read only when asked (``rear ls --versions``).
The scavenger copies data raw and writes headers anew: the UT field, the
mode and the provenance carry over, the ASi field does not.

**Sidecar** (``<stem>.json``), JSON, always replaced whole (write temp,
fsync, ``os.replace``, fsync the directory)::

    {"format": "rear-manifest", "version": 1,
     "host": str, "pid": int, "created": unix time,
     "state": "open" | "sealed",
     "entries": int, "bytes": int,     # exact once sealed
     "done": [dest, ...],              # archives already committed to
     "rotation_span": seconds,         # the writer's (not in rear 1.1's)
     "sealed": unix time,              # from here on, sealed sidecars only
     "small_crc": int, "small_limit": int,
     "medium_crc": int, "medium_limit": int}   # not in rear 1.4's

``small_crc`` is the CRC-32 of the bytes (local header and data), in file
order, of the entries up to ``small_limit`` bytes compressed;
``medium_crc`` the same for the entries above that up to ``medium_limit``,
except the data of stored ones, which a scavenger checks against their
own CRC-32.  A scavenger checks these instead of decompressing each
entry up to 64 KiB, and checks each such entry no run covers (rear 1.4's
writers: ``small_limit`` 64 KiB, no ``medium_crc``).  An unsealed temp zip of
a dead writer is salvaged after 2 x the longer of the writer's
``rotation_span`` and the scavenger's.

**Journal** (``<key>.journal-new`` while written, then ``.journal``, then
``.commit``): everything a rollback needs, little-endian::

    magic      8 bytes  b"REARJNL2"
    length     u32      of the JSON header
    header     JSON     {"dest": "sub/name.zip", "archive": absolute path,
                         "created": bool (the commit creates the archive),
                         "old_size": int, "old_cd_offset": int,
                         "temps": [{"zip": path in inbox/, "finish": bool}, ...],
                         "tail_size": int}
    crc        u32      CRC-32 of the JSON header
    old tail   tail_size bytes: the archive's bytes from old_cd_offset to
               old_size (its old central directory and end records)

``temps`` lists the temp zips feeding the commit; ``finish`` is true for
those this archive is the last destination of (deleted in step 7; the
others get ``dest`` added to their sidecar's ``done``).

**Name index** (``<key>.index``), a cache of which names an archive holds,
little-endian::

    header  64 bytes: magic b"REARIDX1", slots u64, used u64,
            stamp (archive size u64, central directory offset u64 and
            size u64, entry count u64, CRC-32 u32 of the archive's last
            4096 bytes), CRC-32 u32 of the header bytes before it
    slots   slots x 16 bytes: (name hash u64, record offset u64)

It is an open-addressing hash table (linear probing, load at most 1/2,
``slots`` a power of two, at least 1024).  The name hash is the 64-bit
BLAKE2b of the name's UTF-8 bytes (0 marks an empty slot, so a hash of 0
is stored as 1); the record offset is where the name's record starts
within the central directory.  An index whose stamp does not match the
archive is rebuilt, so losing or damaging it costs time, never an entry.

Writer steps
============
1. Create the temp zip under a hidden name with ``O_EXCL`` (in inbox/, or in
   its host's directory of a sharded inbox, made with its parent fsynced
   if it is missing), take an exclusive
   ``lockf`` lock on it (held for the zip's whole life: it is the liveness
   signal), and rename it into view.  Scavengers never list hidden names, so
   a visible temp zip with a free lock always belongs to a dead writer.
2. Write the sidecar ``open`` (atomically, directory fsynced).
3. Per file: compress and CRC it off the lock, then append local header and
   data in one ``write()``.  A failed write is truncated away before the error
   reaches the caller, so no torn entry ever precedes an acknowledged one.
   Every 8 MiB appended, a background ``fdatasync`` starts writing the temp
   zip back, so that step 4's fsync waits only for the tail.
4. Seal (every ``rotation_span`` seconds, even when idle, on ``rear_fs`` exit
   and at interpreter exit): wait for that writeback (its error, if any, is
   the seal's), write the central directory, fsync, replace the sidecar with
   ``sealed``, then close (which releases the lock).

Scavenger commit (per final archive; compare SQLite's rollback journal)
=========================================================================
1. Lock ``<key>.lock`` (exclusive; polled, so the wait is reported after
   10 s and given up after 600 s; held only if the name still means the
   file locked) and record the holder in it.  If a ``.journal`` is there, a
   scavenger died mid-commit: roll it back.  If a ``.commit`` is there,
   finish it (step 7 and 8).
2. Read the archive's end records through the locked descriptor, once this
   client's view agrees with the server's (network filesystems cache sizes).
   Roll over to ``name.~N~.zip`` (N one more than the series' last) if it
   reached ``max_size`` or ``max_entries`` (or step 3 found it full for the
   next entry): hard-linked there, which fails
   rather than replaces where that name exists (a stale negative lookup
   cache cannot make it overwrite), then unlinked; a crash between the two
   leaves one file under both names, which the next commit finishes and
   readers count once.  Its name index is renamed with it.
3. Decide what to add, looking names up in the name indexes of the whole
   series (``name.zip`` and every ``name.~N~.zip``; no central directory is
   parsed): same name, CRC and size already present anywhere is skipped
   (idempotence); same name with other content is added as ``name.~N~``.
   Temp zips are taken in the order their writers started them, so the
   plain name holds the first copy written, which readers of pending
   files answer with too.  Entries that would take the archive past
   ``max_size`` or ``max_entries`` are left to a commit of their own into
   the next archive of the series (steps 2-8 again, under the same lock);
   only the last of these commits finishes the temp zips.  The caps are
   never exceeded, unless a single entry alone exceeds ``max_size``: it
   gets an archive of its own.
4. Write the journal as ``.journal-new``: the archive's old size and its old
   tail (central directory and end records, copied in the kernel); fsync it,
   rename it to ``.journal``, fsync the directory.  A ``.journal`` is thus
   always complete.
5. Overwrite the old tail with the new entries, copied raw (no recompression,
   ``copy_file_range`` where possible), then the old central directory copied
   back verbatim from the journal, the new records and the end records
   (zip64 where needed); fsync.  Every 8 MiB copied, the kernel is asked
   to start writing back (a hint), so the fsync waits for the tail.  What
   does not depend on the archive (each
   entry's name hash, local header and central record but for its offset)
   was worked out when its temp zip was claimed, before step 1, so that
   scavengers committing to one archive hold its lock for less.
6. Rename ``.journal`` to ``.commit`` and fsync the directory.  This rename is
   the commit point.
7. Add the new names to the index.  For every temp zip in the batch: delete
   it and its sidecar if this was the last archive it fed, else record the
   archive in its sidecar's ``done``.
8. Delete ``.commit``, fsync the directory, release the lock.

Recovery: a ``.journal-new`` was never complete, so the archive was never
touched: delete it.  A ``.journal``: write the old tail back at the old
central-directory offset, truncate to the old size, fsync, delete it (an
archive the commit created is deleted instead).  A ``.commit``: redo steps 7
and 8.  ``scavenge`` does this on its own before touching an archive;
``python -m rear recover BASE`` does it for everything at once.

A node crash: its writers' temp zips stay locked for as long as the
filesystem keeps the dead client's session (GlusterFS: until the connection
drops; CephFS: the MDS session timeout, about a minute; MooseFS:
``SESSION_SUSTAIN_TIME``, a day by default), and are then salvaged like any
dead writer's.  Where that is too long, ``rear scavenge --flush --dead-host
NODE BASE`` takes NODE's temp zips over without their locks once they have
been still for 10 s, and sealed temp zips whoever holds them (a dead
scavenger's claims).  An archive lock whose recorded holder is on NODE is
taken over too, one taker at a time (under ``<key>.takeover``), once the
archive, its journal and the lock file have been still for 10 s: a new
lock file, locked, replaces the old one, which only the dead session still
holds; step 1 then rolls the dead commit back or finishes it.  Name only a
node that is down: a live writer's later files would go to a temp zip
already deleted, a live scavenger's commit would be rolled back under it.

Readers (open_archive, read_bytes, rear cat/ls) take an archive's lock
shared while they look at its central directory, so they never see a
commit half-way; member data, which commits never rewrite, is read
without it, and every read is checked against the member's CRC-32.

Usage
=====
::

    import rear
    with rear.rear_fs("/scratch/run42"):                 # in each worker
        with rear.rear_open("logs.zip/task-17/out.txt", "w") as f:
            f.write("done\\n")

    with rear.scavengerd("/scratch/run42"):              # in the main process
        run_the_jobs()

    $ python -m rear scavenge /scratch/run42 --flush     # or from the shell

    rear.read_bytes("/scratch/run42", "logs.zip/task-17/out.txt")   # any time

Sections of this file
=====================
In this order, each under a banner comment, each using only names defined
above it (late binding through methods, such as a forked child's reset of
every rear_fs, is the only way back up):

constants, errors, process-wide state, platform, network filesystems,
durable I/O, zip format, zip reading, structure check, paths, sidecar,
settings, temp zip, writer, archive files, name index, scavenger results,
journal, recovery, commit, claim, scavenger, member streams, reading,
fsspec filesystem, inspection, accounting, CLI, CLI parser.

Names say what a function does: ``_pack_*`` builds bytes, ``_parse_*``
and ``_iter_*`` read them, ``_is_*``/``_has_*`` answer yes or no, and
``*_error`` returns an exception for the caller to raise.
"""

import argparse
import array
import atexit
import codecs
import collections
import contextlib
import contextvars
import dataclasses
import errno
import gc
import hashlib
import io
import itertools
import json
import logging
import math
import mmap
import os
import re
import secrets
import select
import shutil
import signal
import socket
import stat
import struct
import sys
import tempfile
import threading
import time
import warnings
import weakref
import zipfile
import zlib

__version__ = "1.5.0"

__all__ = [
    "rear_fs",
    "rear_open",
    "rear_pickup",
    "scavenge",
    "scavengerd",
    "recover",
    "verify",
    "missing",
    "Missing",
    "status",
    "split_path",
    "ScavengeStats",
    "VerifyReport",
    "BaseStatus",
    "TempZipStatus",
    "ArchiveStatus",
    "open_archive",
    "read_bytes",
    "register_fsspec",
    "ArchiveReader",
    "MemberInfo",
    "RearError",
    "ArchiveError",
    "TempZipError",
    "LockingUnsupportedError",
    "PathError",
    "DEFAULT_MAX_SIZE",
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_ROTATION_SPAN",
    "main",
]

_log = logging.getLogger("rear")
_log.addHandler(logging.NullHandler())   # a library never prints by itself

# ---------------------------------------------------------------- constants

#: Names tried after the series' last when rolling over, in case a client's
#: listing missed rolled-over archives other clients made.
_ROLLOVER_ATTEMPTS = 1000
#: Seconds between rotations of a worker's temp zip (rear 0.1 used 5 minutes).
DEFAULT_ROTATION_SPAN = 300.0
#: A final archive never grows past this size: a commit that would is
#: continued in the next archive of the series, name.~N~.zip.
DEFAULT_MAX_SIZE = 50 * 1024 ** 3
#: Nor past this many entries: each commit
#: copies the old central directory twice (about 100 bytes per entry), so
#: this bounds what a commit costs at any point of a campaign (measured by
#: bench/bench.py; see README "Performance").
DEFAULT_MAX_ENTRIES = 250000
#: Longest rotation span accepted, seconds (a week): dead writers' temp zips
#: wait twice the span, and a typo such as 1e9 would keep them forever.
_MAX_ROTATION_SPAN = 7 * 24 * 3600
#: An unsealed temp zip with a free lock is salvaged after this many spans.
_GRACE_SPANS = 2.0
#: A temp zip of a host declared down (``dead_hosts``) is taken over only
#: once it has not changed for this long: one that just changed has a live
#: writer, whatever the operator believes.
_DEAD_HOST_QUIET = 10.0
#: 'scavenge --flush' waits for the temp zips other scavengers are taking
#: for as long as their number keeps changing, this long without a change
#: at most, looking every _FLUSH_POLL seconds.
_FLUSH_PATIENCE = 60.0
_FLUSH_POLL = 0.2
#: A scavenger waits for an archive lock another process holds for this
#: long at most, saying who holds it after _ARCHIVE_LOCK_REPORT seconds;
#: then the archive is reported and its entries wait for the next pass.  A
#: commit of 50 GB of new entries takes about two minutes here.
_ARCHIVE_LOCK_WAIT = 600.0
_ARCHIVE_LOCK_REPORT = 10.0
#: Bytes of the holder record at the start of a lock file (JSON, padded).
_HOLDER_RECORD_SIZE = 256
#: rear_open keeps a file in memory up to this size, then spills to TMPDIR.
_SPOOL_MEMORY_LIMIT = 16 * 1024 ** 2
#: A temp zip is also rotated when it grows past this size.
_TEMP_ZIP_MAX_BYTES = 2 * 1024 ** 3
#: ... or holds this many entries: a scavenger holds a claimed temp zip's
#: entries in memory (about 1.5 KiB each) until they are committed, so this
#: and _BATCH_ENTRIES bound its memory whatever the writers do (a writer of
#: 50,000 small files a second used to hand it 100 MiB in one temp zip).
#: Costs a fast writer one more seal (a create and two fsyncs) per 10,000
#: files.
_TEMP_ZIP_MAX_ENTRIES = 10000
#: Chunk size of every streaming copy, compression and CRC loop; also the
#: most one decompression step produces, whatever the compressed bytes.
_CHUNK = 1024 ** 2
#: Input step for a decompressor that takes no output limit (zipfile's LZMA
#: wrapper): LZMA expands at most about 7000 to 1, so 4 KiB stay under 32 MiB.
_UNLIMITED_DECOMPRESSOR_INPUT = 4096
#: Entries smaller than this are gathered in one buffer when appended.
_SMALL_ENTRY = 64 * 1024
#: A sealed sidecar's ``small_crc`` covers the entries up to this size
#: compressed, header and data; its ``medium_crc`` those above it up to
#: _SMALL_ENTRY, except the data of stored ones, which their own CRC-32
#: covers.  A writer CRCs each byte once per run: covering a 64 KiB stored
#: entry's data in a run as well as in its CRC-32 was a quarter of the
#: writer's CPU for such files; below this size the second pass costs
#: less than the per-entry check a scavenger would need instead.
_SMALL_CRC_LIMIT = 4 * 1024
#: A writer starts writing its temp zip back to disk in the background each
#: time this much has been appended since the last start, so the fsync that
#: seals it waits only for the tail: without it a writer of 64 KiB files
#: spent a third of its time in that fsync, every other writer of the
#: process blocked behind the lock meanwhile.  A commit does the same with
#: what it appends to an archive (_start_writeback).
_WRITEBACK_BYTES = 8 * 1024 ** 2
#: Directories whose validated split a writer remembers, at most.
_KNOWN_DIRECTORIES = 4096
#: How many temp zips one scavenger batch claims at most.
_BATCH_TEMP_ZIPS = 256
#: A batch stops claiming once it holds this many entries: each costs about
#: 1.5 KiB of Python objects until its commit, so a batch of 256 temp zips
#: of 10,000 entries each took 3.6 GiB.  With _TEMP_ZIP_MAX_ENTRIES a batch
#: holds fewer than twice this: about 30 MiB, and still thousands of
#: entries per commit to one archive.
_BATCH_ENTRIES = 10000
#: How long a rotation timer sleeps at most between checks, seconds.
_TIMER_MAX_SLEEP = 1.0
#: The CLI shows a progress line once a pass has taken this long, seconds,
#: and updates it at most this often.
_PROGRESS_DELAY = 2.0
_PROGRESS_INTERVAL = 0.5

_MANIFEST_FORMAT = "rear-manifest"
_MANIFEST_VERSION = 1
_STATE_OPEN = "open"
_STATE_SEALED = "sealed"

_INBOX = "inbox"
_ARCHIVES_DIR = "archives"   # inside inbox/: lock files and journals
#: inside inbox/: one directory per host, ``hosts/<host>/``, holding its
#: writers' temp zips when the inbox is sharded (rear_fs(shard_inbox=True),
#: $REAR_SHARD_INBOX=1): creates spread over many directories instead of
#: all in one, which a metadata server serializes.
_SHARDS_DIR = "hosts"
_TEMP_SUFFIX = ".zip"
#: A rolled-over archive of ``stem.zip`` is ``stem.~N~.zip``, N = 1, 2, ...
#: (the mark GNU tools give numbered backups).  Writers may not name an
#: archive so, which is what keeps a user's ``run-2024.zip`` out of
#: ``run.zip``'s series, and a rolled-over archive out of a writer's way.
_ROLLED_MARK = ".~"
_ROLLED_END = "~"
_SIDECAR_SUFFIX = ".json"
_JOURNAL_SUFFIX = ".journal"
_JOURNAL_NEW_SUFFIX = ".journal-new"   # being written; renamed once complete
_COMMIT_SUFFIX = ".commit"
_LOCK_SUFFIX = ".lock"
_TAKEOVER_SUFFIX = ".takeover"
_INDEX_SUFFIX = ".index"
_PENDING_JOURNAL_SUFFIXES = (_JOURNAL_SUFFIX, _JOURNAL_NEW_SUFFIX, _COMMIT_SUFFIX)
_JOURNAL_MAGIC = b"REARJNL2"
_JOURNAL_HEAD = struct.Struct("<8sL")    # magic, length of the JSON header
_JOURNAL_HEAD_CRC = struct.Struct("<L")  # CRC-32 of the JSON header; the old tail follows
_INDEX_MAGIC = b"REARIDX1"
#: magic, slots, slots used; the archive state the index describes (size,
#: central directory offset and size, entry count, CRC-32 of its last
#: _INDEX_STAMP_BYTES); CRC-32 of all the fields before.
_INDEX_HEADER = struct.Struct("<8s2Q4QLL")
_INDEX_HEADER_MAGIC = 0
_INDEX_HEADER_SLOTS = 1
_INDEX_HEADER_USED = 2
_INDEX_HEADER_STAMP = slice(3, 8)      # size, cd offset, cd size, count, CRC of the end
_INDEX_HEADER_CRC = 8
_INDEX_SLOT = struct.Struct("<2Q")       # name hash (0: empty), record offset in the CD
_SLOT_HASH = struct.Struct("<Q")         # its first field alone
_INDEX_STAMP_BYTES = 4096
_INDEX_MIN_SLOTS = 1024                  # a power of two
_INDEX_PROBE_SLOTS = 8                   # slots read per pread when probing
#: Bytes of the table one pass of _NameIndex.resolve reads at a time.
_INDEX_WINDOW = 1024 ** 2
#: Page size, and how many pages read in sequence cost as much as one read
#: at random (index resolve; 67 us a random read against 1 GB/s here).
_PAGE_SIZE = 4096
_RANDOM_READ_PAGES = 16
#: Bytes read past a central record's fixed part in one go: most names fit.
_TYPICAL_NAME = 128
#: Bytes read past a local header's name in one go: the extra fields rear's
#: writer puts there (UT, ASi mode, provenance) fit.
_TYPICAL_LOCAL_EXTRA = 128
#: Distinct extra fields whose parsed values one pass over a zip's headers
#: keeps (a writer's entries share a few: the UT field holds whole
#: seconds); past it the memo starts again, so its memory stays bounded.
_EXTRA_MEMO_MAX = 4096

# Zip format, PKWARE APPNOTE.TXT 6.3.x; field layouts as in CPython's zipfile.
_LOCAL_SIG = b"PK\x03\x04"                      # 4.3.7 local file header
_LOCAL_STRUCT = struct.Struct("<4s2B4HL2L2H")
_LH_FLAG_BITS = 3
_LH_COMPRESS_TYPE = 4
_LH_CRC = 7
_LH_COMPRESSED_SIZE = 8
_LH_UNCOMPRESSED_SIZE = 9
_LH_FILENAME_LENGTH = 10
_LH_EXTRA_FIELD_LENGTH = 11
_LOCAL_NAME_EXTRA = struct.Struct("<2H")        # its last two fields, at byte 26
_LOCAL_NAME_EXTRA_OFFSET = 26
_CENTRAL_SIG = b"PK\x01\x02"                    # 4.3.12 central directory
_CENTRAL_STRUCT = struct.Struct("<4s4B4HL2L5H2L")
# Indexes of _CENTRAL_STRUCT's fields, named as in CPython's zipfile.
_CD_SIGNATURE = 0
_CD_FLAG_BITS = 5
_CD_COMPRESS_TYPE = 6
_CD_TIME = 7
_CD_DATE = 8
_CD_CRC = 9
_CD_COMPRESSED_SIZE = 10
_CD_UNCOMPRESSED_SIZE = 11
_CD_FILENAME_LENGTH = 12
_CD_EXTRA_FIELD_LENGTH = 13
_CD_COMMENT_LENGTH = 14
_CD_EXTERNAL_FILE_ATTRIBUTES = 17
_CD_LOCAL_HEADER_OFFSET = 18
#: Where that last field of the fixed part starts, in bytes, and its format.
_CD_LOCAL_HEADER_OFFSET_AT = _CENTRAL_STRUCT.size - 4
_CD_LOCAL_HEADER_OFFSET_STRUCT = struct.Struct("<L")
_EOCD_SIG = b"PK\x05\x06"                       # 4.3.16 end of central dir
_EOCD_STRUCT = struct.Struct("<4s4H2LH")
_EOCD_DISK_NUMBER = 1
_EOCD_CD_DISK = 2
_EOCD_ENTRIES_THIS_DISK = 3
_EOCD_ENTRIES_TOTAL = 4
_EOCD_CD_SIZE = 5
_EOCD_CD_OFFSET = 6
_EOCD_COMMENT_LENGTH = 7
_ZIP64_EOCD_SIG = b"PK\x06\x06"                 # 4.3.14 zip64 end record
_ZIP64_EOCD_STRUCT = struct.Struct("<4sQ2H2L4Q")
_ZIP64_EOCD_DISK_NUMBER = 4
_ZIP64_EOCD_CD_DISK = 5
_ZIP64_EOCD_ENTRIES_THIS_DISK = 6
_ZIP64_EOCD_ENTRIES_TOTAL = 7
_ZIP64_EOCD_CD_SIZE = 8
_ZIP64_EOCD_CD_OFFSET = 9
_ZIP64_LOCATOR_SIG = b"PK\x06\x07"              # 4.3.15 zip64 locator
_ZIP64_LOCATOR_STRUCT = struct.Struct("<4sLQL")
_ZIP64_LOCATOR_EOCD_OFFSET = 2
_EXTRA_HEADER = struct.Struct("<HH")            # 4.5.1 id, size
_ZIP64_EXTRA_ID = 0x0001                        # 4.5.3
# Info-ZIP's extended timestamp ("UT", 4.6.x; Info-ZIP extrafld.txt): flags
# (bit 0: the modification time follows), then that time in Unix seconds,
# UTC, unsigned 32 bits (as Info-ZIP unzip and libarchive read it).  rear
# writes only the modification time, so local and central fields are alike.
_EXTENDED_TIMESTAMP_ID = 0x5455
_EXTENDED_TIMESTAMP = struct.Struct("<HHBL")
_UT_MTIME = 0x01
_UT_AS_REAR_WRITES_IT = struct.pack("<HHB", _EXTENDED_TIMESTAMP_ID, 5, _UT_MTIME)
# ASi Unix extra field (extrafld.txt): CRC-32 of what follows, mode, size
# of a link name (0: none here), uid, gid.  Written only in the local
# headers of temp zips whose entry's mode is not the default, so that a
# salvage, which has no central directory, still knows a symlink or a
# directory or a 0755 file; the scavenger turns it into the archive's
# external attributes and does not copy it.
_ASI_UNIX_ID = 0x756E
_ASI_UNIX = struct.Struct("<HHLHLHH")
_ASI_UNIX_CRC_OFFSET = 4                     # the CRC covers the bytes after it
# rear's provenance field ("rp", not assigned in APPNOTE 4.6): who wrote
# the entry, in the local headers of temp zips and final archives only (a
# listing never reads it; other readers skip a field they do not know).
# Body: a version byte, then (tag, length, ASCII value) items, each
# present only where known.  About 40 bytes under SLURM.
_PROVENANCE_ID = 0x7072
_PROVENANCE_ID_BYTES = struct.pack("<H", _PROVENANCE_ID)
_PROVENANCE_VERSION = 1
_PROVENANCE_ITEM = struct.Struct("<BB")
#: tag: (key, environment variables it is read from, first set wins)
_PROVENANCE_TAGS = {
    1: ("host", ()),
    2: ("pid", ()),
    3: ("slurm_job", ("SLURM_JOB_ID",)),
    4: ("slurm_array_job", ("SLURM_ARRAY_JOB_ID",)),
    5: ("slurm_array_task", ("SLURM_ARRAY_TASK_ID",)),
    6: ("slurm_restart", ("SLURM_RESTART_COUNT",)),
    7: ("pbs_job", ("PBS_JOBID",)),
    8: ("pbs_array_index", ("PBS_ARRAY_INDEX", "PBS_ARRAYID")),
    9: ("lsf_job", ("LSB_JOBID",)),
    10: ("lsf_array_index", ("LSB_JOBINDEX",)),
    11: ("flux_job", ("FLUX_JOB_ID",)),
    12: ("mpi_rank", ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK")),
}
# Bounds of what an entry and the end records take in a final archive, so
# that a commit never takes an archive past max_size: local header and
# central record, each with rear's UT field and the largest zip64 field
# (4.5.3: both sizes in a local header; sizes and offset in a central
# record); the zip64 end record and locator a commit may add.
_HEADERS_PER_ENTRY_MAX = (_LOCAL_STRUCT.size + _CENTRAL_STRUCT.size
                          + 2 * _EXTENDED_TIMESTAMP.size
                          + 2 * _EXTRA_HEADER.size + 16 + 24)
_END_RECORDS_MAX = _ZIP64_EOCD_STRUCT.size + _ZIP64_LOCATOR_STRUCT.size + _EOCD_STRUCT.size
#: Longest ".~N~" suffix counted for a renamed conflict in those bounds.
_CONFLICT_SUFFIX_MAX = 12
#: Conflicts a commit names one by one in its warnings; the rest are summed
#: up in one (a rerun campaign renamed thousands, a line each).
_CONFLICT_WARNINGS = 10
_MAX_COMMENT = 0xFFFF
_MAX_NAME = 0xFFFF
#: Longest name component, UTF-8 bytes: NAME_MAX of Linux filesystems, past
#: which unzip cannot extract a member ("File name too long").
_MAX_COMPONENT = 255
_U16_LIMIT = 0xFFFF          # a 16-bit count this large means "see zip64"
_U32_LIMIT = 0xFFFFFFFF      # a 32-bit size/offset this large means "see zip64"
_FLAG_LZMA_EOS = 0x0002      # 4.4.4 bit 1: LZMA stream has an end marker
_FLAG_DATA_DESCRIPTOR = 0x0008  # bit 3: sizes follow the data
_FLAG_UTF8 = 0x0800          # bit 11: name is UTF-8
_FLAG_ENCRYPTED = 0x0001     # bit 0
# Bits whose disagreement between a local header and its central record
# changes how the entry is read: encryption, where the sizes are, the
# name's encoding.
_FLAGS_READ_BY = _FLAG_ENCRYPTED | _FLAG_DATA_DESCRIPTOR | _FLAG_UTF8
_FLAG_COMPRESSION_OPTIONS = 0x0006   # bits 1-2: deflate level, LZMA end marker
# Bits rear understands; any other (encryption, patched data, masked
# headers...) makes an entry something rear will not copy into an archive,
# where readers would refuse it.  Found by fuzzing.
_FLAGS_UNDERSTOOD = _FLAG_COMPRESSION_OPTIONS | _FLAG_DATA_DESCRIPTOR | _FLAG_UTF8
_VERSION_DEFAULT = 20        # 4.4.3.2: deflate, directories
_VERSION_ZIP64 = 45
_VERSION_BZIP2 = 46
_VERSION_LZMA = 63
_SYSTEM_UNIX = 3             # 4.4.2.2: external attributes hold st_mode
_DEFAULT_FILE_MODE = 0o100644    # rear_open's files: -rw-r--r--
_MSDOS_DIRECTORY = 0x10          # 4.4.15: low byte of external attributes
_DOS_EPOCH_YEAR = 1980           # 4.4.6: the DOS date counts years from 1980
_DOS_LAST_YEAR = 2107            # ... in 7 bits
_DOS_FIRST = (0, (1 << 5) | 1)                                  # 1980-01-01 00:00:00
_DOS_LAST = ((23 << 11) | (59 << 5) | 29,
             ((_DOS_LAST_YEAR - _DOS_EPOCH_YEAR) << 9) | (12 << 5) | 31)  # 2107-12-31 23:59:58
_NS_PER_SECOND = 10 ** 9

_COMPRESSION = {
    "stored": zipfile.ZIP_STORED,
    "deflated": zipfile.ZIP_DEFLATED,
    "bzip2": zipfile.ZIP_BZIP2,
    "lzma": zipfile.ZIP_LZMA,
}
_ZSTANDARD = getattr(zipfile, "ZIP_ZSTANDARD", None)   # Python 3.14+
if _ZSTANDARD is not None:
    _COMPRESSION["zstd"] = _ZSTANDARD
#: The methods rear copies (and this Python can check): a set, because a
#: scavenger tests every entry it claims against it.
_COMPRESSION_METHODS = frozenset(_COMPRESSION.values())
_EXTRACT_VERSION = {
    zipfile.ZIP_BZIP2: _VERSION_BZIP2,
    zipfile.ZIP_LZMA: _VERSION_LZMA,
}

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
#: Directories whose owner root remembers (_directory_owner): inbox/ and
#: the directories of the archives a scavenger commits to.
_OWNER_CACHE_SIZE = 1024
# The retry policies (_Backoff, in "platform") are named with the retry
# loops that use them: _ESTALE_RETRY, _STALE_VIEW_RETRY, _LOCK_POLL,
# _UNPARSED_RETRY.

# ---------------------------------------------------------------- errors


class RearError(Exception):
    """Base class of rear's errors; ``path`` names the file concerned."""

    def __init__(self, message, path=None):
        super().__init__(message)
        self.path = path


class ArchiveError(RearError):
    """A final archive cannot be read or appended to."""


class TempZipError(RearError):
    """A temporary zip or its sidecar is damaged; it is left in place."""


class LockingUnsupportedError(RearError):
    """The platform or filesystem refuses fcntl locks."""


class PathError(RearError, ValueError):
    """An archive path given to rear_open/rear_pickup is not acceptable."""


def _counted(number, noun):
    """For messages: '1 archive', '2 archives', '1 entry', '0 entries'."""
    if number == 1:
        return "1 " + noun
    return "%d %s" % (number, noun[:-1] + "ies" if noun.endswith("y") else noun + "s")


def _remedy(err, place):
    """What to do about an OSError at ``place`` ("" if nothing general):
    for a message that must say the way out, not only the errno."""
    if getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return "free space (or quota) on the filesystem of %s" % place
    if getattr(err, "errno", None) in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "make %s writable by this user (or run as its owner)" % place
    return ""


# ---------------------------------------------------------------- process-wide state
#
# Everything rear keeps per process, in one place: a forked child resets it
# all (_after_fork_in_child), and nothing else is global.

# Temp zips this process has open for writing.  POSIX locks belong to the
# process, so an in-process scavenger would "get" their locks and, by closing
# its descriptor, silently drop the writer's lock: it must skip them instead.
_OWN_TEMP_ZIPS = set()
_OWN_TEMP_ZIPS_LOCK = threading.Lock()
# The rear_fs the caller's context entered last: asyncio and trio tasks each
# copy their context, so two tasks (or threads) inside their own rear_fs
# never write into each other's base.
_CURRENT_FS = contextvars.ContextVar("rear_fs", default=None)
# The stack of rear_fs instances entered in this process, innermost last:
# what rear_open uses in a thread that entered none itself (a worker
# thread of a pool started inside the main thread's 'with rear_fs').
_ACTIVE = []
_ACTIVE_LOCK = threading.Lock()
# Every rear_fs alive in this process, to reset after fork.
_LIVE = weakref.WeakSet()
# Those with an open temp zip, held strongly so that one the caller dropped
# without closing is still sealed by its timer or at exit.
_UNSEALED = set()
# POSIX locks cannot keep two threads of one process apart: scavenger passes
# (and status/verify, which probe locks) are serialized by this.
_SCAVENGE_LOCK = threading.RLock()
# The pid for which _seal_at_multiprocessing_exit registered its finalizer.
_FINALIZER_PID = None
# Directories whose filesystem refuses locks, warned about once each.
_warned_no_locks = set()
# Root only: {directory: (uid, gid)} of the directories it creates files
# in (_directory_owner); a child may keep them, the directories are the same.
_directory_owners = {}
# {st_dev: its filesystem type} (_filesystem_type), and the descriptor of
# /proc/self/mountinfo polled to learn that the mounts changed, which
# empties it.  A child opens its own: a poll reports a change once per
# open file, and the parent's would otherwise miss what the child saw.
_filesystem_types = {}
_mount_watch = None
_FILESYSTEM_TYPES_LOCK = threading.Lock()


def _after_fork_in_child():
    """A forked child writes to temp zips of its own, never to its parent's."""
    global _OWN_TEMP_ZIPS_LOCK, _ACTIVE_LOCK, _SCAVENGE_LOCK
    global _mount_watch, _FILESYSTEM_TYPES_LOCK
    _OWN_TEMP_ZIPS.clear()
    _OWN_TEMP_ZIPS_LOCK = threading.Lock()
    _ACTIVE_LOCK = threading.Lock()
    _SCAVENGE_LOCK = threading.RLock()
    if _mount_watch is not None:
        with contextlib.suppress(OSError):
            os.close(_mount_watch)
    _mount_watch = None
    _filesystem_types.clear()
    _FILESYSTEM_TYPES_LOCK = threading.Lock()
    _UNSEALED.clear()
    for fs in list(_LIVE):
        fs._forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ---------------------------------------------------------------- platform

try:
    import fcntl as _fcntl
except ImportError:  # Windows: importing rear works, locking says why it can't
    _fcntl = None

# errnos that mean "this filesystem does not do fcntl locks", not "busy".
_LOCK_UNSUPPORTED_ERRNOS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
_LOCK_BUSY_ERRNOS = {errno.EACCES, errno.EAGAIN}


def _lockf(fd, operation):
    """fcntl.lockf, isolated so tests can simulate filesystems without locks."""
    if _fcntl is None:
        raise OSError(errno.ENOSYS, "fcntl is not available on this platform")
    _fcntl.lockf(fd, operation)


def _lock(fd, path, exclusive=True, blocking=True):
    """Take a POSIX record lock on the whole of ``fd``.

    Returns True when held, False when another process holds it (only if not
    blocking).  Raises LockingUnsupportedError when the filesystem refuses
    locks (ENOLCK on NFS without lockd, Lustre mounted without ``-o flock``).
    The descriptor must be open for writing for an exclusive lock: NFSv4
    refuses write locks on read-only opens.
    """
    if _fcntl is None:
        raise LockingUnsupportedError(
            "rear needs POSIX fcntl locks, which this platform lacks; "
            "run rear on Linux or another POSIX system", path)
    operation = _fcntl.LOCK_EX if exclusive else _fcntl.LOCK_SH
    if not blocking:
        operation |= _fcntl.LOCK_NB
    try:
        _lockf(fd, operation)
    except OSError as err:
        if err.errno in _LOCK_BUSY_ERRNOS and not blocking:
            return False
        if err.errno in _LOCK_UNSUPPORTED_ERRNOS:
            raise LockingUnsupportedError(
                "the filesystem refuses fcntl locks on %s (%s); on NFS run "
                "the lock daemon or use NFSv4, on Lustre mount with -o flock"
                % (path, os.strerror(err.errno)), path) from err
        raise
    return True


def _advise_dont_need(fd, offset=0, length=0):
    """posix_fadvise(POSIX_FADV_DONTNEED) on a range of a file (0, 0: all
    of it), where the platform has it: Linux starts writing the range's
    dirty pages back without waiting for them and drops its clean ones
    (mm/fadvise.c).  A hint: its failure changes nothing."""
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def _warn_no_locks(path, err):
    """Warn once per directory that rear falls back to age-based safety."""
    directory = os.path.dirname(path)
    if directory not in _warned_no_locks:
        _warned_no_locks.add(directory)
        _log.warning("%s; falling back to age-based safety: run only one "
                     "scavenger at a time on this base", err)


def _sync_directory(path):
    """fsync a directory so the names created or removed in it are durable."""
    try:
        fd = os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EISDIR):  # some FUSE mounts
            return
        raise
    try:
        os.fsync(fd)
    except OSError as err:
        # EINVAL: the filesystem cannot fsync directories (some FUSE and
        # network filesystems); their namespace operations are synchronous.
        if err.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


def _replace_atomic(src, dst):
    """Rename ``src`` over ``dst`` atomically and make the rename durable."""
    os.replace(src, dst)
    _sync_directory(os.path.dirname(dst) or ".")


async def _off_the_event_loop(function, *args):
    """Run a blocking call (a seal, a scavenger pass) in a worker thread of
    the caller's event loop, so that ``async with`` never blocks the loop for
    longer than one file's write.

    rear imports no async library: it uses trio or asyncio only if the
    caller has them loaded and running, and otherwise just calls.
    """
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass    # trio is loaded but this is not a trio task
        else:
            return await trio.to_thread.run_sync(function, *args)
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            return await loop.run_in_executor(None, function, *args)
    return function(*args)


def _short_hostname(host=None):
    """This host's name (or ``host``), reduced to characters that are safe
    in file names: how it starts the names of its writers' temp zips."""
    name = (host or socket.gethostname()).split(".")[0] or "host"
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:64]


_PROCESS_RUNNING = "running"
_PROCESS_OTHER_USERS = "running (another user's)"
_PROCESS_STOPPED = "stopped"
_PROCESS_GONE = "gone"
_PROCESS_RUNS = (_PROCESS_RUNNING, _PROCESS_OTHER_USERS, _PROCESS_STOPPED)
#: /proc/PID/stat states of a process that exists but runs no code:
#: stopped by a signal (SIGSTOP, a scheduler's suspend) or by a tracer.
_STOPPED_STATES = ("T", "t")


def _process_state(pid):
    """Whether process ``pid`` of this host runs: _PROCESS_RUNNING,
    _PROCESS_OTHER_USERS (it exists but signals to it are refused, EPERM),
    _PROCESS_STOPPED (SIGSTOP, or suspended by a scheduler: /proc says
    so), _PROCESS_GONE (ESRCH), or None when ``pid`` is not a pid at all."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return _PROCESS_GONE
    except PermissionError:
        return _PROCESS_OTHER_USERS
    try:
        with open("/proc/%d/stat" % pid, "rb") as stat_file:
            # "pid (command) state ...": the command may hold spaces and ")".
            state = stat_file.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError, UnicodeDecodeError):
        return _PROCESS_RUNNING       # no /proc (not Linux): it runs, as far as we know
    return _PROCESS_STOPPED if state in _STOPPED_STATES else _PROCESS_RUNNING


def _runs_on_this_host(host, pid):
    """Is the writer ``pid`` on ``host`` known to run (on this host)?"""
    return host == socket.gethostname() and _process_state(pid) in _PROCESS_RUNS


class _Backoff:
    """A retry policy: sleep ``first`` seconds after a failed try, doubling
    each time up to ``cap``, for at most ``tries`` retries or until
    ``total`` seconds have passed since the first try."""

    __slots__ = ("first", "cap", "tries", "total")

    def __init__(self, first, cap, tries=None, total=None):
        self.first, self.cap, self.tries, self.total = first, cap, tries, total

    def delays(self, total=None):
        """The sleeps between tries (``total`` overrides the policy's)."""
        total = self.total if total is None else total
        deadline = None if total is None else time.monotonic() + total
        delay, count = self.first, 0
        while (self.tries is None or count < self.tries) \
                and (deadline is None or time.monotonic() < deadline):
            yield delay
            delay, count = min(delay * 2, self.cap), count + 1


#: A lookup that fails with ESTALE (another client replaced or removed the
#: file between our lookup of its name and our use of the handle: NFS,
#: GlusterFS): ten tries over 3.27 s.  GlusterFS kept handing out the stale
#: handle for as long as its 1 s entry cache, and 0.6 s of retries were not
#: enough.
_ESTALE_RETRY = _Backoff(first=0.01, cap=1.0, tries=9)
#: A scavenger holding a lock retries a file that does not parse in case its
#: client's cache lags the server (GlusterFS: 1-2 s).  A file damaged for
#: real costs this much delay once per pass.
_STALE_VIEW_RETRY = _Backoff(first=0.05, cap=1.0, total=5.0)
#: A reader polls a busy archive lock (taken shared, non-blocking, so that
#: its wait is bounded) up to its lock_timeout.
_LOCK_POLL = _Backoff(first=0.001, cap=0.05)
#: A scavenger polls a busy archive lock (so that its wait is bounded and
#: it sees a takeover's new lock file) up to _ARCHIVE_LOCK_WAIT; at most
#: 50 ms apart, so that scavengers taking turns on one archive lose little
#: to the poll (a blocking lock would hand over at once, but never time out).
_ARCHIVE_LOCK_POLL = _Backoff(first=0.001, cap=0.05)
#: A reader without the lock finds an archive mid-commit: four more tries
#: 0.1 s apart.
_UNPARSED_RETRY = _Backoff(first=0.1, cap=0.1, tries=4)


# ---------------------------------------------------------------- network filesystems
#
# Several clients of one filesystem (NFS, GlusterFS, Lustre, CephFS...) see
# each other's changes late and through caches.  rear holds to one rule, in
# three parts, for every file another process may replace (os.replace) or
# remove: sidecars, journals, name indexes, temp zips and archives.
#
# 1. Existence is decided by opening, never by os.path.exists: an entry
#    cache may still list a file another client deleted.  Such files are
#    opened, stat'ed and read only through _open_existing, _stat_existing
#    and _read_existing: ESTALE (this client's cached handle names a file
#    that was replaced or removed) is retried on a fresh lookup, and a file
#    that is gone (ENOENT) comes back as None.
# 2. "Gone" can also show up after a successful open, on a ghost entry: the
#    first call that asks the server (lockf, fchmod, fstat, pread, even
#    close) fails with ENOENT or ESTALE, the _GONE_ERRNOS.  Where rear holds
#    the lock that orders such removals, a gone file was finished by whoever
#    held it before (a journal recovered, an index replaced); a temp zip
#    that _is_vanished was ingested by another client's scavenger.  Neither is
#    an error.  Descriptors nothing was written through are closed with
#    _close_read_only, which accepts the same.
# 3. Sizes and bytes of a file another client changes are read only with
#    its lock held and only as the server has them: _refresh_view makes the
#    client fetch the size, _await_current_view re-reads a view that does
#    not parse while it may still be lagging.  That applies to archives and
#    their name indexes (under the archive lock), journals (likewise), and
#    temp zips being claimed (under their own lock).

#: errnos meaning "that file is gone": removed (ENOENT), or replaced or
#: removed behind this client's cached handle (ESTALE: NFS, GlusterFS).
_GONE_ERRNOS = frozenset({errno.ENOENT, errno.ESTALE})
#: Filesystems (as /proc/self/mountinfo names them) whose only cache of a
#: file is this kernel's page cache: block-device and memory filesystems.
#: There rule 3's dropping of cached pages refreshes nothing and sends the
#: next read to the disk: a scavenger copied local temp zips of 1 MiB
#: entries at 0.75x the speed once their pages were dropped.  Any other
#: filesystem (network, FUSE, overlay, unknown) is refreshed.
_COHERENT_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "jfs",
                                   "reiserfs", "nilfs2", "bcachefs", "zfs", "tmpfs",
                                   "ramfs"})
#: Where Linux lists each mount's device number and filesystem type.
_MOUNTINFO = "/proc/self/mountinfo"


def _retry_stale(function, *args, **kwargs):
    """Call ``function(*args)``, which looks a path up afresh each call,
    again by _ESTALE_RETRY while it fails with ESTALE."""
    for delay in _ESTALE_RETRY.delays():
        try:
            return function(*args, **kwargs)
        except OSError as err:
            if err.errno != errno.ESTALE:
                raise
        time.sleep(delay)
    return function(*args, **kwargs)


def _open_existing(path, flags):
    """os.open(path, flags) by rule 1: the descriptor, or None if it is gone."""
    try:
        return _retry_stale(os.open, path, flags)
    except FileNotFoundError:
        return None


def _stat_existing(path, follow_symlinks=True):
    """os.stat by rule 1: the stat result, or None if the file is gone."""
    try:
        return _retry_stale(os.stat, path, follow_symlinks=follow_symlinks)
    except FileNotFoundError:
        return None


def _read_whole(path):
    with open(path, "rb") as handle:
        return handle.read()


def _read_existing(path):
    """The bytes of a small file by rule 1, or None if it is gone."""
    try:
        return _retry_stale(_read_whole, path)
    except FileNotFoundError:
        return None


def _is_vanished(err, path):
    """Did ``err`` come from ``path`` being removed under us (rule 2)?"""
    cause = err if isinstance(err, OSError) else err.__cause__
    return (isinstance(cause, OSError) and cause.errno in _GONE_ERRNOS
            and _stat_existing(path, follow_symlinks=False) is None)


def _is_gone_descriptor(err):
    """Did a call on a descriptor (no file name in ``err``: not a lookup)
    fail because its file is gone (rule 2)?"""
    return (isinstance(err, OSError) and err.errno in _GONE_ERRNOS
            and err.filename is None)


def _close_read_only(fd):
    """Close a descriptor nothing was written through.  GlusterFS reports
    ENOENT from close() when another client deleted the file meanwhile;
    with no data to lose that is no error (rule 2)."""
    try:
        os.close(fd)
    except OSError as err:
        if err.errno not in _GONE_ERRNOS:
            raise


def _close_held(owner, close=_close_read_only):
    """Close ``owner.fd`` once (a descriptor nothing was written through,
    unless ``close`` says otherwise) and mark it closed."""
    if owner.fd >= 0:
        fd, owner.fd = owner.fd, -1
        close(fd)


def _filesystem_type(st_dev):
    """The type of the filesystem of device ``st_dev`` as Linux lists it
    in /proc/self/mountinfo ("ext4", "nfs4", "fuse.glusterfs"), or None
    where that cannot be told (another system, a device not listed).

    Kept until the mounts change: parsing the table on each view refresh
    of a network filesystem cost 40 us with 20 mounts, more on nodes with
    hundreds.  Device numbers of network, FUSE and memory filesystems are
    reused (a tmpfs unmounted here, the next mount got its 0:40), so a
    kept answer must not outlive its mount."""
    with _FILESYSTEM_TYPES_LOCK:
        if _mounts_changed():
            _filesystem_types.clear()
        if st_dev not in _filesystem_types:
            _filesystem_types[st_dev] = _read_filesystem_type(st_dev)
        return _filesystem_types[st_dev]


def _mounts_changed():
    """Have this process's mounts changed since the last call?  Linux
    marks an open /proc/self/mountinfo with POLLPRI once after each change
    (proc(5)).  True the first time, and each time where that cannot be
    watched (no /proc, no poll)."""
    global _mount_watch
    try:
        if _mount_watch is None:
            _mount_watch = os.open(_MOUNTINFO, os.O_RDONLY | _O_CLOEXEC)
            return True
        poller = select.poll()
        poller.register(_mount_watch, select.POLLPRI)
        return bool(poller.poll(0))
    except (OSError, AttributeError):    # AttributeError: no select.poll (Windows)
        return True


def _read_filesystem_type(st_dev):
    """_filesystem_type, read from the table now."""
    if not hasattr(os, "major"):    # not POSIX: no mountinfo either
        return None
    device = "%d:%d" % (os.major(st_dev), os.minor(st_dev))
    try:
        with open(_MOUNTINFO, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                # "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw":
                # optional fields up to a lone "-", then the type (proc(5)).
                fields = line.split()
                if len(fields) > 2 and fields[2] == device and "-" in fields[6:-1]:
                    return fields[fields.index("-", 6) + 1]
    except OSError:
        pass
    return None


def _refresh_view(fd):
    """Make this client ask the server for the file's size and drop its
    cached pages (rule 3).

    Network filesystem clients cache both: on GlusterFS with default caching,
    fstat showed a file's size from before another client appended to it for
    1-2 s, even in a fresh process and after taking a lock, and so did
    O_DIRECT reads.  A SETATTR's reply carries the server's attributes, so a
    chmod to the file's own mode refreshes the size (and makes the kernel
    drop pages if it changed); POSIX_FADV_DONTNEED drops the rest, except
    on _COHERENT_FILESYSTEMS, whose pages are the file.  Not
    owning the file (EPERM) leaves only the wait in _await_current_view.
    Returns (fstat, whether the refresh changed the size or mtime: a sign
    that this client's view had been lagging).
    """
    cached = os.fstat(fd)
    try:
        os.fchmod(fd, stat.S_IMODE(cached.st_mode))
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.EACCES, errno.EROFS, errno.ENOSYS):
            raise
    st = os.fstat(fd)
    if _filesystem_type(st.st_dev) not in _COHERENT_FILESYSTEMS:
        _advise_dont_need(fd)
    return st, (st.st_size, st.st_mtime_ns) != (cached.st_size, cached.st_mtime_ns)


def _await_current_view(fd, path, read):
    """``read(st)`` the file open on ``fd`` as the server has it (rule 3).

    Called with the file's lock held, so nothing changes it meanwhile.  When
    the refresh shows the view was lagging, a view that does not parse may
    still be a cache catching up (GlusterFS's client translators served old
    bytes of small files for a second or two more): it is refreshed and read
    again by _STALE_VIEW_RETRY, then the error stands.  On a
    local filesystem nothing lags and an error stands at once.  Trusting a
    lagging view, a scavenger on GlusterFS appended over entries another
    client had just committed (tests/test_netfs.py shows it).
    """
    lagged = False
    for delay in _STALE_VIEW_RETRY.delays():
        st, changed = _refresh_view(fd)
        lagged = lagged or changed
        try:
            return read(st)
        except RearError:
            if not lagged:
                raise
            _log.info("%s does not parse; waiting in case this client's cache lags", path)
        time.sleep(delay)
    return read(_refresh_view(fd)[0])


# ---------------------------------------------------------------- durable I/O


def _write_all(fd, data):
    """os.write until every byte is written (short writes happen on NFS)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _pwrite_all(fd, data, offset):
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _truncation_error(path, short_by):
    return TempZipError("%s ends %d bytes early (truncated)" % (path, short_by), path)


def _pread_exact(fd, size, offset, path):
    """Read exactly ``size`` bytes at ``offset`` or raise TempZipError."""
    chunks = []
    remaining = size
    while remaining:
        chunk = os.pread(fd, min(remaining, _CHUNK * 16), offset)
        if not chunk:
            raise _truncation_error(path, remaining)
        chunks.append(chunk)
        remaining -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


class _ChunkReader:
    """Small reads of one file served from a read-ahead buffer of _CHUNK
    bytes: a temp zip of many small entries costs one pread per megabyte,
    not three or four per entry (they were a third of a scavenger pass)."""

    def __init__(self, fd, path, readahead=_CHUNK):
        self.fd = fd
        self.path = path
        self.readahead = readahead
        self.start = 0
        self.data = b""

    def read(self, offset, size, ahead=True):
        """Up to ``size`` bytes at ``offset`` (fewer only at the end of the
        file); read ahead unless told the bytes after them are not wanted."""
        if not (self.start <= offset and offset + size <= self.start + len(self.data)):
            self.data = os.pread(self.fd, max(size, self.readahead if ahead else 0), offset)
            self.start = offset
        return self.data[offset - self.start:offset - self.start + size]

    def read_exact(self, offset, size):
        data = self.read(offset, size)
        if len(data) < size:
            raise _truncation_error(self.path, size - len(data))
        return data

    def view_exact(self, offset, size):
        """read_exact as a memoryview of the read-ahead buffer, valid until
        the next read: for bytes that are copied on at once."""
        if not (self.start <= offset and offset + size <= self.start + len(self.data)):
            return self.read_exact(offset, size)
        start = offset - self.start
        return memoryview(self.data)[start:start + size]


def _copy_range(src_fd, src_offset, dst_fd, dst_offset, length, src_path):
    """Copy bytes between files without passing them through Python if possible."""
    copy_file_range = getattr(os, "copy_file_range", None)
    while length and copy_file_range is not None:
        try:
            copied = copy_file_range(src_fd, dst_fd, length, src_offset, dst_offset)
        except OSError as err:
            # EXDEV before Linux 5.3, ENOSYS/EOPNOTSUPP/EINVAL on filesystems
            # and kernels without it: fall back to plain reads and writes.
            if err.errno in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                break
            raise
        if copied == 0:
            raise _truncation_error(src_path, length)
        src_offset += copied
        dst_offset += copied
        length -= copied
    while length:
        chunk = os.pread(src_fd, min(length, _CHUNK), src_offset)
        if not chunk:
            raise _truncation_error(src_path, length)
        _pwrite_all(dst_fd, chunk, dst_offset)
        src_offset += len(chunk)
        dst_offset += len(chunk)
        length -= len(chunk)


def _start_writeback(fd, offset, length):
    """Have the kernel start writing a range of a file to disk without
    waiting for it, so the fsync that follows waits only for the rest.  A
    writeback error is still reported to that fsync: unlike an fdatasync
    in a thread (the writer's way), the hint does not consume it."""
    _advise_dont_need(fd, offset, length)


def _create_file(path, flags, mode=0o644):
    """os.open with O_CREAT, the file then given to the owner of its
    directory when root made it (see _give_to_directory_owner)."""
    fd = os.open(path, flags | os.O_CREAT, mode)
    try:
        _give_to_directory_owner(path, fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _give_to_directory_owner(path, fd=None):
    """Root running rear in a user's base (a cron job, an admin's clean-up)
    gives what it creates to the owner of the directory it is in: root's
    0644 lock files, archives and temp zips made every later scavenge by
    the base's owner fail with EACCES.  Nothing to do for anyone else."""
    if os.geteuid() != 0:
        return
    owner = _directory_owner(os.path.dirname(path) or ".")
    if owner == (0, 0):
        return
    if fd is None:
        os.chown(path, *owner, follow_symlinks=False)
    else:
        os.fchown(fd, *owner)


def _directory_owner(directory, st=None):
    """(uid, gid) of ``directory`` (whose os.stat may be given), asked of the
    filesystem once per process: a writer creates two files in inbox/ per
    rotation, and a stat of it for each was a metadata call per create on
    the filesystem rear exists to spare.  A directory chowned while the
    process runs gets the old owner's files until it restarts, as it would
    have had them a moment earlier."""
    owner = _directory_owners.get(directory)
    if owner is None:
        if st is None:
            st = os.stat(directory)
        if len(_directory_owners) >= _OWNER_CACHE_SIZE:
            _directory_owners.clear()
        owner = _directory_owners[directory] = (st.st_uid, st.st_gid)
    return owner


def _write_file_durably(path, *parts):
    """Replace ``path`` with ``parts`` (bytes-like, written in turn, never
    joined into one more copy): temp file, fsync, os.replace, fsync dir."""
    directory = os.path.dirname(path)
    # Hidden (scavengers skip dot-names) and unique; plain os.open rather than
    # tempfile.mkstemp so that every file operation goes through this module.
    tmp_path = os.path.join(directory, ".%s.%s.tmp" % (os.path.basename(path),
                                                       secrets.token_hex(6)))
    fd = _create_file(tmp_path, os.O_WRONLY | os.O_EXCL | _O_CLOEXEC)
    try:
        try:
            for part in parts:
                _write_all(fd, part)
            os.fsync(fd)
        finally:
            os.close(fd)
        _replace_atomic(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):  # never hide the original error
            os.unlink(tmp_path)
        raise


def _makedirs_durably(path):
    """os.makedirs that also fsyncs the parent of every directory it creates.

    Without that, a power loss can forget a new directory (inbox/, a
    subdirectory of archives) although the files in it were fsynced, and
    them with it.  Found by the power-loss crash-state tests.
    """
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    _makedirs_durably(parent)
    try:
        os.mkdir(path)
        _give_to_directory_owner(path)
    except FileExistsError:
        pass   # made by another process, which may not have synced it yet
    _sync_directory(parent)


def _unlink_if_exists(path):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# ---------------------------------------------------------------- zip format


# Records follow one convention: internal ones are classes with __slots__
# (a scavenger holds an _Entry per archived file, a million at a time); the
# one public record, ScavengeStats, is a dataclass; dicts are used only for
# what is JSON (sidecars, journal headers, the status report).


class _Entry:
    """One member of a zip: what is needed to copy it raw and list it."""

    __slots__ = ("name", "flags", "method", "dos_time", "dos_date", "crc",
                 "compressed_size", "file_size", "external_attr",
                 "header_offset", "data_offset", "raw_name", "mtime", "provenance",
                 "staged")

    def __init__(self, name, flags, method, dos_time, dos_date, crc,
                 compressed_size, file_size, external_attr=_DEFAULT_FILE_MODE << 16,
                 header_offset=0, data_offset=0, mtime=None):
        self.name = name
        self.flags = flags
        self.method = method
        self.dos_time = dos_time
        self.dos_date = dos_date
        self.crc = crc
        self.compressed_size = compressed_size
        self.file_size = file_size
        self.external_attr = external_attr
        self.header_offset = header_offset
        self.data_offset = data_offset
        self.raw_name = None    # the name's bytes as read from a central directory
        self.mtime = mtime      # Unix seconds (UTC) for the UT extra field, or None
        self.provenance = None  # body of rear's provenance field (local headers), or None
        self.staged = None      # what a scavenger works out before a commit: _Staged


def _dos_datetime(timestamp):
    """(time, date) in MS-DOS format, APPNOTE 4.4.6, local time like zipfile,
    clamped to the years the format holds (1980-2107); the UT extra field
    keeps the exact time where it fits."""
    try:
        tm = time.localtime(timestamp)
    except (OverflowError, OSError, ValueError):   # beyond what time_t holds
        return _DOS_FIRST if timestamp < 0 else _DOS_LAST
    if tm.tm_year < _DOS_EPOCH_YEAR:
        return _DOS_FIRST
    if tm.tm_year > _DOS_LAST_YEAR:
        return _DOS_LAST
    dos_time = (tm.tm_hour << 11) | (tm.tm_min << 5) | (tm.tm_sec // 2)
    dos_date = ((tm.tm_year - _DOS_EPOCH_YEAR) << 9) | (tm.tm_mon << 5) | tm.tm_mday
    return dos_time, dos_date


def _file_seconds(st):
    """A file's mtime in the whole seconds it began, as Info-ZIP zip stores
    it.  Not the float st_mtime: a double has no room for nanoseconds of a
    current time, so 12:34:57.999999999 arrives as 12:34:58.0."""
    return st.st_mtime_ns // _NS_PER_SECOND


def _unix_seconds(timestamp):
    """Whole seconds of a time for the UT field; None where it does not fit
    (before 1970 or after 2106-02-07)."""
    seconds = math.floor(timestamp)
    return seconds if 0 <= seconds <= _U32_LIMIT else None


def _external_attr(mode):
    """External attributes for a Unix ``st_mode`` (4.4.15; as Info-ZIP zip)."""
    return ((mode & 0xFFFF) << 16) | (_MSDOS_DIRECTORY if stat.S_ISDIR(mode) else 0)


def _pack_timestamp_extra(entry):
    if entry.mtime is None:
        return b""
    return _EXTENDED_TIMESTAMP.pack(_EXTENDED_TIMESTAMP_ID, _EXTENDED_TIMESTAMP.size - 4,
                                    _UT_MTIME, entry.mtime)


def _pack_mode_extra(entry):
    """The ASi Unix field for a temp zip's local header, b"" for the default."""
    mode = entry.external_attr >> 16
    if mode == _DEFAULT_FILE_MODE:
        return b""
    packed = _ASI_UNIX.pack(_ASI_UNIX_ID, _ASI_UNIX.size - 4, 0, mode, 0, 0, 0)
    body = packed[_ASI_UNIX_CRC_OFFSET + 4:]
    return packed[:_ASI_UNIX_CRC_OFFSET] + struct.pack("<L", zlib.crc32(body)) + body


def _pack_provenance(fields):
    """The body of a provenance field from {key: value} (see _PROVENANCE_TAGS)."""
    body = bytearray([_PROVENANCE_VERSION])
    for tag, (key, _variables) in _PROVENANCE_TAGS.items():
        value = fields.get(key)
        if value is not None:
            encoded = str(value).encode("utf-8")[:255]
            body += _PROVENANCE_ITEM.pack(tag, len(encoded)) + encoded
    return bytes(body)


def _find_extra_field(extra, wanted_id):
    """The body of the first extra field with id ``wanted_id`` (4.5.1), or None."""
    pos = 0
    while pos + _EXTRA_HEADER.size <= len(extra):
        field_id, field_size = _EXTRA_HEADER.unpack_from(extra, pos)
        if field_id == wanted_id:
            return extra[pos + _EXTRA_HEADER.size:pos + _EXTRA_HEADER.size + field_size]
        pos += _EXTRA_HEADER.size + field_size
    return None


def _provenance_field(extra):
    """The body of the provenance field in a local header's ``extra``, or
    None; without a walk where rear's writer puts it, right after its UT
    field (the scavenger looks once per entry)."""
    after_ut = _EXTENDED_TIMESTAMP.size
    if (extra[:len(_UT_AS_REAR_WRITES_IT)] == _UT_AS_REAR_WRITES_IT
            and extra[after_ut:after_ut + 2] == _PROVENANCE_ID_BYTES
            and len(extra) >= after_ut + _EXTRA_HEADER.size):
        start = after_ut + _EXTRA_HEADER.size
        return extra[start:start + _EXTRA_HEADER.unpack_from(extra, after_ut)[1]]
    return _find_extra_field(extra, _PROVENANCE_ID)


def _parse_provenance(body):
    """{key: value} of a provenance field's body ({} if it is not one this
    rear reads).  Values are text; tags unknown to this rear are kept as
    ``tag_N``."""
    fields = {}
    if not body or body[0] != _PROVENANCE_VERSION:
        return fields
    position = 1
    while position + _PROVENANCE_ITEM.size <= len(body):
        tag, length = _PROVENANCE_ITEM.unpack_from(body, position)
        position += _PROVENANCE_ITEM.size
        value = body[position:position + length].decode("utf-8", "replace")
        position += length
        fields[_PROVENANCE_TAGS.get(tag, ("tag_%d" % tag,))[0]] = value
    return fields


def _this_process_provenance():
    """This process's provenance body: host, pid, and the job ids the
    scheduler and MPI put in its environment."""
    # The host's first label, as SLURM names nodes: an FQDN would add a
    # fifth to the field, which costs bytes on every entry.
    fields = {"host": socket.gethostname().split(".")[0], "pid": os.getpid()}
    for key, variables in _PROVENANCE_TAGS.values():
        for variable in variables:
            if os.environ.get(variable):
                fields[key] = os.environ[variable]
                break
    return _pack_provenance(fields)


def _extract_version(method, zip64):
    version = _EXTRACT_VERSION.get(method, _VERSION_DEFAULT)
    return max(version, _VERSION_ZIP64) if zip64 else version


def _encode_name(name):
    encoded = name.encode("utf-8")
    return encoded, (0 if encoded.isascii() else _FLAG_UTF8)


def _pack_local_header(entry, encoded=None, with_mode=False):
    """Local file header + name + extra for ``entry`` (sizes known up front),
    under the name ``encoded`` (bytes, UTF-8 flag) if given; ``with_mode``
    (temp zips) adds the entry's mode for salvage."""
    name, utf8_flag = encoded or _encode_name(entry.name)
    zip64 = entry.file_size >= _U32_LIMIT or entry.compressed_size >= _U32_LIMIT
    extra = _pack_timestamp_extra(entry) + (_pack_mode_extra(entry) if with_mode else b"")
    if entry.provenance:
        extra += _EXTRA_HEADER.pack(_PROVENANCE_ID, len(entry.provenance)) + entry.provenance
    file_size, compressed_size = entry.file_size, entry.compressed_size
    if zip64:
        # 4.5.3: in a local header the zip64 extra holds both sizes.
        extra = _EXTRA_HEADER.pack(_ZIP64_EXTRA_ID, 16) + struct.pack(
            "<QQ", entry.file_size, entry.compressed_size) + extra
        file_size = compressed_size = _U32_LIMIT
    flags = (entry.flags & _FLAG_COMPRESSION_OPTIONS) | utf8_flag
    header = _LOCAL_STRUCT.pack(
        _LOCAL_SIG, _extract_version(entry.method, zip64), 0, flags, entry.method,
        entry.dos_time, entry.dos_date, entry.crc, compressed_size, file_size,
        len(name), len(extra))
    return header + name + extra


def _pack_central_record(entry, header_offset, encoded=None):
    """Central directory record for ``entry`` whose local header is at the
    offset, under the name ``encoded`` (bytes, UTF-8 flag) if given."""
    name, utf8_flag = encoded or _encode_name(entry.name)
    fields = []
    file_size, compressed_size, offset = entry.file_size, entry.compressed_size, header_offset
    # 4.5.3: only the fields that overflow appear, in this order.
    if file_size >= _U32_LIMIT:
        fields.append(file_size)
        file_size = _U32_LIMIT
    if compressed_size >= _U32_LIMIT:
        fields.append(compressed_size)
        compressed_size = _U32_LIMIT
    if offset >= _U32_LIMIT:
        fields.append(offset)
        offset = _U32_LIMIT
    extra = _pack_timestamp_extra(entry)
    if fields:
        extra = _EXTRA_HEADER.pack(_ZIP64_EXTRA_ID, 8 * len(fields)) + struct.pack(
            "<%dQ" % len(fields), *fields) + extra
    version = _extract_version(entry.method, bool(fields))
    flags = (entry.flags & _FLAG_COMPRESSION_OPTIONS) | utf8_flag
    record = _CENTRAL_STRUCT.pack(
        _CENTRAL_SIG, version, _SYSTEM_UNIX, version, 0, flags, entry.method,
        entry.dos_time, entry.dos_date, entry.crc, compressed_size, file_size,
        len(name), len(extra), 0, 0, 0, entry.external_attr, offset)
    return record + name + extra


def _pack_headers(entry, name, shapes):
    """(_pack_local_header(entry, encoded), _pack_central_record(entry, 0,
    encoded)) of an entry that needs no zip64 field, under the UTF-8 name
    ``name``: a scavenger stages both for every entry it claims.  What
    depends on the method, flags, time and provenance alone is worked out
    once per such kind and kept in ``shapes`` (a dict): a writer's entries
    are of a few kinds (its UT fields hold whole seconds)."""
    utf8_flag = 0 if name.isascii() else _FLAG_UTF8
    method, provenance = entry.method, entry.provenance
    kind = (method, entry.flags, utf8_flag, entry.mtime, provenance)
    shape = shapes.get(kind)
    if shape is None:
        if len(shapes) >= _EXTRA_MEMO_MAX:
            shapes.clear()
        timestamp = _pack_timestamp_extra(entry)
        local_extra = timestamp
        if provenance:
            local_extra += _EXTRA_HEADER.pack(_PROVENANCE_ID, len(provenance)) + provenance
        shape = shapes[kind] = (_extract_version(method, False),
                                (entry.flags & _FLAG_COMPRESSION_OPTIONS) | utf8_flag,
                                timestamp, local_extra)
    version, flags, timestamp, local_extra = shape
    local = _LOCAL_STRUCT.pack(
        _LOCAL_SIG, version, 0, flags, method, entry.dos_time, entry.dos_date,
        entry.crc, entry.compressed_size, entry.file_size, len(name), len(local_extra))
    central = _CENTRAL_STRUCT.pack(
        _CENTRAL_SIG, version, _SYSTEM_UNIX, version, 0, flags, method,
        entry.dos_time, entry.dos_date, entry.crc, entry.compressed_size, entry.file_size,
        len(name), len(timestamp), 0, 0, 0, entry.external_attr, 0)
    return local + name + local_extra, central + name + timestamp


def _pack_end_records(count, cd_size, cd_offset, comment=b""):
    """Zip64 end record and locator when needed, then the end record."""
    out = b""
    if count >= _U16_LIMIT or cd_size >= _U32_LIMIT or cd_offset >= _U32_LIMIT:
        zip64_offset = cd_offset + cd_size
        out += _ZIP64_EOCD_STRUCT.pack(
            _ZIP64_EOCD_SIG, _ZIP64_EOCD_STRUCT.size - 12, _VERSION_ZIP64,
            _VERSION_ZIP64, 0, 0, count, count, cd_size, cd_offset)
        out += _ZIP64_LOCATOR_STRUCT.pack(_ZIP64_LOCATOR_SIG, 0, zip64_offset, 1)
        count = min(count, _U16_LIMIT)
        cd_size = min(cd_size, _U32_LIMIT)
        cd_offset = min(cd_offset, _U32_LIMIT)
    out += _EOCD_STRUCT.pack(_EOCD_SIG, 0, 0, count, count, cd_size, cd_offset, len(comment))
    return out + comment


# ---------------------------------------------------------------- zip reading
#
# End records, central records and local headers of zips rear reads: temp
# zips, its archives, and archives other tools made.


class _CentralDirectory:
    """Where a zip's central directory is and how many records it holds, as
    its end records say (the bytes from ``cd_offset`` to the end of the
    file, central directory and end records, are what a commit journals as
    the archive's old *tail*)."""

    __slots__ = ("count", "cd_offset", "cd_size", "comment")

    def __init__(self, count, cd_offset, cd_size, comment):
        self.count = count
        self.cd_offset = cd_offset
        self.cd_size = cd_size
        self.comment = comment


_EMPTY_DIRECTORY = _CentralDirectory(0, 0, 0, b"")


def _read_end_records(fd, size, path, error=ArchiveError):
    """The _CentralDirectory of the zip open on ``fd`` (``size`` bytes long),
    from its end records."""
    if size < _EOCD_STRUCT.size:
        raise error("%s is not a zip archive (%d bytes, too short)" % (path, size), path)
    window = min(size, _EOCD_STRUCT.size + _MAX_COMMENT)
    data = os.pread(fd, window, size - window)
    # Only where a whole record fits: a zip cut just after the signature must
    # be reported, not crash the unpacking (found by fuzzing).
    pos = data.rfind(_EOCD_SIG, 0, len(data) - _EOCD_STRUCT.size + len(_EOCD_SIG))
    last = pos
    while pos >= 0:
        fields = _EOCD_STRUCT.unpack_from(data, pos)
        if pos + _EOCD_STRUCT.size + fields[_EOCD_COMMENT_LENGTH] == len(data):
            break
        pos = data.rfind(_EOCD_SIG, 0, pos)
    if pos < 0 and last >= 0:
        raise error("%s: its end of central directory record announces a %d-byte comment, "
                    "but %d bytes follow it" % (
                        path, _EOCD_STRUCT.unpack_from(data, last)[_EOCD_COMMENT_LENGTH],
                        len(data) - last - _EOCD_STRUCT.size), path)
    if pos < 0:
        raise error("%s is not a zip archive (no end of central directory record)" % path, path)
    count, cd_size = fields[_EOCD_ENTRIES_TOTAL], fields[_EOCD_CD_SIZE]
    cd_offset = fields[_EOCD_CD_OFFSET]
    comment = data[pos + _EOCD_STRUCT.size:]
    eocd_offset = size - window + pos
    end_of_cd = eocd_offset
    locator_offset = eocd_offset - _ZIP64_LOCATOR_STRUCT.size
    if locator_offset >= 0:
        locator = os.pread(fd, _ZIP64_LOCATOR_STRUCT.size, locator_offset)
        if locator[:4] == _ZIP64_LOCATOR_SIG:
            zip64_offset = _ZIP64_LOCATOR_STRUCT.unpack(locator)[_ZIP64_LOCATOR_EOCD_OFFSET]
            record = os.pread(fd, _ZIP64_EOCD_STRUCT.size, zip64_offset)
            if len(record) != _ZIP64_EOCD_STRUCT.size or record[:4] != _ZIP64_EOCD_SIG:
                raise error("%s has a broken zip64 end record" % path, path)
            fields64 = _ZIP64_EOCD_STRUCT.unpack(record)
            count, cd_size = fields64[_ZIP64_EOCD_ENTRIES_TOTAL], fields64[_ZIP64_EOCD_CD_SIZE]
            cd_offset = fields64[_ZIP64_EOCD_CD_OFFSET]
            end_of_cd = zip64_offset
    if count > cd_size // _CENTRAL_STRUCT.size:
        # Sized from this, an index table would not fit in memory
        # (OverflowError): a damaged or hostile end record.
        raise error("%s: its end record counts %d entries, more than its central "
                    "directory of %d bytes can hold; the archive is damaged"
                    % (path, count, cd_size), path)
    if cd_offset + cd_size != end_of_cd:
        raise error("%s: central directory at %d+%d does not end at the end records "
                    "(%d); the archive is damaged or has data prepended"
                    % (path, cd_offset, cd_size, end_of_cd), path)
    return _CentralDirectory(count, cd_offset, cd_size, comment)


def _parse_zip64_extra(extra, wanted):
    """The 64-bit values of the zip64 extra field, in APPNOTE order."""
    body = _find_extra_field(extra, _ZIP64_EXTRA_ID) or b""
    count = min(wanted, len(body) // 8)
    return list(struct.unpack_from("<%dQ" % count, body))


def _parse_timestamp_extra(extra):
    """The modification time of a UT extra field, Unix seconds, or None."""
    if extra[:5] == _UT_AS_REAR_WRITES_IT:   # the common case, without a walk
        return int.from_bytes(extra[5:9], "little") if len(extra) >= 9 else None
    body = _find_extra_field(extra, _EXTENDED_TIMESTAMP_ID)
    if body is None or len(body) < 5 or not body[0] & _UT_MTIME:
        return None
    return struct.unpack_from("<L", body, 1)[0]


def _parse_mode_extra(extra):
    """The st_mode of an ASi Unix extra field whose CRC holds, or None."""
    body = _find_extra_field(extra, _ASI_UNIX_ID)
    if body is None or len(body) < _ASI_UNIX.size - 4:
        return None
    (crc,) = struct.unpack_from("<L", body)
    if zlib.crc32(body[4:]) != crc:
        return None
    return struct.unpack_from("<H", body, 4)[0]


def _decode_name(raw, flags):
    # 4.4.4: names without bit 11 are IBM code page 437, as zipfile reads them.
    return raw.decode("utf-8" if flags & _FLAG_UTF8 else "cp437")


def _decode_central_name(raw, flags, path, where, error):
    """The name of the central record at byte ``where``, or ``error``."""
    try:
        return _decode_name(raw, flags)
    except UnicodeDecodeError as err:
        raise error("%s: entry name at byte %d is not valid UTF-8" % (path, where), path) from err


def _iter_central_records(reader, directory, path, error=ArchiveError, start=0, count=None):
    """Yield (position, fields, raw name, extra) for the records of the
    central directory ``directory``, read through ``reader`` (a
    _ChunkReader: its descriptor and read-ahead size), from ``start`` (a
    position within the central directory) on, ``count`` of them (default:
    all).  The one parser of central records: temp zips, archives, the name
    index and its rebuild, readers and listings use it.  Records are cut
    out of one buffer of ``reader.readahead`` bytes at a time, with no call
    per record: a million of them is what 'rear ls' and an index rebuild
    walk through."""
    fixed_size = _CENTRAL_STRUCT.size
    unpack = _CENTRAL_STRUCT.unpack_from
    # Field numbers as locals: this loop runs once per entry of an archive.
    name_length, extra_length, comment_length = (
        _CD_FILENAME_LENGTH, _CD_EXTRA_FIELD_LENGTH, _CD_COMMENT_LENGTH)
    signature = _CENTRAL_SIG
    cd_offset, cd_size = directory.cd_offset, directory.cd_size
    remaining = directory.count if count is None else count
    position = start
    data = b""
    offset = 0          # of the record at ``position`` within ``data``
    while remaining:
        remaining -= 1
        if position + fixed_size > cd_size:
            raise _short_central_directory_error(path, directory, error)
        if offset + fixed_size + _TYPICAL_NAME > len(data):
            data = os.pread(reader.fd, max(reader.readahead, fixed_size + _TYPICAL_NAME),
                            cd_offset + position)
            offset = 0
            if len(data) < fixed_size:
                raise _short_central_directory_error(path, directory, error)
        fields = unpack(data, offset)
        if fields[0] != signature:
            raise error("%s: bad central directory record at byte %d"
                        % (path, cd_offset + position), path)
        name_end = offset + fixed_size + fields[name_length]
        extra_end = name_end + fields[extra_length]
        record_size = extra_end - offset + fields[comment_length]
        if position + record_size > cd_size:
            raise _short_central_directory_error(path, directory, error)
        if extra_end > len(data):    # a long name: read it from its record's start
            data = os.pread(reader.fd, max(reader.readahead, extra_end - offset),
                            cd_offset + position)
            name_end -= offset
            extra_end -= offset
            offset = 0
            if extra_end > len(data):
                raise _short_central_directory_error(path, directory, error)
        yield position, fields, data[offset + fixed_size:name_end], data[name_end:extra_end]
        position += record_size
        offset += record_size


def _short_central_directory_error(path, directory, error):
    return error("%s: central directory is shorter than its %d records"
                 % (path, directory.count), path)


def _central_sizes(fields, extra):
    """(file size, compressed size, local header offset) of a central
    record, zip64 values resolved."""
    file_size = fields[_CD_UNCOMPRESSED_SIZE]
    compressed_size = fields[_CD_COMPRESSED_SIZE]
    header_offset = fields[_CD_LOCAL_HEADER_OFFSET]
    if _U32_LIMIT in (file_size, compressed_size, header_offset):
        # 4.5.3: only the fields that overflow are in the extra, in this order.
        values = _parse_zip64_extra(extra, 3)
        if file_size == _U32_LIMIT and values:
            file_size = values.pop(0)
        if compressed_size == _U32_LIMIT and values:
            compressed_size = values.pop(0)
        if header_offset == _U32_LIMIT and values:
            header_offset = values.pop(0)
    return file_size, compressed_size, header_offset


def _parse_central_entry(fields, raw_name, extra, path, where, error=ArchiveError):
    """The _Entry a central record describes, zip64 values resolved."""
    file_size, compressed_size, header_offset = _central_sizes(fields, extra)
    flags = fields[_CD_FLAG_BITS]
    entry = _Entry(_decode_central_name(raw_name, flags, path, where, error), flags,
                   fields[_CD_COMPRESS_TYPE], fields[_CD_TIME], fields[_CD_DATE],
                   fields[_CD_CRC], compressed_size, file_size,
                   fields[_CD_EXTERNAL_FILE_ATTRIBUTES], header_offset,
                   mtime=_parse_timestamp_extra(extra))
    entry.raw_name = raw_name
    return entry


def _iter_central_entries(reader, directory, path, error=ArchiveError):
    """Yield the _Entry of every central record, in central directory order.

    What _parse_central_entry does, for the common record (ASCII name, no
    zip64 field) without its calls, and each distinct extra field's time
    parsed once: a writer's entries share a few (the UT field holds whole
    seconds).  A scavenger claiming 100,000 entries spends its first
    quarter here."""
    flag_bits, method_field, time_field, date_field, crc_field = (
        _CD_FLAG_BITS, _CD_COMPRESS_TYPE, _CD_TIME, _CD_DATE, _CD_CRC)
    compressed_field, size_field, attributes_field, offset_field = (
        _CD_COMPRESSED_SIZE, _CD_UNCOMPRESSED_SIZE, _CD_EXTERNAL_FILE_ATTRIBUTES,
        _CD_LOCAL_HEADER_OFFSET)
    overflow = _U32_LIMIT
    mtimes = {}
    for position, fields, raw_name, extra in _iter_central_records(reader, directory, path, error):
        compressed_size, file_size, header_offset = (
            fields[compressed_field], fields[size_field], fields[offset_field])
        if (not raw_name.isascii() or compressed_size == overflow or file_size == overflow
                or header_offset == overflow):
            yield _parse_central_entry(fields, raw_name, extra, path,
                                       directory.cd_offset + position, error)
            continue
        mtime = mtimes.get(extra, mtimes)
        if mtime is mtimes:
            if len(mtimes) >= _EXTRA_MEMO_MAX:
                mtimes.clear()
            mtime = mtimes[extra] = _parse_timestamp_extra(extra)
        entry = _Entry(raw_name.decode("ascii"), fields[flag_bits], fields[method_field],
                       fields[time_field], fields[date_field], fields[crc_field],
                       compressed_size, file_size, fields[attributes_field], header_offset,
                       mtime=mtime)
        entry.raw_name = raw_name
        yield entry


def _read_local_header(reader, offset, size):
    """Parse the local header at ``offset``; None if there is none or it is torn."""
    if offset + _LOCAL_STRUCT.size > size:
        return None
    raw = reader.read(offset, _LOCAL_STRUCT.size)
    if len(raw) < _LOCAL_STRUCT.size or raw[:4] != _LOCAL_SIG:
        return None
    fields = _LOCAL_STRUCT.unpack(raw)
    flags, method, dos_time, dos_date, crc = fields[_LH_FLAG_BITS:_LH_CRC + 1]
    compressed_size = fields[_LH_COMPRESSED_SIZE]
    file_size = fields[_LH_UNCOMPRESSED_SIZE]
    name_len = fields[_LH_FILENAME_LENGTH]
    extra_len = fields[_LH_EXTRA_FIELD_LENGTH]
    variable_end = offset + _LOCAL_STRUCT.size + name_len + extra_len
    if variable_end > size:
        return None
    variable = reader.read(offset + _LOCAL_STRUCT.size, name_len + extra_len)
    raw_name, extra = variable[:name_len], variable[name_len:]
    if file_size == _U32_LIMIT or compressed_size == _U32_LIMIT:
        values = _parse_zip64_extra(extra, 2)
        if len(values) == 2:
            file_size, compressed_size = values
    try:
        name = _decode_name(raw_name, flags)
    except UnicodeDecodeError:
        return None
    # A local header has no external attributes: rear's writer puts a mode
    # other than the default in an ASi Unix field; a name ending in "/" is
    # a directory (the Info-ZIP convention) even without one.
    mode = _parse_mode_extra(extra)
    if mode is None:
        mode = (stat.S_IFDIR | 0o755) if name.endswith("/") else _DEFAULT_FILE_MODE
    entry = _Entry(name, flags, method, dos_time, dos_date, crc, compressed_size,
                   file_size, _external_attr(mode), header_offset=offset,
                   data_offset=variable_end, mtime=_parse_timestamp_extra(extra))
    entry.provenance = _find_extra_field(extra, _PROVENANCE_ID)
    return entry


def _new_decompressor(method):
    # zipfile's own factory knows the LZMA property header (APPNOTE 5.8.8) and
    # zstd on 3.14; it has had this name and signature since Python 3.6.
    return zipfile._get_decompressor(method)


def _decompressed_pieces(decompressor, data):
    """Yield what ``data`` decompresses to, at most _CHUNK bytes at a time
    (``data`` itself for a stored member, whose decompressor is None).

    A decompress() without a limit returns all at once: a sparse file's
    member (a few KB for hundreds of MB of zeros) or a zip bomb would be
    held whole in memory, however little the caller asked for.
    """
    if decompressor is None:
        yield data
    elif hasattr(decompressor, "unconsumed_tail"):    # zlib: deflate
        yield decompressor.decompress(data, _CHUNK)
        while decompressor.unconsumed_tail:
            yield decompressor.decompress(decompressor.unconsumed_tail, _CHUNK)
    elif hasattr(decompressor, "needs_input"):        # bz2, lzma, zstd
        yield decompressor.decompress(data, _CHUNK)
        while not decompressor.needs_input and not decompressor.eof:
            yield decompressor.decompress(b"", _CHUNK)
    else:
        for start in range(0, len(data), _UNLIMITED_DECOMPRESSOR_INPUT):
            yield decompressor.decompress(data[start:start + _UNLIMITED_DECOMPRESSOR_INPUT])


def _is_entry_data_intact(reader, entry):
    """Decompress ``entry`` read through ``reader``: size, CRC-32 and a
    complete stream."""
    if entry.method == zipfile.ZIP_STORED and entry.compressed_size <= _SMALL_ENTRY:
        # Most of a claim's checks of medium stored entries: no decompressor,
        # no copy of the data.
        try:
            data = reader.view_exact(entry.data_offset, entry.compressed_size)
        except TempZipError:   # truncated under us
            return False
        return entry.compressed_size == entry.file_size and zlib.crc32(data) == entry.crc
    try:
        decompressor = _new_decompressor(entry.method)
    except (NotImplementedError, RuntimeError):
        return False
    crc = 0
    produced = 0
    offset = entry.data_offset
    remaining = entry.compressed_size
    try:
        while remaining:
            # Small entries come from the reader's buffer; big ones bypass it.
            if remaining <= _SMALL_ENTRY:
                chunk = reader.read(offset, remaining)
            else:
                chunk = os.pread(reader.fd, min(remaining, _CHUNK), offset)
            if not chunk:
                return False
            offset += len(chunk)
            remaining -= len(chunk)
            for data in _decompressed_pieces(decompressor, chunk):
                crc = zlib.crc32(data, crc)
                produced += len(data)
                if produced > entry.file_size:
                    return False
        if decompressor is not None and hasattr(decompressor, "flush"):
            data = decompressor.flush()
            crc = zlib.crc32(data, crc)
            produced += len(data)
    except (zlib.error, EOFError, OSError, ValueError, LookupError):
        return False
    if decompressor is not None and (not getattr(decompressor, "eof", True)
                                     or getattr(decompressor, "unused_data", b"")):
        # All the bytes and the right CRC, but a stream that never ends (a
        # cleared BFINAL bit) or has bytes after its end: other readers
        # refuse it.  Found by fuzzing.
        return False
    return produced == entry.file_size and crc == entry.crc


def _salvage_entries(fd, size, path):
    """Recover every complete, CRC-correct entry of a zip from its local headers.

    Returns (entries, what follows them: "" if nothing, else a description).
    Scanning stops at the first header that is missing, torn, encrypted,
    uses a data descriptor (its sizes cannot be trusted before the data) or
    fails its CRC: a writer appends strictly in order, so nothing
    acknowledged can follow a torn entry.  What follows must be what a
    killed writer leaves, or the file is not a temp zip rear wrote (or it
    is damaged) and TempZipError says so: rear deletes only what it wrote.
    """
    entries = []
    offset = 0
    reader = _ChunkReader(fd, path)
    while True:
        entry = _read_local_header(reader, offset, size)
        if entry is None or entry.flags & ~(_FLAG_COMPRESSION_OPTIONS | _FLAG_UTF8):
            break
        end = entry.data_offset + entry.compressed_size
        if end > size or not _is_entry_data_intact(reader, entry):
            break
        entries.append(entry)
        offset = end
    return entries, _describe_rest(reader, offset, size, path, len(entries))


def _describe_rest(reader, offset, size, path, good):
    """What follows a temp zip's last complete entry, if a killed writer can
    have left it: the start of an entry (torn), of the central directory a
    seal was writing, or of a region never written (zeros: a power loss
    dropped a write the file's size already covered)."""
    rest = size - offset
    if not rest:
        return ""
    head = reader.read(offset, 4)
    if _CENTRAL_SIG.startswith(head):
        return "its central directory (%d bytes, not needed)" % rest
    if _LOCAL_SIG.startswith(head) or head == bytes(len(head)):
        return "%d torn bytes dropped" % rest
    if not offset:
        raise TempZipError("%s does not start with a zip entry: it is not a temp zip rear "
                           "wrote, or it is damaged; it is left in place: look at it, then "
                           "move it out of inbox/" % path, path)
    raise TempZipError("%s: the %d bytes after its last complete entry (at byte %d) are "
                       "neither a torn entry nor a central directory: damaged, or not "
                       "written by rear; it is left in place with its %d good entries: "
                       "look at it, then move it out of inbox/"
                       % (path, rest, offset, good), path)


def _read_central_entries(fd, size, path, error, check_small=False, sidecar=None):
    """Entries of a complete zip, with data offsets taken from local headers.

    With ``check_small``, entries whose bytes pass through Python when
    appended (up to _SMALL_ENTRY) are also checked: against the CRC-32
    runs rear's writer recorded in the sealed ``sidecar`` (``small_crc``
    and ``medium_crc``, see the module docstring), stored entries outside
    the runs' data by their own CRC-32, and any entry no run covers by
    decompressing it.  That is done while claiming, not while appending: a
    damaged temp zip must be left out before its batch is committed, or it
    would fail that commit on every pass and hold up the healthy temp zips
    batched with it.  Larger entries are copied raw by copy_file_range;
    ``rear verify`` checks them.
    """
    small_crc, small_limit, medium_crc, medium_limit = _recorded_runs(
        sidecar if check_small else None)
    small_ranges = []       # [start, end] of its bytes, merged where they touch
    medium_running = 0      # CRC-32 so far: medium entries are few, a call each is cheap
    directory = _read_end_records(fd, size, path, error)
    entries = list(_iter_central_entries(_ChunkReader(fd, path), directory, path, error))
    reader = _ChunkReader(fd, path)
    fixed_size = _LOCAL_STRUCT.size
    shared = {}         # one copy of each provenance: a writer puts the same on all its entries
    provenances = {}    # extra field bytes -> their provenance
    # In file order: the recorded CRC runs over the bytes in that order.
    for entry in sorted(entries, key=_header_offset):
        # Only the name is compared and the data located: what a reader
        # needs to find the entry by its central record.  One read for the
        # header, its name and the extra fields rear's writer puts there.
        offset = entry.header_offset
        raw_name = entry.raw_name
        name_end = fixed_size + len(raw_name)
        # No read-ahead into a large entry's data, which the commit copies
        # in the kernel: it read a temp zip of 1 MiB entries whole just for
        # their headers (a third of the scavenger's time on such entries).
        head = reader.read(offset, name_end + _TYPICAL_LOCAL_EXTRA,
                           ahead=entry.compressed_size <= _SMALL_ENTRY)
        matches = len(head) >= name_end and head[:4] == _LOCAL_SIG
        if matches:
            name_len, extra_len = _LOCAL_NAME_EXTRA.unpack_from(head, _LOCAL_NAME_EXTRA_OFFSET)
            matches = name_len == len(raw_name) and head[fixed_size:name_end] == raw_name
        if not matches:
            raise error("%s: entry %r has no matching local header" % (path, entry.name), path)
        entry.raw_name = None   # checked: not held with the batch
        entry.data_offset = offset + name_end + extra_len
        if extra_len:    # the writer's provenance, for the archive's local header
            extra = head[name_end:name_end + extra_len]
            if len(extra) < extra_len:
                extra = reader.read(offset + name_end, extra_len)
            # Keyed by the whole extra: entries written in the same second
            # by one writer have the same, and are looked at once.
            provenance = provenances.get(extra, provenances)
            if provenance is provenances:
                if len(provenances) >= _EXTRA_MEMO_MAX:
                    provenances.clear()
                provenance = _provenance_field(extra)
                provenance = provenances[extra] = shared.setdefault(provenance, provenance)
            entry.provenance = provenance
        end = entry.data_offset + entry.compressed_size
        if end > directory.cd_offset:
            raise error("%s: entry %r runs into the central directory" % (path, entry.name), path)
        compressed = entry.compressed_size
        covered = compressed <= small_limit
        if covered:
            if small_ranges and small_ranges[-1][1] == offset:
                small_ranges[-1][1] = end
            else:
                small_ranges.append([offset, end])
        elif compressed <= medium_limit:
            # The header, and the data unless stored: a stored entry's data
            # is checked by its own CRC-32 below.
            header_size = name_end + extra_len
            header = (head[:header_size] if len(head) >= header_size
                      else reader.read_exact(offset, header_size))
            medium_running = zlib.crc32(header, medium_running)
            covered = entry.method != zipfile.ZIP_STORED
            if covered:     # a chunk at a time: no sidecar's limit decides memory
                for chunk_start in range(entry.data_offset, end, _CHUNK):
                    medium_running = zlib.crc32(
                        reader.view_exact(chunk_start, min(_CHUNK, end - chunk_start)),
                        medium_running)
        if (not covered and check_small and compressed <= _SMALL_ENTRY
                and _is_copyable(entry) and not _is_entry_data_intact(reader, entry)):
            # (an entry rear would not copy anyway gets its precise error
            # from the claim)
            raise _damaged_entry_error(path, entry.name, error)
    if ((small_crc is not None and _crc_of_ranges(fd, small_ranges, path) != small_crc)
            or (medium_crc is not None and medium_running != medium_crc)):
        raise _damaged_entry_error(path, None, error)
    return entries


def _recorded_runs(sidecar):
    """(small_crc, small_limit, medium_crc, medium_limit) of a sealed
    ``sidecar``, a limit of -1 for a run it does not record (rear 1.4's
    record small_crc alone, up to 64 KiB; older ones none)."""
    small_crc = medium_crc = None
    small_limit = medium_limit = -1
    if sidecar is not None and None not in (sidecar.small_crc, sidecar.small_limit):
        small_crc, small_limit = sidecar.small_crc, sidecar.small_limit
        if None not in (sidecar.medium_crc, sidecar.medium_limit):
            medium_crc, medium_limit = sidecar.medium_crc, sidecar.medium_limit
    return small_crc, small_limit, medium_crc, medium_limit


def _crc_of_ranges(fd, ranges, path):
    """CRC-32 of the bytes of [start, end] ``ranges`` of a file, in order,
    read _CHUNK at a time: a temp zip's small entries are one range, so
    checking 10,000 of them is a few reads, not a call per entry."""
    running = 0
    for start, end in ranges:
        for chunk_start in range(start, end, _CHUNK):
            running = zlib.crc32(_pread_exact(fd, min(_CHUNK, end - chunk_start), chunk_start,
                                              path), running)
    return running


def _is_copyable(entry):
    """Does rear understand the entry's flags and compression method?"""
    return not entry.flags & ~_FLAGS_UNDERSTOOD and entry.method in _COMPRESSION_METHODS


def _header_offset(entry):
    return entry.header_offset


def _damaged_entry_error(path, name, error):
    what = ("entry %r fails its" % name if name is not None
            else "its small entries fail their")
    return error("%s: %s integrity check (CRC, size or end of stream; damaged on "
                 "disk?); the temp zip is left in place" % (path, what), path)


# ---------------------------------------------------------------- structure check
#
# What rear checks before it appends to an archive it did not write.


#: Read-ahead of the structure check's walk over local headers: headers of
#: small entries share one read, a big entry's header costs one small read.
_LOCAL_HEADER_READAHEAD = 64 * 1024
#: The shortest data descriptor (4.3.9: CRC and two 32-bit sizes) that
#: follows an entry whose flags say its sizes come after its data.
_DATA_DESCRIPTOR_MIN = 12


class _Inconsistent(Exception):
    """An archive's structure contradicts itself; the message says where."""


def _check_structure(fd, size, directory, path):
    """Raise _Inconsistent at the first inconsistency of the zip open on
    ``fd`` (``size`` bytes, its end records read into ``directory``).

    What rear checks before its first append to an archive it did not
    write: readers resolve a contradiction each in their own way (Info-ZIP
    unzip, zipfile and libarchive each accept archives the others refuse),
    and entries appended after one end up where some of them no longer
    look.  In order: the end records agree with each other and describe one
    disk (4.3.14-4.3.16); no name is empty or undecodable; each record's
    local header is where it says, with the same name, method, flags that
    change the reading and, unless its sizes follow the data, the same CRC
    and sizes; the records fill the central directory exactly; every entry
    lies before the central directory and none overlaps another.  That
    nothing but the comment follows the end record is _read_end_records'
    check.  About 5 us per entry here (a rear archive whose index was lost
    pays it once, with the index rebuild).
    """
    _check_end_records(fd, size, directory)
    records = _ChunkReader(fd, path)
    headers = _ChunkReader(fd, path, readahead=_LOCAL_HEADER_READAHEAD)
    starts, ends = array.array("Q"), array.array("Q")
    in_order = True
    records_end = 0
    for position, fields, raw_name, extra in _iter_central_records(records, directory, path,
                                                                   error=_inconsistent):
        where = directory.cd_offset + position
        if not raw_name:
            raise _Inconsistent("the entry whose central record is at byte %d has an empty "
                                "name" % where)
        if not raw_name.isascii():
            _decode_central_name(raw_name, fields[_CD_FLAG_BITS], path, where, _inconsistent)
        start = _central_sizes(fields, extra)[2]
        end = _check_local_header(headers, fields, raw_name, extra, directory.cd_offset)
        if starts and start < starts[-1]:
            in_order = False
        starts.append(start)
        ends.append(end)
        records_end = (position + _CENTRAL_STRUCT.size + len(raw_name) + len(extra)
                       + fields[_CD_COMMENT_LENGTH])
    if records_end != directory.cd_size:
        raise _Inconsistent("its central directory has %d bytes after its %s (a length in "
                            "a record, or the entry count, is wrong)" % (
                                directory.cd_size - records_end,
                                _counted(directory.count, "record")))
    order = range(len(starts)) if in_order else sorted(range(len(starts)),
                                                       key=starts.__getitem__)
    previous = None
    for number in order:
        if previous is not None and starts[number] < ends[previous]:
            raise _Inconsistent("the entry at byte %d starts inside the one at byte %d "
                                "(bytes %d to %d)" % (starts[number], starts[previous],
                                                      starts[previous], ends[previous]))
        previous = number


def _inconsistent(message, _path=None):
    """An _Inconsistent from a parser's ``error(message, path)`` call, without
    the path its messages start with (the caller's message names it)."""
    prefix, separator, rest = message.partition(": ")
    return _Inconsistent(rest if separator and os.sep in prefix else message)


def _check_end_records(fd, size, directory):
    """The end record and a zip64 end record agree, and describe one disk."""
    eocd_offset = size - len(directory.comment) - _EOCD_STRUCT.size
    fields = _EOCD_STRUCT.unpack(os.pread(fd, _EOCD_STRUCT.size, eocd_offset))
    _check_one_disk(fields[_EOCD_DISK_NUMBER], fields[_EOCD_CD_DISK],
                    fields[_EOCD_ENTRIES_THIS_DISK], fields[_EOCD_ENTRIES_TOTAL])
    locator_offset = eocd_offset - _ZIP64_LOCATOR_STRUCT.size
    locator = (os.pread(fd, _ZIP64_LOCATOR_STRUCT.size, locator_offset)
               if locator_offset >= 0 else b"")
    if locator[:4] != _ZIP64_LOCATOR_SIG:
        return
    zip64_offset = _ZIP64_LOCATOR_STRUCT.unpack(locator)[_ZIP64_LOCATOR_EOCD_OFFSET]
    zip64 = _ZIP64_EOCD_STRUCT.unpack(os.pread(fd, _ZIP64_EOCD_STRUCT.size, zip64_offset))
    _check_one_disk(zip64[_ZIP64_EOCD_DISK_NUMBER], zip64[_ZIP64_EOCD_CD_DISK],
                    zip64[_ZIP64_EOCD_ENTRIES_THIS_DISK], zip64[_ZIP64_EOCD_ENTRIES_TOTAL])
    for what, field, field64, limit in (
            ("entry count", _EOCD_ENTRIES_TOTAL, _ZIP64_EOCD_ENTRIES_TOTAL, _U16_LIMIT),
            ("central directory size", _EOCD_CD_SIZE, _ZIP64_EOCD_CD_SIZE, _U32_LIMIT),
            ("central directory offset", _EOCD_CD_OFFSET, _ZIP64_EOCD_CD_OFFSET, _U32_LIMIT)):
        if fields[field] not in (limit, zip64[field64]):
            raise _Inconsistent("its end record and zip64 end record disagree on the %s "
                                "(%d and %d)" % (what, fields[field], zip64[field64]))


def _check_one_disk(disk, cd_disk, entries_here, entries):
    """An end record's fields say the archive is one file, not a split one."""
    if disk or cd_disk or entries_here != entries:
        raise _Inconsistent("its end record describes one part of an archive split over "
                            "several files (disk %d, central directory on disk %d, %d of %d "
                            "entries here)" % (disk, cd_disk, entries_here, entries))


def _check_local_header(reader, fields, raw_name, extra, cd_offset):
    """Check the local header of the central record ``fields`` (its name
    ``raw_name`` and extra field ``extra``) against it; returns the offset
    where the entry ends."""
    file_size, compressed_size, offset = _central_sizes(fields, extra)
    name_end = _LOCAL_STRUCT.size + len(raw_name)
    header = reader.read(offset, name_end) if offset < cd_offset else b""
    where = "entry %r: " % raw_name.decode("utf-8", "backslashreplace")
    if len(header) < _LOCAL_STRUCT.size or header[:4] != _LOCAL_SIG:
        raise _Inconsistent(where + "no local header at byte %d, where its central record "
                            "says it is" % offset)
    local = _LOCAL_STRUCT.unpack_from(header)
    name_length, extra_length = local[_LH_FILENAME_LENGTH], local[_LH_EXTRA_FIELD_LENGTH]
    if name_length != len(raw_name) or header[_LOCAL_STRUCT.size:] != raw_name:
        local_name = reader.read(offset + _LOCAL_STRUCT.size, name_length)
        raise _Inconsistent(where + "its local header at byte %d names it %r" % (
            offset, local_name.decode("utf-8", "backslashreplace")))
    flags = local[_LH_FLAG_BITS]
    for what, in_local, in_central in (
            ("compression method %d", local[_LH_COMPRESS_TYPE], fields[_CD_COMPRESS_TYPE]),
            ("flags %#06x", flags & _FLAGS_READ_BY, fields[_CD_FLAG_BITS] & _FLAGS_READ_BY)):
        if in_local != in_central:
            raise _Inconsistent(where + ("its local header says %s, its central record %s"
                                         % (what % in_local, what % in_central)))
    if not flags & _FLAG_DATA_DESCRIPTOR:
        sizes = [local[_LH_UNCOMPRESSED_SIZE], local[_LH_COMPRESSED_SIZE]]
        if _U32_LIMIT in sizes:
            # 4.5.3: a local zip64 field holds both sizes, in this order.
            sizes = _parse_zip64_extra(reader.read(offset + name_end, extra_length), 2) or sizes
        in_local = (local[_LH_CRC], *sizes)
        in_central = (fields[_CD_CRC], file_size, compressed_size)
        if in_local != in_central:
            raise _Inconsistent(where + "its local header says CRC %08x, size %d, compressed "
                                "%d; its central record %08x, %d, %d" % (in_local + in_central))
    end = (offset + name_end + extra_length + compressed_size
           + (_DATA_DESCRIPTOR_MIN if flags & _FLAG_DATA_DESCRIPTOR else 0))
    if end > cd_offset:
        raise _Inconsistent(where + "its data (from byte %d) runs past the start of the "
                            "central directory at byte %d" % (offset, cd_offset))
    return end


# ---------------------------------------------------------------- paths


def split_path(path):
    """Split ``"sub/name.zip/member/path"`` into ``("sub/name.zip", "member/path")``.

    The archive is the path up to and including the first component ending in
    ``.zip``.  Raises PathError (a ValueError) naming the bad part.
    """
    if isinstance(path, bytes):
        try:
            path = path.decode("utf-8")
        except UnicodeDecodeError as err:
            raise PathError("archive path %r is not valid UTF-8; pass a str" % (path,)) from err
    if not isinstance(path, str):
        raise PathError("archive path must be a str like 'ar.zip/dir/file.txt', not %s"
                        % type(path).__name__)
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError as err:
        raise _not_utf8_error(path) from err
    if len(encoded) > _MAX_NAME:
        raise PathError("archive path is %d UTF-8 bytes long; zip names are limited to %d"
                        % (len(encoded), _MAX_NAME))
    if "\x00" in path:
        raise PathError("archive path %r contains a NUL character" % (path,))
    if "\\" in path:
        raise PathError("archive path %r contains a backslash; use '/' between components"
                        % (path,))
    if path.startswith("/"):
        raise PathError("archive path %r is absolute; give it relative to the base, "
                        "like 'ar.zip/file.txt'" % (path,))
    components = path.split("/")
    for component in components:
        if component in ("", ".", ".."):
            raise PathError("archive path %r has a %r component; components must be "
                            "non-empty and not '.' or '..'" % (path, component))
        if len(component.encode("utf-8")) > _MAX_COMPONENT:
            raise _component_too_long_error(path, component)
    if components[0] == _INBOX:
        raise PathError("archive path %r starts with %r, which rear reserves for its "
                        "temporary files" % (path, _INBOX))
    for index, component in enumerate(components):
        if component.lower().endswith(".zip") and len(component) > len(".zip"):
            dest = "/".join(components[:index + 1])
            member = "/".join(components[index + 1:])
            if not member:
                raise PathError("archive path %r names an archive but no member inside "
                                "it; add '/file-name'" % (path,))
            return dest, member
    raise PathError("archive path %r has no component ending in '.zip'; it must look "
                    "like 'name.zip/member/path'" % (path,))


def _check_dest(dest):
    """Refuse what is not the path of an archive in a base (``sub/name.zip``)."""
    try:
        valid = split_path(dest + "/_")[0] == dest
    except PathError:
        valid = False
    if not valid:
        raise PathError("%r is not an archive path; give one like 'results.zip' or "
                        "'sub/name.zip'" % (dest,))


def _not_utf8_error(path):
    """PathError naming the component of ``path`` that is not UTF-8 text (a
    lone surrogate: a file name in another encoding, as os.listdir gives it)."""
    bad = next((component for component in path.split("/")
                if not _is_utf8_encodable(component)), path)
    return PathError("archive path %r: component %r is not valid UTF-8 (a file name in "
                     "another encoding?); rename it, zip names are UTF-8" % (path, bad))


def _is_utf8_encodable(text):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _component_too_long_error(path, component):
    return PathError("archive path %r...: component %r... is %d UTF-8 bytes; unzip and "
                     "most filesystems cannot extract a name longer than %d"
                     % (path[:60], component[:40], len(component.encode("utf-8")),
                        _MAX_COMPONENT))


def _split_known(path, known):
    """split_path(path), reusing what ``known`` (a dict this fills) holds
    about the directory part: of 100,000 files most share a few directories,
    and splitting every name in full was a tenth of a scavenger pass.  Only
    the last component and the whole length are checked again."""
    directory, _slash, last = path.rpartition("/")
    split = known.get(directory)
    if (split is not None and last not in ("", ".", "..") and "\x00" not in last
            and "\\" not in last
            and (len(path) <= _MAX_NAME and len(last) <= _MAX_COMPONENT if path.isascii()
                 else _is_utf8_encodable(path) and len(path.encode("utf-8")) <= _MAX_NAME
                 and len(last.encode("utf-8")) <= _MAX_COMPONENT)):
        dest, prefix = split
        return dest, (prefix + "/" + last if prefix else last)
    dest, member = split_path(path)
    if directory and member.endswith(last) and len(dest) <= len(directory):
        known[directory] = (dest, member[:-len(last) - 1] if member != last else "")
    return dest, member


def _route_name(name, known):
    """(dest, member) of a temp zip's entry name, as _split_known; a
    directory entry keeps its trailing "/" (the zip convention)."""
    if name.endswith("/"):
        dest, member = _split_known(name[:-1], known)
        return dest, member + "/"
    return _split_known(name, known)


def _rolled_name(file_name):
    """(``stem.zip``, N) if ``file_name`` is ``stem.~N~.zip``, else None."""
    extension = file_name[-len(".zip"):]
    if extension.lower() != ".zip":
        return None
    stem, mark, number = file_name[:-len(extension)].rpartition(_ROLLED_MARK)
    if not (mark and stem and number.endswith(_ROLLED_END)):
        return None
    number = number[:-len(_ROLLED_END)]
    if not (number.isascii() and number.isdigit() and number[0] != "0"):
        return None
    return stem + extension, int(number)


def _rolled_path(archive, number):
    """Where ``archive`` (``.../stem.zip``) goes as the series' ``number``th."""
    stem, extension = archive[:-len(".zip")], archive[-len(".zip"):]
    return "%s%s%d%s%s" % (stem, _ROLLED_MARK, number, _ROLLED_END, extension)


def _entry_name(path, known):
    """The temp-zip entry name of an archive path: validated, as a str.
    ``known`` caches the split of directories, as _split_known does."""
    if not isinstance(path, str):
        dest, member = split_path(path)    # decoded or refused there
    else:
        if len(known) > _KNOWN_DIRECTORIES:
            known.clear()    # a worker writing to ever new directories
        dest, member = _split_known(path, known)
    if _ROLLED_MARK in dest:
        rolled = _rolled_name(dest.rpartition("/")[2])
        if rolled is not None:
            series = dest[:-len(dest.rpartition("/")[2])] + rolled[0]
            raise PathError("archive path %r names %r, which is how rear names a rolled-over "
                            "archive (%s rolls over to %s, ...); write to %r or choose "
                            "another name" % (path, dest, series, _rolled_path(series, 1),
                                              series))
    return dest + "/" + member


def _is_inside(base, path):
    """True if ``path`` resolves (following links) to somewhere under ``base``."""
    real_base = os.path.realpath(base)
    real = os.path.realpath(path)
    return real == real_base or real.startswith(real_base + os.sep)


# ---------------------------------------------------------------- sidecar
#
# The one home of the sidecar's keys (layout in the module docstring): the
# rest of rear reads and writes a _Sidecar's attributes, never a key.


class _Sidecar:
    """A temp zip's manifest sidecar, ``<stem>.json``: who writes the temp
    zip, whether it is sealed, and which archives it has already fed."""

    #: Every key, with its JSON type(s); ``_OPTIONAL`` ones only once sealed.
    #: ``rotation_span`` is the writer's (absent from rear 1.1's sidecars):
    #: a scavenger run with a shorter one waits for the writer's grace period.
    _KEYS = {"format": str, "version": int, "host": str, "pid": int,
             "created": (int, float), "state": str, "entries": int, "bytes": int,
             "done": list, "sealed": (int, float), "small_crc": int, "small_limit": int,
             "medium_crc": int, "medium_limit": int, "rotation_span": (int, float)}
    _OPTIONAL = ("sealed", "small_crc", "small_limit", "medium_crc", "medium_limit",
                 "rotation_span")

    __slots__ = ("format", "version", "host", "pid", "created", "state", "entries",
                 "bytes", "done", "sealed", "small_crc", "small_limit", "medium_crc",
                 "medium_limit", "rotation_span")

    def __init__(self, created, host=None, pid=None, rotation_span=None):
        self.format = _MANIFEST_FORMAT
        self.version = _MANIFEST_VERSION
        self.host = host if host is not None else socket.gethostname()
        self.pid = pid if pid is not None else os.getpid()
        self.created = created
        self.state = _STATE_OPEN
        self.entries = 0
        self.bytes = 0
        self.done = []
        self.sealed = self.small_crc = self.small_limit = None
        self.medium_crc = self.medium_limit = None
        self.rotation_span = rotation_span

    def grace(self, grace):
        """The grace period before this writer's unsealed temp zip is taken:
        ``grace`` (the scavenger's), or the writer's own if that is longer."""
        if self.rotation_span is None:
            return grace
        return max(grace, _GRACE_SPANS * self.rotation_span)

    @property
    def is_sealed(self):
        return self.state == _STATE_SEALED

    def mark_sealed(self, entries, size, small_crc, medium_crc):
        self.state = _STATE_SEALED
        self.entries, self.bytes, self.sealed = entries, size, time.time()
        self.small_crc, self.small_limit = small_crc, _SMALL_CRC_LIMIT
        self.medium_crc, self.medium_limit = medium_crc, _SMALL_ENTRY

    def to_json(self):
        return {key: getattr(self, key) for key in self._KEYS
                if getattr(self, key) is not None or key not in self._OPTIONAL}

    @classmethod
    def from_json(cls, document, path):
        """The sidecar ``document`` describes, or TempZipError naming ``path``."""
        if not isinstance(document, dict) or document.get("format") != _MANIFEST_FORMAT:
            raise _not_a_sidecar_error(path)
        version = document.get("version")
        if isinstance(version, int) and version > _MANIFEST_VERSION:
            raise TempZipError("sidecar %s has manifest version %s, newer than this rear "
                               "understands; upgrade rear" % (path, version), path)
        sidecar = cls.__new__(cls)
        for key, kind in cls._KEYS.items():
            value = document.get(key)
            if value is None and key in cls._OPTIONAL:
                setattr(sidecar, key, None)
                continue
            if isinstance(value, bool) or not isinstance(value, kind):
                raise _not_a_sidecar_error(path, key)
            setattr(sidecar, key, value)
        if sidecar.state not in (_STATE_OPEN, _STATE_SEALED) \
                or not all(isinstance(dest, str) for dest in sidecar.done):
            raise _not_a_sidecar_error(path)
        return sidecar


def _not_a_sidecar_error(path, key=None):
    return TempZipError("sidecar %s is not a rear manifest%s; inspect it, then delete it to "
                        "let the zip be salvaged"
                        % (path, " (%r missing or not of its type)" % key if key else ""), path)


def _sidecar_path(zip_path):
    return zip_path[:-len(_TEMP_SUFFIX)] + _SIDECAR_SUFFIX


def _write_sidecar(path, sidecar):
    _write_file_durably(path, json.dumps(sidecar.to_json(), sort_keys=True).encode("utf-8"))


def _read_sidecar(path):
    """The sidecar at ``path``; None if missing; TempZipError if unreadable."""
    try:
        raw = _read_existing(path)
    except OSError as err:
        raise TempZipError("cannot read sidecar %s: %s" % (path, err), path) from err
    if raw is None:
        return None
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise TempZipError("sidecar %s is not valid JSON (%s); inspect it, then delete "
                           "it to let the zip be salvaged" % (path, err), path) from err
    return _Sidecar.from_json(document, path)


# ---------------------------------------------------------------- settings
#
# Every setting is checked where it is given, here, for the library and the
# CLI alike: the CLI turns these ValueErrors into usage errors.

_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}


def _parse_size(text):
    """Bytes of a size like "50G", "512MiB" or "1000000"; ValueError if it is not one."""
    raw = text.strip().upper()
    for suffix in ("IB", "B"):
        if raw.endswith(suffix) and raw[:-len(suffix)][-1:] in _SIZE_UNITS:
            raw = raw[:-len(suffix)]
            break
    unit = raw[-1:] if raw[-1:] in "KMGT" else ""
    number = raw[:-1] if unit else raw
    try:
        value = int(float(number) * _SIZE_UNITS[unit])
    except (ValueError, OverflowError):
        raise ValueError("%r is not a size like 50G, 512M or 1000000" % text) from None
    if value <= 0:
        raise ValueError("size must be positive, not %r" % text)
    return value


def _max_size(value):
    """max_size as a positive number of bytes; a size string like the CLI's
    ("50G", "512M") is accepted too."""
    if isinstance(value, str):
        try:
            return _parse_size(value)
        except ValueError as err:
            raise ValueError("max_size %s" % err) from None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("max_size must be a positive number of bytes or a size like '50G', "
                         "not %r" % (value,))
    return value


class _Limits:
    """When an archive is rolled over: at ``max_size`` bytes or
    ``max_entries`` entries, whichever comes first."""

    __slots__ = ("max_size", "max_entries")

    def __init__(self, max_size, max_entries):
        self.max_size = _max_size(max_size)
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError("max_entries must be a positive number of entries, not %r"
                             % (max_entries,))
        self.max_entries = max_entries


def _rotation_or_env(rotation_span):
    """The rotation span in seconds: given, else $REAR_ROTATION, else the default."""
    if rotation_span is None:
        raw = os.environ.get("REAR_ROTATION")
        if raw:
            try:
                rotation_span = float(raw)
            except ValueError as err:
                raise ValueError("REAR_ROTATION=%r is not a number of seconds" % raw) from err
        else:
            rotation_span = DEFAULT_ROTATION_SPAN
    if isinstance(rotation_span, bool) or not isinstance(rotation_span, (int, float)):
        raise ValueError("rotation_span must be a number of seconds, not %r" % (rotation_span,))
    if not 0 < rotation_span <= _MAX_ROTATION_SPAN:   # also refuses nan and inf
        raise ValueError("rotation_span must be more than 0 and at most %d seconds (a week), "
                         "not %r: a dead writer's temp zip waits twice the span before it "
                         "is salvaged" % (_MAX_ROTATION_SPAN, rotation_span))
    return float(rotation_span)


def _shard_or_env(shard_inbox):
    """Whether a writer shards the inbox: given, else $REAR_SHARD_INBOX."""
    if shard_inbox is None:
        raw = os.environ.get("REAR_SHARD_INBOX", "").strip().lower()
        if raw in ("", "0", "no", "false"):
            return False
        if raw in ("1", "yes", "true"):
            return True
        raise ValueError("REAR_SHARD_INBOX=%r: give 1 (each host's temp zips in a directory "
                         "of its own, inbox/hosts/HOST/) or 0 (all in inbox/)"
                         % os.environ["REAR_SHARD_INBOX"])
    if not isinstance(shard_inbox, bool):
        raise ValueError("shard_inbox must be True or False, not %r" % (shard_inbox,))
    return shard_inbox


def _base_or_env(base):
    """The base as given, else $REAR_BASE (not checked: see _checked_base)."""
    if base is None:
        base = os.environ.get("REAR_BASE")
        if not base:
            raise ValueError("no base directory given and REAR_BASE is not set")
    return os.fspath(base)


def _checked_base(base, *, writing=False, may_be_missing=False, whole=False):
    """The absolute path of a base directory this user can use, else
    RearError naming what is wrong and what to do.

    A reader needs the base to exist and be readable; a scavenger
    (``writing``) needs it readable and writable, and its ``inbox/`` too if
    there is one; a writer (``writing`` and ``may_be_missing``) needs only
    that what exists of the two is a writable directory: its first temp
    zip creates them.  A command that works on a ``whole`` base refuses a
    directory that is not one but holds bases below it (its parent, say):
    it would find nothing to do and say so, while their temp zips wait.
    """
    base = os.path.abspath(_base_or_env(base))
    if writing and may_be_missing and _is_usable_inbox(os.path.join(base, _INBOX)):
        return base
    if not may_be_missing:
        _check_existing_base(base, writing)
    if whole:
        _check_not_above_bases(base)
    if writing:
        for path in (base, os.path.join(base, _INBOX)) if may_be_missing \
                else (os.path.join(base, _INBOX),):
            if not _is_writable_directory(path):
                _check_creatable(path)
                break
    return base


def _is_usable_inbox(path):
    """Is ``path`` a directory this user can create files in?  What a
    writer starting in an existing base needs, in two calls (each rear_fs
    made four, the base's too, on the metadata server of a campaign's
    every worker); anything else is left to the full check, which says
    what is wrong."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or not os.access(path, os.W_OK | os.X_OK):
        return False
    if os.geteuid() == 0:
        _directory_owner(path, st)      # the first temp zip's create asks for it
    return True


def _check_shard_directory(shard):
    """RearError, said when the rear_fs is entered, if a writer of a
    sharded inbox could not use or create its host's directory ``shard``
    (``inbox/hosts/HOST``)."""
    for path in (os.path.dirname(shard), shard):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            _check_creatable(path)
            return
        if not stat.S_ISDIR(st.st_mode):
            raise RearError("%s is not a directory; a sharded inbox keeps each host's temp "
                            "zips in inbox/hosts/HOST/: move it out of the inbox" % path, path)
        if not os.access(path, os.W_OK | os.X_OK):
            raise RearError("%s is not writable by this user; give rear a base directory the "
                            "job can write to" % path, path)


def _check_creatable(path):
    """RearError if the first write could not create ``path`` (and the
    directories above it that are missing): said when the rear_fs is
    entered, not as a bare PermissionError from the first file's exit."""
    parent = os.path.dirname(path)
    while parent != os.path.dirname(parent) and not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if os.path.isdir(parent) and not os.access(parent, os.W_OK | os.X_OK):
        raise RearError("%s cannot be created: %s is not writable by this user; give rear a "
                        "base directory the job can write to" % (path, parent), path)


def _check_existing_base(base, writing):
    try:
        st = os.stat(base)
    except FileNotFoundError:
        raise RearError("base directory %s does not exist; check the path (or $REAR_BASE)"
                        % base, base) from None
    except PermissionError as err:
        raise RearError("base directory %s cannot be reached by this user: %s"
                        % (base, err.strerror), base) from None
    if not stat.S_ISDIR(st.st_mode):
        raise RearError("%s is not a directory; give the base directory, the one that "
                        "holds inbox/" % base, base)
    if not os.access(base, os.R_OK | os.X_OK | (os.W_OK if writing else 0)):
        raise RearError("base directory %s cannot be %s by this user; run as its owner or "
                        "fix its permissions" % (base, "read and written" if writing
                                                 else "read"), base)


def _check_not_above_bases(path, depth=3):
    """RearError naming the bases found up to ``depth`` levels below
    ``path``, if it holds some and is not a base itself."""
    if os.path.isdir(os.path.join(path, _INBOX)):
        return
    found = []
    for directory, subdirs, _files in os.walk(path):
        level = directory[len(path):].count(os.sep)
        if directory != path and _looks_like_inbox(os.path.join(directory, _INBOX)):
            found.append(directory)
            subdirs[:] = []
        elif level >= depth:
            subdirs[:] = []
        subdirs.sort()
    if found:
        shown = ", ".join(found[:5]) + (" and %d more" % (len(found) - 5)
                                        if len(found) > 5 else "")
        raise RearError("%s is not a base directory (it has no inbox/) but holds %s below "
                        "it: %s; give the base directory itself"
                        % (path, "a base" if len(found) == 1 else "bases", shown), path)


def _looks_like_inbox(path):
    """Is ``path`` a rear inbox (temp zips, sidecars or archives/ in it)?"""
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return any(name in (_ARCHIVES_DIR, _SHARDS_DIR)
               or name.endswith((_TEMP_SUFFIX, _SIDECAR_SUFFIX))
               for name in names)


def _is_writable_directory(path):
    """True if ``path`` is a directory this user can write to, False if it
    does not exist yet, else RearError naming it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False      # created with the first temp zip
    if not stat.S_ISDIR(st.st_mode):
        raise RearError("%s is not a directory; rear needs a directory as its base "
                        "(it keeps temporary zips in BASE/inbox/)" % path, path)
    if not os.access(path, os.W_OK | os.X_OK):
        raise RearError("%s is not writable by this user; give rear a base "
                        "directory the job can write to" % path, path)
    return True


# ---------------------------------------------------------------- temp zip
#
# One writer's temporary zip (writer steps 1-4 of the module docstring)
# and the entries prepared for it.


def _new_temp_stem():
    # Host and pid separate processes, nanoseconds and 64 random bits separate
    # everything else (rear 0.1.2 used host-YYMMDD_HHMMSS and lost a worker's
    # files when two started in the same second).  The name is never parsed.
    return "%s-%d-%x-%s" % (_short_hostname(), os.getpid(), time.time_ns(), secrets.token_hex(8))


class _Prepared:
    """A file compressed and checksummed, ready to be appended."""

    __slots__ = ("crc", "file_size", "compressed_size", "method", "payload", "flags")

    def __init__(self, crc, file_size, compressed_size, method, payload, flags):
        self.crc = crc
        self.file_size = file_size
        self.compressed_size = compressed_size
        self.method = method
        self.payload = payload       # bytes, or a seekable binary file at offset 0
        self.flags = flags

    def close(self):
        if not isinstance(self.payload, (bytes, bytearray, memoryview)):
            self.payload.close()


def _new_compressor(method, level):
    if method == zipfile.ZIP_DEFLATED:
        return zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION if level is None else level,
                                zlib.DEFLATED, -15)
    # zipfile's factory writes the LZMA property header (APPNOTE 5.8.8);
    # private but present with this signature since Python 3.7.
    return zipfile._get_compressor(method, level)


def _method_flags(method):
    # zipfile's LZMA compressor writes an end-of-stream marker: APPNOTE 4.4.4
    # bit 1 says so, as zipfile itself sets it.
    return _FLAG_LZMA_EOS if method == zipfile.ZIP_LZMA else 0


def _prepare_bytes(data, method, level):
    """Compress a file held in memory.  Falls back to stored when that is smaller."""
    crc = zlib.crc32(data)
    if method != zipfile.ZIP_STORED:
        compressor = _new_compressor(method, level)
        compressed = compressor.compress(data) + compressor.flush()
        if len(compressed) < len(data):
            return _Prepared(crc, len(data), len(compressed), method, compressed,
                             _method_flags(method))
    return _Prepared(crc, len(data), len(data), zipfile.ZIP_STORED, bytes(data), 0)


class _Spool(io.RawIOBase):
    """A growable byte buffer in memory that moves to a TMPDIR file when large."""

    def __init__(self, readable=True):
        super().__init__()
        self._readable = readable
        self._limit = _SPOOL_MEMORY_LIMIT
        self._memory = io.BytesIO()
        self._file = None

    def _current_store(self):
        return self._memory if self._file is None else self._file

    def readable(self):
        return self._readable

    def writable(self):
        return True

    def seekable(self):
        return True

    def readinto(self, buffer):
        return self._current_store().readinto(buffer)

    def read_all_for_archive(self):
        """(bytes or None): the content when it is in memory, for the fast path."""
        return self._memory.getvalue() if self._file is None else None

    def write(self, data):
        target = self._current_store()
        if self._file is None and target.tell() + len(data) > self._limit:
            self._file = tempfile.TemporaryFile()
            self._file.write(self._memory.getbuffer())
            self._file.seek(self._memory.tell())
            self._memory = io.BytesIO()
            target = self._file
        return target.write(data)

    def seek(self, offset, whence=io.SEEK_SET):
        return self._current_store().seek(offset, whence)

    def tell(self):
        return self._current_store().tell()

    def truncate(self, size=None):
        return self._current_store().truncate(size)

    def size(self):
        target = self._current_store()
        position = target.tell()
        end = target.seek(0, io.SEEK_END)
        target.seek(position)
        return end

    def rewind_for_archive(self):
        self._current_store().seek(0)
        return self._current_store()

    def close(self):
        if self._file is not None:
            self._file.close()
        self._memory = io.BytesIO()
        super().close()


def _prepare_stream(source, method, level):
    """Compress a file read from ``source`` in chunks into a spool.

    Memory stays bounded: the compressed copy spills to TMPDIR beyond
    _SPOOL_MEMORY_LIMIT.  Stored files are only checksummed here and copied
    from ``source`` itself later (it must stay open and seekable).
    """
    crc = 0
    size = 0
    compressor = spool = None
    if method != zipfile.ZIP_STORED:
        compressor = _new_compressor(method, level)
        spool = _Spool(readable=True)
    try:
        while True:
            chunk = source.read(_CHUNK)
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
            if compressor is not None:
                spool.write(compressor.compress(chunk))
        if compressor is not None:
            spool.write(compressor.flush())
        if compressor is not None and spool.size() < size:
            spool.seek(0)
            return _Prepared(crc, size, spool.size(), method, spool, _method_flags(method))
    except BaseException:
        if spool is not None:
            spool.close()
        raise
    # Stored, or incompressible and stored as _prepare_bytes does.
    if spool is not None:
        spool.close()
    source.seek(0)
    return _Prepared(crc, size, size, zipfile.ZIP_STORED, source, 0)


class _TempZip:
    """One temporary zip: created locked, appended to, sealed or abandoned."""

    def __init__(self, inbox, sync_each_file, rotation_span):
        self.sync_each_file = sync_each_file
        self.rotation_span = rotation_span
        self.created = time.time()
        self.created_monotonic = time.monotonic()
        self.entries = []
        self.size = 0
        self.broken = False
        self.provenance = _this_process_provenance()
        # The sealed sidecar's runs, [small_crc, medium_crc] (see
        # _SMALL_CRC_LIMIT): a scavenger checks the entries up to
        # _SMALL_ENTRY with one cheap CRC instead of decompressing each (a
        # quarter of a pass of 1 KiB files).
        self.run_crcs = [0, 0]
        self.written_back = 0       # self.size when the last writeback started
        self.writeback = None       # the thread running it
        self.writeback_error = None
        # Created under a hidden name that scavengers never list, locked, and
        # only then renamed into view: a visible temp zip whose lock is free
        # therefore always belongs to a dead writer, with no window in which
        # a live writer's new file looks abandoned.
        while True:
            stem = _new_temp_stem()
            hidden = os.path.join(inbox, "." + stem + _TEMP_SUFFIX)
            try:
                self.fd = _create_file(hidden, os.O_RDWR | os.O_EXCL | _O_CLOEXEC
                                       | _O_NOFOLLOW)
                break
            except FileExistsError:
                continue
            except FileNotFoundError:
                # No stat per rotation: make inbox/ only when it is missing.
                _makedirs_durably(inbox)
        self.path = os.path.join(inbox, stem + _TEMP_SUFFIX)
        self.sidecar_path = _sidecar_path(self.path)
        # Registered before it is visible: an in-process scavenger must never
        # open it (closing its descriptor would drop this process's lock).
        with _OWN_TEMP_ZIPS_LOCK:
            _OWN_TEMP_ZIPS.add(self.path)
        try:
            try:
                _lock(self.fd, hidden, exclusive=True, blocking=True)
            except LockingUnsupportedError as err:
                _warn_no_locks(hidden, err)
            os.rename(hidden, self.path)   # the sidecar's directory fsync covers it
            self.sidecar = _Sidecar(self.created, rotation_span=self.rotation_span)
            _write_sidecar(self.sidecar_path, self.sidecar)
        except BaseException:
            _unlink_if_exists(hidden)
            _unlink_if_exists(self.path)
            self._close()
            raise

    def append(self, name, prepared, mtime, mode):
        """Write one entry; on failure cut it off again before raising."""
        dos_time, dos_date = _dos_datetime(mtime)
        entry = _Entry(name, _FLAG_UTF8 | prepared.flags, prepared.method, dos_time,
                       dos_date, prepared.crc, prepared.compressed_size,
                       prepared.file_size, _external_attr(mode), self.size,
                       mtime=_unix_seconds(mtime))
        entry.provenance = self.provenance
        header = _pack_local_header(entry, with_mode=True)
        start = self.size
        size = prepared.compressed_size
        stored = prepared.method == zipfile.ZIP_STORED
        # The run this entry is in (None: neither) and whether its data is.
        which = 0 if size <= _SMALL_CRC_LIMIT else 1 if size <= _SMALL_ENTRY else None
        data_in_run = which == 0 or (which == 1 and not stored)
        run = None if which is None else zlib.crc32(header, self.run_crcs[which])
        try:
            if isinstance(prepared.payload, (bytes, bytearray, memoryview)):
                _pwrite_all(self.fd, header + prepared.payload, start)
                if data_in_run:
                    run = zlib.crc32(prepared.payload, run)
            else:
                _pwrite_all(self.fd, header, start)
                offset = start + len(header)
                # A stored file is read a second time here (_prepare_stream
                # CRC'd the first read): what is written must be what was
                # CRC'd, or the entry fails its check after its 'with'.
                copied_crc = 0
                while True:
                    chunk = prepared.payload.read(_CHUNK)
                    if not chunk:
                        break
                    _pwrite_all(self.fd, chunk, offset)
                    offset += len(chunk)
                    if data_in_run:
                        run = zlib.crc32(chunk, run)
                    if stored:
                        copied_crc = zlib.crc32(chunk, copied_crc)
                if offset - start - len(header) != size:
                    raise RearError("%r changed size while it was archived" % name)
                if stored and copied_crc != prepared.crc:
                    raise RearError("%r changed while it was archived; archive it "
                                    "again once it is complete" % name)
            if self.sync_each_file:
                os.fsync(self.fd)
        except BaseException:
            self._cut_back(start)
            raise
        self.size = start + len(header) + size
        if which is not None:
            self.run_crcs[which] = run
        self.entries.append(entry)
        if not self.sync_each_file and self.size - self.written_back >= _WRITEBACK_BYTES:
            self._start_writeback()

    def _start_writeback(self):
        """fdatasync in a thread, one at a time: the kernel writes the
        pages out while this process goes on producing the next ones.  An
        optimisation only: a thread that cannot start changes nothing."""
        if self.writeback is not None and self.writeback.is_alive():
            return
        thread = threading.Thread(target=self._write_back, args=(self.fd,),
                                  name="rear-writeback", daemon=True)
        try:
            thread.start()
        except RuntimeError:    # "can't start new thread": at a process's thread limit
            return
        self.writeback, self.written_back = thread, self.size

    def _write_back(self, fd):
        try:
            os.fdatasync(fd)
        except OSError as err:
            # Linux reports a writeback error (EIO, ENOSPC) to the first
            # sync that sees it: kept for the seal to raise, or the seal's
            # own fsync would succeed over pages that were never written.
            self.writeback_error = err

    def _join_writeback(self):
        """Wait for a writeback in progress: its descriptor must stay open
        until it ends."""
        if self.writeback is not None:
            self.writeback.join()
            self.writeback = None

    def _finish_writeback(self):
        """_join_writeback, then raise the error the writeback met, if any."""
        self._join_writeback()
        error, self.writeback_error = self.writeback_error, None
        if error is not None:
            raise error

    def _cut_back(self, offset):
        """Remove a partly written entry so nothing torn precedes later ones."""
        try:
            os.ftruncate(self.fd, offset)
        except OSError:
            # The torn bytes stay: stop appending here, salvage will recover
            # every entry before them.  The caller still sees the first error.
            self.broken = True
            _log.exception("could not truncate %s after a failed write; it will be "
                           "abandoned and salvaged", self.path)

    def seal(self):
        """Central directory, fsync, sidecar ``sealed``; then release the lock."""
        central = b"".join(_pack_central_record(entry, entry.header_offset)
                           for entry in self.entries)
        tail = central + _pack_end_records(len(self.entries), len(central), self.size)
        try:
            self._finish_writeback()
            _pwrite_all(self.fd, tail, self.size)
            os.fsync(self.fd)
        except BaseException:
            self._cut_back(self.size)
            self.abandon()
            raise
        self.sidecar.mark_sealed(len(self.entries), self.size, *self.run_crcs)
        try:
            _write_sidecar(self.sidecar_path, self.sidecar)
        finally:
            self._close()

    def abandon(self):
        """Give up on this temp zip unsealed; a scavenger will salvage it."""
        with contextlib.suppress(OSError):
            os.fsync(self.fd)
        self._close()

    def _close(self):
        with _OWN_TEMP_ZIPS_LOCK:
            _OWN_TEMP_ZIPS.discard(self.path)
        self._join_writeback()    # its error not raised here: the seal raised it, or abandon()
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)     # releases the fcntl lock

    def forget_after_fork(self):
        """In a forked child: drop the parent's descriptor, touch nothing."""
        if self.fd >= 0:
            # The child never held the parent's POSIX lock, so closing its
            # inherited descriptor releases nothing of the parent's.
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def _rotation_due(created_monotonic, now_monotonic, rotation_span, size, max_bytes,
                  entries, max_entries):
    """Pure 'is it time' check, like TimedRotatingFileHandler.shouldRollover."""
    return (now_monotonic - created_monotonic >= rotation_span or size >= max_bytes
            or entries >= max_entries)


# ---------------------------------------------------------------- writer
#
# rear_fs, the files rear_open hands out, pickups, the rotation timer and
# the seal at exit.


class _CommitOnClose:
    """Mixin for the handles rear_open returns: commit on close, discard on error."""

    def _rear_setup(self, fs, name, spool):
        self._rear_fs = fs
        self._rear_name = name
        self._rear_spool = spool
        self._rear_discard = False

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is not None and self._rear_fs.success_only:
            self._rear_discard = True
        self.close()

    def discard(self):
        """Close without archiving."""
        self._rear_discard = True
        self.close()

    def __del__(self):
        # Unlike a plain file, a handle dropped without close() is not
        # archived: that almost always means an error path, and a partial
        # file must never look like a finished one.  Said as a plain file
        # says it (ResourceWarning) and in rear's log.
        if not hasattr(self, "_rear_discard"):
            return       # its construction failed: there is nothing to discard
        if not self.closed and not self._rear_discard:
            message = ("rear_open handle of %r was never closed and is discarded, not "
                       "archived; use 'with' or close()" % self._rear_name)
            warnings.warn(message, ResourceWarning, source=self)
            _log.warning("%s", message)
            self._rear_discard = True
        super().__del__()

    def close(self):
        if self.closed:
            return
        try:
            self.flush()
            if not self._rear_discard:
                self._rear_fs._commit_spool(self._rear_name, self._rear_spool)
        finally:
            super().close()
            self._rear_spool.close()


class _BinaryOutput(_CommitOnClose, io.BufferedRandom):
    """The handle of rear_open in modes "w+b"."""


class _BinaryWriteOnlyOutput(_CommitOnClose, io.BufferedWriter):
    """The handle of rear_open in mode "wb": reading raises like open()'s."""


class _TextOutput(_CommitOnClose, io.TextIOWrapper):
    """The handle of rear_open in text modes."""


_NEWLINES = (None, "", "\n", "\r", "\r\n")
_MODES = {"w": (False, False), "w+": (False, True), "wb": (True, False),
          "w+b": (True, True), "wb+": (True, True), "wt": (False, False),
          "w+t": (False, True), "wt+": (False, True)}


class rear_fs:  # noqa: N801 -- the public name rear 0.1 users know
    """A worker's handle on a base directory: files written through it go to
    this process's temporary zip in ``base/inbox/``.

    ``sync`` is ``"rotation"`` (fsync when a temp zip is sealed; a process
    crash loses nothing acknowledged) or ``"file"`` (also fsync every file; a
    node crash loses nothing acknowledged either, at the cost of one fsync
    per file).

    ``shard_inbox=True`` (default: $REAR_SHARD_INBOX) puts the temp zips in
    ``inbox/hosts/<host>/``, a directory per host, for campaigns whose
    writers would otherwise all create in one directory; scavengers and
    readers of this release find them either way (older ones do not).
    """

    def __init__(self, base=None, rotation_span=None, success_only=True,
                 compression="deflated", compresslevel=None, sync="rotation",
                 shard_inbox=None):
        self.base = os.path.abspath(_base_or_env(base))
        self.inbox = os.path.join(self.base, _INBOX)
        # Where this writer's temp zips go: inbox/, or its host's shard.
        self.temp_dir = self.inbox
        if _shard_or_env(shard_inbox):
            self.temp_dir = os.path.join(self.inbox, _SHARDS_DIR, _short_hostname())
        self.rotation_span = _rotation_or_env(rotation_span)
        if compression not in _COMPRESSION:
            raise ValueError("compression %r is not supported; choose one of %s"
                             % (compression, ", ".join(sorted(_COMPRESSION))))
        self.compression = compression
        self.compresslevel = compresslevel
        self.success_only = success_only
        if sync not in ("rotation", "file"):
            raise ValueError("sync must be 'rotation' or 'file', not %r" % (sync,))
        self.sync = sync
        self._method = _COMPRESSION[compression]
        if self._method != zipfile.ZIP_STORED:
            try:
                _new_compressor(self._method, compresslevel)   # fail now on a bad level
            except (ValueError, TypeError, zlib.error) as err:
                raise ValueError("compresslevel %r does not suit %s compression (%s): use "
                                 "0-9 for deflated, 1-9 for bzip2, or None for the default"
                                 % (compresslevel, compression, err)) from None
        self._reset_state()
        self._closed = False
        self._context_token = None
        _LIVE.add(self)

    def _reset_state(self):
        self._known_directories = {}
        self._lock = threading.RLock()
        self._temp = None
        self._timer = None
        self._timer_stop = threading.Event()
        self._pid = os.getpid()
        self._no_timed_rotation = False

    # -- context management ------------------------------------------------

    def __enter__(self):
        if self._closed:
            raise RearError("this rear_fs is closed; create a new one")
        if not _is_usable_inbox(self.temp_dir):
            _checked_base(self.base, writing=True, may_be_missing=True)
            if self.temp_dir != self.inbox:
                _check_shard_directory(self.temp_dir)
        with _ACTIVE_LOCK:
            if self._context_token is not None:
                # Its inner 'with' would close it under the outer one.
                raise RearError("this rear_fs is already entered; enter it once and "
                                "use it (or rear_open) inside that one 'with' block")
            self._context_token = _CURRENT_FS.set(self)
            _ACTIVE.append(self)
        return self

    def __exit__(self, exc_type, exc, traceback):
        self._leave()
        self.close()

    def _leave(self):
        """Stop being the current rear_fs of this context and of the process."""
        with _ACTIVE_LOCK:
            token, self._context_token = self._context_token, None
            with contextlib.suppress(ValueError):   # a context other than the enterer's
                _CURRENT_FS.reset(token)
            if self in _ACTIVE:
                _ACTIVE.remove(self)

    async def __aenter__(self):
        return self.__enter__()

    async def __aexit__(self, exc_type, exc, traceback):
        self._leave()     # in the task's own context; only the seal goes off the loop
        await _off_the_event_loop(self.close)

    # -- writing -----------------------------------------------------------

    def open(self, path, mode="w", encoding=None, newline=None, errors=None):
        """Open ``"name.zip/member"`` for writing; archived when closed."""
        if mode not in _MODES:
            raise ValueError("mode %r is not supported; rear_open writes new files: use "
                             "'w', 'w+', 'wb' or 'w+b'" % (mode,))
        binary, readable = _MODES[mode]
        if binary and (encoding is not None or newline is not None or errors is not None):
            raise ValueError("binary mode %r takes no encoding, errors or newline" % mode)
        if newline not in _NEWLINES:
            raise ValueError("newline must be one of %s, not %r (as for open())"
                             % (", ".join(map(repr, _NEWLINES)), newline))
        if encoding is not None:
            codecs.lookup(encoding)       # LookupError naming it, before anything is made
        self._check_open()
        name = _entry_name(path, self._known_directories)
        spool = _Spool(readable=readable)
        if binary:
            handle = (_BinaryOutput if readable else _BinaryWriteOnlyOutput)(spool)
        else:
            buffer = (io.BufferedRandom if readable else io.BufferedWriter)(spool)
            handle = _TextOutput(buffer, encoding=encoding or "utf-8", errors=errors,
                                 newline=newline)
        handle._rear_setup(self, name, spool)
        return handle

    @contextlib.contextmanager
    def pickup(self, source, path):
        """Archive the file or directory tree ``source`` as ``path`` when the
        block exits, then remove ``source``.  If the block raises (and
        ``success_only``) the source is left where it is."""
        self._check_open()
        name = _entry_name(path, self._known_directories)
        source = os.fspath(source)
        _check_pickup_source(source, self.base)
        ok = False
        try:
            yield source
            ok = True
        finally:
            if ok or not self.success_only:
                self._archive_and_remove(source, name, must_exist=ok)

    def write_bytes(self, path, data):
        """Archive ``data`` as ``path`` in one call."""
        name = _entry_name(path, self._known_directories)
        self._check_open()
        self._commit_prepared(name, _prepare_bytes(bytes(data), self._method, self.compresslevel),
                              time.time(), _DEFAULT_FILE_MODE)

    def write_text(self, path, text, encoding="utf-8", errors=None):
        """Archive ``text`` as ``path`` in one call."""
        self.write_bytes(path, text.encode(encoding, errors or "strict"))

    def rotate(self):
        """Seal the current temp zip now; the next write starts a new one."""
        with self._lock:
            self._seal_current()

    def close(self):
        """Seal the current temp zip and stop the rotation timer."""
        if os.getpid() != self._pid:
            self._reset_state()
        self._timer_stop.set()
        timer = self._timer
        if timer is not None and timer is not threading.current_thread():
            timer.join()
        with self._lock:
            self._closed = True
            self._seal_current()

    # -- internals ---------------------------------------------------------

    def _check_open(self):
        if self._closed:
            raise RearError("this rear_fs is closed; open files inside its 'with' block")

    def _archive_and_remove(self, source, name, must_exist):
        try:
            st = os.lstat(source)
        except FileNotFoundError as err:
            if not must_exist:
                return
            raise RearError("rear_pickup: %s was not created; nothing to archive as %r"
                            % (source, name), source) from err
        if stat.S_ISDIR(st.st_mode):
            # All or nothing: walked and checked whole before anything is
            # archived, then archived under the lock, with no rotation on
            # time, so that a failure halfway (a read error) can be cut off
            # the temp zip again.  Half a tree archived and all of it left
            # in place would be archived twice by a retry.
            members = _pickup_members(source, name)
            _check_pickup_members(source, self.base, members)
            with self._lock:
                mark = self._end_mark()
                self._no_timed_rotation = True
                try:
                    for path, member, member_st in members:
                        self._archive_member(path, member, member_st)
                except BaseException:
                    self._undo_to(mark)
                    raise
                finally:
                    self._no_timed_rotation = False
            shutil.rmtree(source)
        else:
            self._archive_member(source, name, st)
            os.unlink(source)

    def _end_mark(self):
        """Where the current temp zip ends now, for _undo_to."""
        temp = self._temp
        if temp is None:
            return None
        return temp, temp.size, len(temp.entries), tuple(temp.run_crcs)

    def _undo_to(self, mark):
        """Cut off what was appended since ``mark`` (with the lock held)."""
        temp = self._temp
        if temp is None:
            return
        if mark is None or mark[0] is not temp:
            if mark is not None:   # sealed in between (the temp zip's size cap)
                _log.warning("part of a failed pickup was sealed already and will be "
                             "archived; the source is left in place")
                return
            mark = (temp, 0, 0, (0, 0))   # the temp zip was started by the pickup
        _temp, size, count, run_crcs = mark
        temp._cut_back(size)
        del temp.entries[count:]
        temp.size, temp.run_crcs = size, list(run_crcs)

    def _archive_member(self, path, name, st):
        """Archive one file, symlink or directory of a pickup as ``zip -y``
        does: a symlink as a link (its target is the data; never followed),
        a directory as a ``name/`` entry; mode and mtime kept."""
        if stat.S_ISDIR(st.st_mode):
            name += "/"
            prepared = _prepare_bytes(b"", zipfile.ZIP_STORED, None)
        elif stat.S_ISLNK(st.st_mode):
            prepared = _prepare_bytes(os.fsencode(os.readlink(path)), zipfile.ZIP_STORED, None)
        elif stat.S_ISREG(st.st_mode):
            fd = os.open(path, os.O_RDONLY | _O_CLOEXEC | _O_NOFOLLOW)
            with open(fd, "rb") as handle:
                prepared = _prepare_stream(handle, self._method, self.compresslevel)
                self._commit_prepared(name, prepared, _file_seconds(st), st.st_mode)
            return
        else:
            raise _not_archivable_error(path)
        self._commit_prepared(name, prepared, _file_seconds(st), st.st_mode)

    def _commit_spool(self, name, spool):
        data = spool.read_all_for_archive()
        if data is not None:
            prepared = _prepare_bytes(data, self._method, self.compresslevel)
        else:
            prepared = _prepare_stream(spool.rewind_for_archive(), self._method,
                                       self.compresslevel)
        self._commit_prepared(name, prepared, time.time(), _DEFAULT_FILE_MODE)

    def _commit_prepared(self, name, prepared, mtime, mode):
        try:
            self._append_locked(name, prepared, mtime, mode)
        except OSError as err:
            if err.filename is not None or err.errno is None:
                raise
            # A bare "[Errno 28] No space left on device" from the exit of a
            # 'with' block names nothing: say which file was not archived,
            # where it was going, and what to do (the same OSError type).
            remedy = _remedy(err, self.inbox)
            message = "%s: %r was not archived (files acknowledged before it are safe)%s" % (
                err.strerror, name, "; " + remedy if remedy else "")
            raise type(err)(err.errno, message, self.inbox) from err
        finally:
            prepared.close()

    def _append_locked(self, name, prepared, mtime, mode):
        with self._lock:
            if os.getpid() != self._pid:   # forked without register_at_fork
                self._reset_state()
            self._check_open()
            temp = self._temp
            if temp is not None and (temp.broken or self._should_rotate()):
                self._seal_current()
                temp = None
            if temp is None:
                temp = self._temp = _TempZip(self.temp_dir, self.sync == "file",
                                             self.rotation_span)
                _UNSEALED.add(self)
                _seal_at_multiprocessing_exit()
                self._start_timer()
            temp.append(name, prepared, mtime, mode)

    def _seal_current(self):
        temp, self._temp = self._temp, None
        _UNSEALED.discard(self)
        if temp is None:
            return
        if temp.broken:
            temp.abandon()
        else:
            temp.seal()

    def _should_rotate(self):
        """Is the current temp zip due for sealing?  Called under the lock."""
        temp = self._temp
        span = float("inf") if self._no_timed_rotation else self.rotation_span
        return temp is not None and _rotation_due(temp.created_monotonic, time.monotonic(),
                                                  span, temp.size, _TEMP_ZIP_MAX_BYTES,
                                                  len(temp.entries), _TEMP_ZIP_MAX_ENTRIES)

    def _rotate_if_due(self):
        with self._lock:
            if self._should_rotate():
                self._seal_current()

    def _start_timer(self):
        if self._timer is not None and self._timer.is_alive():
            return
        self._timer = threading.Thread(
            target=_rotation_timer, args=(weakref.ref(self), self._timer_stop,
                                          _timer_interval(self.rotation_span)),
            name="rear-rotation", daemon=True)
        self._timer.start()

    def _forget_after_fork(self):
        temp = self._temp
        self._reset_state()
        if temp is not None:
            temp.forget_after_fork()


def _check_pickup_source(source, base):
    """Refuse, before anything happens, a pickup that would remove the
    base's own files: the base or a directory above it, its inbox/ (every
    writer's temp zip) or anything in it, or one of its archives.  A
    pickup removes its source once archived: such a source cost every
    file acknowledged into the temp zips it held."""
    real_source, real_base = os.path.realpath(source), os.path.realpath(base)
    real_inbox = os.path.join(real_base, _INBOX)
    if real_source == real_base:
        what = "the base directory"
    elif real_base.startswith(real_source.rstrip(os.sep) + os.sep):
        what = "a directory that holds the base %s" % base
    elif real_source == real_inbox or real_source.startswith(real_inbox + os.sep):
        what = "inside the inbox of the base %s" % base
    elif real_source.startswith(real_base + os.sep) and real_source.lower().endswith(".zip"):
        what = "an archive of the base %s" % base
    else:
        return
    raise RearError("rear_pickup: %s is %s; archiving it would remove rear's own "
                    "files (temp zips holding acknowledged files, or archives): pick up "
                    "outputs from outside the base, or from a directory of its own below it"
                    % (source, what), source)


def _check_pickup_members(source, base, members):
    """A tree picked up from inside the base must hold no archive of it."""
    real_base = os.path.realpath(base)
    if not os.path.realpath(source).startswith(real_base + os.sep):
        return
    for path, _member, member_st in members:
        if stat.S_ISREG(member_st.st_mode) and path.lower().endswith(".zip"):
            raise RearError("rear_pickup: %s holds %s, an archive of the base %s; archiving "
                            "the tree would remove it: move the archive out of the tree, or "
                            "pick up outputs from outside the base" % (source, path, base),
                            source)


def _not_archivable_error(path):
    return RearError("rear_pickup: %s is not a regular file, directory or symlink; "
                     "remove it or archive what it holds" % path, path)


def _raise_cannot_list(err):
    """os.walk's onerror for a pickup: an unreadable subdirectory stops it."""
    raise RearError("rear_pickup: cannot list %s (%s); nothing of the tree was archived"
                    % (err.filename, err.strerror), err.filename) from err


def _pickup_members(source, name):
    """[(path, member name, lstat)] of the tree ``source`` picked up as
    ``name``: each directory (named without its trailing "/") before what it
    holds, every name validated and every file type checked."""
    members = []
    # onerror: an unreadable subdirectory must stop the pickup, not vanish
    # from the archive and then from the disk with the tree.
    for directory, subdirs, files in os.walk(source, onerror=_raise_cannot_list):
        relative = os.path.relpath(directory, source)
        prefix = name if relative == "." else name + "/" + relative.replace(os.sep, "/")
        split_path(prefix + "/_")   # a directory name may be unacceptable (e.g. '\\')
        members.append((directory, prefix, os.lstat(directory)))
        # os.walk lists links to directories with the directories (without
        # entering them): they are archived as links.
        links = [sub for sub in subdirs if os.path.islink(os.path.join(directory, sub))]
        subdirs[:] = sorted(sub for sub in subdirs if sub not in links)
        for file_name in sorted(files + links):
            path = os.path.join(directory, file_name)
            st = os.lstat(path)
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                raise _not_archivable_error(path)
            if stat.S_ISREG(st.st_mode) and not os.access(path, os.R_OK):
                raise RearError("rear_pickup: %s cannot be read by this user; nothing of %s "
                                "was archived" % (path, source), path)
            member = prefix + "/" + file_name
            split_path(member)   # a file name may be unacceptable (e.g. '\\')
            members.append((path, member, st))
    return members


def _timer_interval(rotation_span):
    return max(0.01, min(rotation_span / 10.0, _TIMER_MAX_SLEEP))


def _rotation_timer(fs_ref, stop, interval):
    """Daemon thread: seal the temp zip every rotation_span, even when idle."""
    while not stop.wait(interval):
        fs = fs_ref()
        if fs is None:
            return
        try:
            fs._rotate_if_due()
        except Exception:  # the next write retries and raises to its caller
            _log.exception("rotation of %s failed", fs.inbox)
        del fs


def _seal_all_at_exit():
    """atexit: seal every temp zip this process has open."""
    for fs in list(_UNSEALED):
        if fs._pid == os.getpid():
            try:
                fs.close()
            except Exception:
                _log.exception("could not seal the temp zip of %s at exit", fs.inbox)


def _seal_at_multiprocessing_exit():
    """Make a multiprocessing child seal its temp zips when it exits.

    Such children end with os._exit(), which skips atexit; they run Finalize
    callbacks instead.  Registered when a process creates a temp zip, i.e.
    after Process._bootstrap cleared the registry, whatever the start method
    (fork, spawn, forkserver).  Harmless in other processes: sealing twice
    finds nothing left to seal.
    """
    global _FINALIZER_PID
    util = sys.modules.get("multiprocessing.util")
    if util is not None and _FINALIZER_PID != os.getpid():
        _FINALIZER_PID = os.getpid()
        util.Finalize(None, _seal_all_at_exit, exitpriority=100)


atexit.register(_seal_all_at_exit)


def _current_fs():
    """The rear_fs this context entered last, else the process's innermost."""
    fs = _CURRENT_FS.get()
    if fs is not None and fs._context_token is not None:
        return fs
    with _ACTIVE_LOCK:
        if _ACTIVE:
            return _ACTIVE[-1]
    raise RuntimeError("rear_open/rear_pickup need an active rear_fs: wrap your code in "
                       "'with rear.rear_fs(BASE):' or call fs.open() on a rear_fs")


def rear_open(path, mode="w", encoding=None, newline=None, errors=None):
    """Open ``"name.zip/member"`` for writing through the innermost rear_fs."""
    return _current_fs().open(path, mode, encoding=encoding, newline=newline, errors=errors)


def rear_pickup(source, path):
    """Archive ``source`` (file or directory) as ``path`` when the block exits."""
    return _current_fs().pickup(source, path)


# ---------------------------------------------------------------- archive files
#
# Where an archive's files are: dest path <-> file path, its series, its
# lock, journal and index files (layout in the module docstring).


def _dest_of(base, archive):
    """The dest path ("sub/name.zip") of an archive file under ``base``."""
    return os.path.relpath(archive, base).replace(os.sep, "/")


def _archive_key(dest):
    # Lock and journal names must be short and flat whatever the dest path.
    return hashlib.sha256(dest.encode("utf-8")).hexdigest()[:40]


class _ArchivePaths:
    """Where an archive, its lock file and its journals are.

    Made from the dest path, or from the key alone (a journal's file name)
    when recovering: the dest is then read from the journal under the lock.
    """

    def __init__(self, base, dest=None, key=None):
        self.base = base
        self.directory = os.path.join(base, _INBOX, _ARCHIVES_DIR)
        key = key or _archive_key(dest)
        self.lock = os.path.join(self.directory, key + _LOCK_SUFFIX)
        self.journal = os.path.join(self.directory, key + _JOURNAL_SUFFIX)
        self.journal_new = os.path.join(self.directory, key + _JOURNAL_NEW_SUFFIX)
        self.commit = os.path.join(self.directory, key + _COMMIT_SUFFIX)
        self.index = os.path.join(self.directory, key + _INDEX_SUFFIX)
        self.set_dest(dest)

    def set_dest(self, dest):
        self.dest = dest
        self.archive = os.path.join(self.base, *dest.split("/")) if dest else None


@contextlib.contextmanager
def _archive_lock(paths, blocking=True, dead_hosts=frozenset(), stats=None):
    """Hold the archive's lock file exclusively.  Yields False if busy
    (non-blocking).  A blocking wait is bounded: reported after
    _ARCHIVE_LOCK_REPORT seconds, given up (ArchiveError) after
    _ARCHIVE_LOCK_WAIT.  A lock whose recorded holder is on one of
    ``dead_hosts`` is taken over (_take_over_archive_lock), waiting or not."""
    _makedirs_durably(paths.directory)
    lock = _LockFile(paths.lock)
    try:
        try:
            held = lock.try_lock(exclusive=True)
            if not held and blocking:
                _wait_for_archive_lock(paths, lock, dead_hosts, stats)
                held = True
            elif not held and dead_hosts:
                holder = _read_holder(paths.lock)
                held = (holder is not None and holder.host in dead_hosts
                        and _take_over_archive_lock(paths, lock, holder, stats))
        except LockingUnsupportedError as err:
            _warn_no_locks(paths.lock, err)
            held = True
        if held and lock.fd >= 0:
            _record_holder(lock.fd)
        yield held
    finally:
        lock.close()


class _LockFile:
    """An archive's lock file, open, and locked by ``try_lock``.

    The file is replaced only by a takeover of a dead host's lock: the old
    one stays locked by a session the filesystem keeps alive, and nobody
    else opens it again.  So a lock counts as held only on the file the
    name still means; one taken on a replaced file is dropped and taken
    again on the new one.
    """

    def __init__(self, path, writable=True):
        self.path = path
        self.writable = writable
        self.fd = -1
        self.fd = self._open()

    def _open(self):
        # O_RDWR where we may: NFSv4 refuses locks that do not match the
        # open mode; O_RDONLY for a reader of a read-only base.
        if self.writable:
            return _create_file(self.path, os.O_RDWR | _O_CLOEXEC | _O_NOFOLLOW)
        return os.open(self.path, os.O_RDONLY | _O_CLOEXEC | _O_NOFOLLOW)

    def try_lock(self, exclusive):
        """Take the lock without waiting: True if held."""
        while True:
            held = _lock(self.fd, self.path, exclusive=exclusive, blocking=False)
            if self.is_current():
                return held
            os.close(self.fd)     # drops what we held on the replaced file
            self.fd = -1
            self.fd = self._open()

    def is_current(self):
        """Does the lock file's name still mean the file we have open?"""
        named = _stat_existing(self.path)
        return named is not None and os.path.samestat(named, os.fstat(self.fd))

    def close(self):
        _close_held(self, os.close)


def _record_holder(fd):
    """Write who holds the archive lock into the lock file, for the
    processes that wait for it on any client; flushed to the server (a
    node that dies holding the lock leaves it readable there)."""
    record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                         "since": round(time.time(), 3)}).encode("utf-8")
    _pwrite_all(fd, record.ljust(_HOLDER_RECORD_SIZE - 1) + b"\n", 0)
    getattr(os, "fdatasync", os.fsync)(fd)


class _Holder:
    """The recorded holder of an archive lock (the last to take it
    exclusively): host, pid, since (Unix time)."""

    __slots__ = ("host", "pid", "since")

    def __init__(self, host, pid, since):
        self.host, self.pid, self.since = host, pid, since

    def __eq__(self, other):
        return (self.host, self.pid, self.since) == (other.host, other.pid, other.since)

    def __str__(self):
        return "pid %d on host %s since %s" % (self.pid, self.host, time.strftime(
            "%Y-%m-%d %H:%M:%S", time.localtime(self.since)))


def _read_holder(path):
    """The _Holder recorded in the lock file ``path``, or None (none yet,
    or one a rear before 1.3 left, or torn by a concurrent write)."""
    try:
        record = json.loads(_read_existing(path)[:_HOLDER_RECORD_SIZE] or b"null")
        holder = _Holder(record["host"], record["pid"], record["since"])
    except (ValueError, TypeError, KeyError, OSError):
        return None
    valid = (isinstance(holder.host, str) and isinstance(holder.pid, int)
             and isinstance(holder.since, (int, float)))
    return holder if valid else None


def _wait_for_archive_lock(paths, lock, dead_hosts, stats):
    """Poll the busy lock until it is ours; take it over if its holder is
    on a host declared down.  Raises ArchiveError when the wait runs out."""
    started = time.monotonic()
    reported = False
    for delay in _ARCHIVE_LOCK_POLL.delays(total=_ARCHIVE_LOCK_WAIT):
        time.sleep(delay)
        if lock.try_lock(exclusive=True):
            return
        holder = _read_holder(paths.lock)
        if holder is not None and holder.host in dead_hosts and _take_over_archive_lock(
                paths, lock, holder, stats):
            return
        if not reported and time.monotonic() - started >= _ARCHIVE_LOCK_REPORT:
            _log.warning("%s: waiting for its lock: %s", paths.archive,
                         _lock_holder_text(holder, paths.base))
            reported = True
    if not lock.try_lock(exclusive=True):
        raise ArchiveError("%s stayed locked for %.0f s: %s" % (
            paths.archive, time.monotonic() - started,
            _lock_holder_text(_read_holder(paths.lock), paths.base)), paths.archive)


def _lock_holder_text(holder, base):
    """Who holds an archive lock, and the way out if their host is down."""
    if holder is None:
        return "another process holds it (a reader, or a rear older than 1.3)"
    if holder.host == socket.gethostname() and not _runs_on_this_host(holder.host, holder.pid):
        # Gone, yet the lock is held: a reader's, or the session of this
        # host's filesystem client that crashed or was restarted meanwhile.
        return ("%s last took it and no longer runs; a reader may hold it now, or the "
                "filesystem still holds it for a client of this host that crashed or was "
                "restarted: then 'rear scavenge --dead-host %s %s' takes the lock over"
                % (holder, holder.host, base))
    return ("%s holds it; if %s is down, 'rear scavenge --dead-host %s %s' takes the lock "
            "over" % (holder, holder.host, holder.host, base))


def _take_over_archive_lock(paths, lock, holder, stats):
    """Replace the lock file of an archive whose lock ``holder``, on a host
    the operator declared down, still holds (MooseFS keeps a dead client's
    locks for SESSION_SUSTAIN_TIME, a day by default).  True when ``lock``
    then holds the new file's lock; False to go on waiting.

    One takeover at a time, under ``<key>.takeover``: the second finds
    the new file, held by a live scavenger.  Not while the archive, its
    journal or the lock file changed in the last _DEAD_HOST_QUIET seconds
    (a scavenger that does is alive), nor while the holder runs on this
    host.  The caller's commit then rolls the holder's journal back or
    finishes it (commit step 1).
    """
    if _runs_on_this_host(holder.host, holder.pid):
        raise ArchiveError("%s: its lock's holder, %s, runs on this host; --dead-host is for "
                           "a node that is down" % (paths.archive, holder), paths.archive)
    # (From a journal's key alone, the archive is not known yet.)
    changed = max([st.st_mtime for st in map(_stat_existing, [path for path in (
        paths.archive, paths.journal, paths.journal_new, paths.commit, paths.lock) if path])
        if st is not None])
    if time.time() - changed < _DEAD_HOST_QUIET:
        return False
    with _archive_lock_takeover(paths) as ours:
        if not ours:
            return False        # another scavenger is taking it over
        if lock.try_lock(exclusive=True):
            return True         # released meanwhile
        if _read_holder(paths.lock) != holder:
            return False        # taken over by another scavenger, which holds it
        replacement = "%s.%s.tmp" % (os.path.join(paths.directory, "." + os.path.basename(
            paths.lock)), secrets.token_hex(8))
        fd = _create_file(replacement, os.O_RDWR | os.O_EXCL | _O_CLOEXEC | _O_NOFOLLOW)
        try:
            _lock(fd, replacement, blocking=False)
            _record_holder(fd)
            os.replace(replacement, paths.lock)
            _sync_directory(paths.directory)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):   # never hide the original error
                os.unlink(replacement)
            raise
        os.close(lock.fd)
        lock.fd = fd
    _log.warning("%s: took over its lock from %s, a host declared down (--dead-host); its "
                 "commit, if any, is rolled back or finished now",
                 paths.archive or paths.lock, holder)
    if stats is not None:
        stats.locks_taken_over += 1
    return True


@contextlib.contextmanager
def _archive_lock_takeover(paths):
    """The lock that orders takeovers of one archive's lock (non-blocking)."""
    fd = _create_file(paths.lock[:-len(_LOCK_SUFFIX)] + _TAKEOVER_SUFFIX,
                      os.O_RDWR | _O_CLOEXEC | _O_NOFOLLOW)
    try:
        yield _lock(fd, paths.lock, blocking=False)
    finally:
        os.close(fd)


def _rolled_members(archive):
    """[(N, path)] of the rolled-over archives of ``archive``'s series,
    oldest (lowest N) first."""
    directory, file_name = os.path.split(archive)
    numbered = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for name in os.listdir(directory):
            rolled = _rolled_name(name)
            if rolled is not None and rolled[0] == file_name:
                numbered.append((rolled[1], os.path.join(directory, name)))
    return sorted(numbered)


def _same_file(path, other):
    try:
        first, second = os.stat(path), os.stat(other)
    except OSError:
        return False
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


def _series(base, dest):
    """The files of an archive series, oldest first: name.~1~.zip,
    name.~2~.zip, ... (rolled over), then name.zip.  Only those that
    exist; a name.zip that is still the last rolled-over one (a rollover
    cut between its link and unlink) is counted once."""
    archive = _ArchivePaths(base, dest).archive
    paths = [path for _number, path in _rolled_members(archive)]
    if os.path.lexists(archive) and not (paths and _same_file(paths[-1], archive)):
        paths.append(archive)
    return paths


def _link_exclusively(source, target):
    """Give ``source`` the further name ``target``; FileExistsError if that
    exists.  link(2) is checked where the name lives (the server), while a
    lexists() then rename() can replace a file that a stale negative lookup
    cache hides (NFS caches negative lookups).  Where the filesystem has no
    hard links, ``source`` is renamed instead; returns whether it linked."""
    try:
        os.link(source, target)
        return True
    except OSError as err:
        # EPERM, EOPNOTSUPP: link(2) on filesystems without hard links
        if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), target)
    os.rename(source, target)
    return False


def _locate_base(archive):
    """(base, dest) of an archive under a rear base (the nearest directory
    above it that has inbox/archives/), or (None, None)."""
    directory = os.path.dirname(os.path.abspath(archive))
    while True:
        if os.path.isdir(os.path.join(directory, _INBOX, _ARCHIVES_DIR)):
            return directory, _dest_of(directory, os.path.abspath(archive))
        parent = os.path.dirname(directory)
        if parent == directory:
            return None, None
        directory = parent


# ---------------------------------------------------------------- name index
#
# Layout in the module docstring; read by readers, kept by scavengers.


def _name_hash(encoded_name):
    # Stable across processes and Python versions, unlike hash(); 0 marks an
    # empty index slot.
    digest = hashlib.blake2b(encoded_name, digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


class _IndexReader:
    """Lookups in an archive's name index, read-only (readers use this; the
    scavenger's _NameIndex adds updates and rebuilds).  ``find`` returns the
    _Entry of a name, confirmed by reading its one central record.

    Where the slots are read from: ``buffer`` when they are in memory (the
    file mapped, or the whole table a _NameIndex rebuilt or grew, which
    ``in_memory`` marks as to be written back whole), else the file
    itself, a window of slots per read.  ``_probe`` is the one walk
    of the table that lookups, inserts and updates share.
    """

    def __init__(self, path, archive_fd, archive_path, cd):
        self.path = path
        self.archive_fd = archive_fd
        self.archive_path = archive_path
        self.cd = cd
        # One record per lookup: read ahead only what a typical one needs.
        self.records = _ChunkReader(archive_fd, archive_path,
                                    readahead=_CENTRAL_STRUCT.size + _TYPICAL_NAME)
        self.buffer = None       # the slots in memory, from buffer_offset on
        self.buffer_offset = 0
        self.in_memory = False   # buffer is a table of ours, written back whole
        self.map = None          # the mmap behind buffer, to close
        self.fd = -1
        self.slots = _INDEX_MIN_SLOTS
        self.used = 0
        self.resolved = {}       # name hash -> [record positions], from _NameIndex.resolve

    def open_matching(self, size, writable=False, mapped=True):
        """Open the index file if its stamp matches the archive; else False.

        Another client's scavenger replaces the file (a rebuild) or updates
        it in place (a commit), always under the archive lock: it is opened
        by rule 1 of "network filesystems" and, by a scavenger, read by rule
        3, or stale slots under a fresh header would hide names (and
        duplicate them).  One that turns out to be gone does not match: it
        is a cache.
        """
        flags = (os.O_RDWR if writable else os.O_RDONLY) | _O_CLOEXEC | _O_NOFOLLOW
        fd = _open_existing(self.path, flags)
        if fd is None:
            return False
        try:
            if writable:
                _refresh_view(fd)
            fields = _parse_index_header(os.pread(fd, _INDEX_HEADER.size, 0))
            matches = (fields is not None
                       and fields[_INDEX_HEADER_STAMP] == _archive_stamp(
                           self.archive_fd, size, self.cd)
                       and os.fstat(fd).st_size == (_INDEX_HEADER.size + fields[
                           _INDEX_HEADER_SLOTS] * _INDEX_SLOT.size))
        except OSError as err:
            _close_read_only(fd)
            if err.errno in _GONE_ERRNOS:
                return False
            raise
        if not matches:
            _close_read_only(fd)
            return False
        self.fd = fd
        self.slots, self.used = fields[_INDEX_HEADER_SLOTS], fields[_INDEX_HEADER_USED]
        if mapped and not writable:
            # Probed with no system call per slot (a lookup went from 10 us
            # to 2 us); a file replaced meanwhile stays mapped as it was,
            # and its stamp no longer matches the archive.
            with contextlib.suppress(OSError, ValueError):
                self.map = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
                self.buffer, self.buffer_offset = self.map, _INDEX_HEADER.size
        return True

    def _read_slots(self, start, end):
        """The bytes of slots ``start`` to ``end`` (byte offsets in the table)."""
        if self.buffer is not None:
            return self.buffer[self.buffer_offset + start:self.buffer_offset + end]
        return _pread_exact(self.fd, end - start, _INDEX_HEADER.size + start, self.path)

    def _probe(self, name_hash, taken=()):
        """(slot number, hash, position) from the name's home slot on, up to
        and including the first empty slot; slots in ``taken`` are skipped.
        Linear probing, a window of _INDEX_PROBE_SLOTS slots per read."""
        mask = self.slots - 1
        slot = name_hash & mask
        while True:
            end = min(slot + _INDEX_PROBE_SLOTS, self.slots)
            for slot_hash, position in _INDEX_SLOT.iter_unpack(self._read_slots(
                    slot * _INDEX_SLOT.size, end * _INDEX_SLOT.size)):
                if not taken or slot not in taken:
                    yield slot, slot_hash, position
                    if not slot_hash:
                        return
                slot = (slot + 1) & mask

    def find(self, name, name_hash=None):
        """The archived _Entry called ``name`` (whose _name_hash may be
        given: a series looks one name up in several indexes), or None."""
        if not self.used:
            return None
        if name_hash is None:
            name_hash = _name_hash(name.encode("utf-8"))
        for position in self._positions(name_hash):
            entry = self._record_at(position)
            if entry.name == name:
                return entry
        return None

    def _positions(self, name_hash):
        """Positions of the records whose name hashes to ``name_hash``."""
        resolved = self.resolved.get(name_hash)
        if resolved is not None:
            return resolved
        return [position for _slot, slot_hash, position in self._probe(name_hash)
                if slot_hash == name_hash]

    def contains(self, encoded_name, name_hash):
        """Whether the archive holds the name whose UTF-8 is
        ``encoded_name``: find() without building an _Entry, comparing the
        record's name bytes (what 'rear missing' does a million times)."""
        if not self.used:
            return False
        size = _CENTRAL_STRUCT.size + len(encoded_name)
        for position in self._positions(name_hash):
            record = os.pread(self.archive_fd, size, self.cd.cd_offset + position)
            if (record[_CENTRAL_STRUCT.size:] == encoded_name
                    and record[:4] == _CENTRAL_SIG
                    and _CENTRAL_STRUCT.unpack_from(record)[_CD_FILENAME_LENGTH]
                    == len(encoded_name)):
                return True
            if not encoded_name.isascii():   # a cp437 name, decoded to the same text?
                return self.find(encoded_name.decode("utf-8"), name_hash) is not None
        return False

    def _record_at(self, position):
        for _position, fields, raw_name, extra in _iter_central_records(
                self.records, self.cd, self.archive_path, start=position, count=1):
            return _parse_central_entry(fields, raw_name, extra, self.archive_path,
                                        self.cd.cd_offset + position)
        raise AssertionError("_iter_central_records yields one record")   # pragma: no cover

    def close(self):
        self.buffer = None
        if self.map is not None:
            self.map.close()
            self.map = None
        _close_held(self)


class _NameIndex(_IndexReader):
    """Which names an archive holds, found without parsing its central directory.

    An open-addressing hash table in ``inbox/archives/<key>.index`` whose
    slots hold (64-bit hash of a name, offset of its record within the
    central directory).  Commits copy the old central directory verbatim
    and add records after it, so those offsets stay valid; a hash hit is
    confirmed by reading that one record.  Adding 1,000 names to a
    1,000,000-entry archive thus reads a few kilobytes of index instead of
    parsing 100 MB of records.

    The header stamps the archive state the index describes.  An index that
    does not match the archive (a crash between a commit and the index
    update, a rollover, an archive edited by another tool) is rebuilt from
    the central directory, in memory, and written back after the commit.
    The index is only a cache: losing it costs a rebuild, never an entry.
    """

    def __init__(self, path, archive_fd, archive_path, cd, size, rolled=False):
        super().__init__(path, archive_fd, archive_path, cd)
        # name -> (crc, file_size) of this commit's additions, which
        # _plan_additions notes here (indexed by update() once committed)
        self.pending = {}
        self.hashes = {}       # name -> _name_hash, of names this commit looked up
        self.rebuilt = False   # rebuilt from the central directory: worth saving
        # A rolled-over archive's index is only ever replaced whole, never
        # updated in place: a new file, whose pages no client has cached, so
        # it is read without the refresh (which drops the cache and made
        # each lookup a disk read: 67 us, a second per commit in a series).
        # Never mapped: a scavenger looks a batch up in a pass a window at a
        # time (resolve), and a mapping's touched pages count in its memory.
        if size and self.open_matching(size, writable=not rolled, mapped=False):
            return
        if size and not rolled:
            # No index of rear's matches: the archive was not written by
            # rear, or changed since.  Appended to as it is, an inconsistent
            # one would lose the new entries to some readers.
            _check_appendable(archive_fd, size, cd, archive_path)
        if size:
            _log.info("rebuilding the name index of %s", self.archive_path)
        self.rebuilt = bool(cd.count)
        self._new_table(cd.count)
        if self.rebuilt:
            self._rebuild()

    def _new_table(self, names):
        """An empty in-memory table with room for ``names`` at load <= 1/2."""
        while 2 * names > self.slots:
            self.slots *= 2
        self.buffer, self.buffer_offset = bytearray(self.slots * _INDEX_SLOT.size), 0
        self.in_memory = True
        self.used = 0

    def _rebuild(self):
        reader = _ChunkReader(self.archive_fd, self.archive_path)
        for position, fields, raw_name, _extra in _iter_central_records(
                reader, self.cd, self.archive_path):
            if not raw_name.isascii():
                raw_name = _decode_central_name(
                    raw_name, fields[_CD_FLAG_BITS], self.archive_path,
                    self.cd.cd_offset + position, ArchiveError).encode("utf-8")
            self._insert_in_memory(_name_hash(raw_name), position)

    def _insert_in_memory(self, name_hash, position):
        # The probe of _probe, without its generator and window copies: a
        # rebuild or a growing index inserts every name of the archive.
        buffer, mask, size = self.buffer, self.slots - 1, _INDEX_SLOT.size
        slot = name_hash & mask
        while _SLOT_HASH.unpack_from(buffer, slot * size)[0]:
            slot = (slot + 1) & mask
        _INDEX_SLOT.pack_into(buffer, slot * size, name_hash, position)
        self.used += 1

    def lookup(self, name, hash_of):
        """(crc, file_size) of the archived ``name``, or None.  The name is
        hashed by ``hash_of(name)`` only if this index holds names at all:
        a new archive's first commit hashes each name once, for update()."""
        if name in self.pending:
            return self.pending[name]
        if not self.used:
            return None
        entry = self.find(name, hash_of(name))
        return None if entry is None else (entry.crc, entry.file_size)

    def hash_of(self, name):
        """_name_hash of ``name``, kept for this commit's update()."""
        name_hash = self.hashes.get(name)
        if name_hash is None:
            name_hash = self.hashes[name] = _name_hash(name.encode("utf-8"))
        return name_hash

    def update(self, positions, archive_fd, cd, size):
        """After the commit point: index the new records (name, position in
        the new central directory) and stamp the archive's new state.

        In place: slots written, fsynced, then the header.  A crash before
        the header leaves the old stamp, which no longer matches: rebuilt.
        """
        self.resolved = {}
        needed = self.used + len(positions)
        if 2 * needed > self.slots:
            self._grow(needed)
        stamp = _archive_stamp(archive_fd, size, cd)
        if self.in_memory:
            for name, position in positions:
                self._insert_in_memory(self.hash_of(name), position)
            _write_file_durably(self.path, _pack_index_header(self.slots, self.used, stamp),
                                self.buffer)
            return
        new = [(self.hash_of(name), position) for name, position in positions]
        if self._worth_a_pass(len(new)):
            new = self._insert_by_window(new)
        taken = {}
        for name_hash, position in new:
            for slot, slot_hash, _position in self._probe(name_hash, taken):
                if not slot_hash:
                    taken[slot] = _INDEX_SLOT.pack(name_hash, position)
                    break
        for slot, packed in taken.items():
            _pwrite_all(self.fd, packed, _INDEX_HEADER.size + slot * _INDEX_SLOT.size)
        os.fsync(self.fd)
        self.used += len(positions)
        _pwrite_all(self.fd, _pack_index_header(self.slots, self.used, stamp), 0)

    def _insert_by_window(self, new):
        """Insert [(name hash, position)] a window of the table file at a
        time, each window read and written back once (a commit of 10,000
        names was 10,000 reads and as many writes); returns those whose
        probe runs past their window, for _probe."""
        spilled = []
        for file_offset, window, group in self._by_window(new):
            for home, name_hash, position in group:
                for offset in range(home, len(window), _INDEX_SLOT.size):
                    if not _INDEX_SLOT.unpack_from(window, offset)[0]:
                        _INDEX_SLOT.pack_into(window, offset, name_hash, position)
                        break
                else:
                    spilled.append((name_hash, position))
            _pwrite_all(self.fd, window, file_offset)
        return spilled

    def resolve(self, name_hashes):
        """Walk the probes of many names (their hashes) in one sequential
        pass over the table file (_by_window); lookups of those names then
        read no slot.  Done where it costs less than one random read per
        lookup (_worth_a_pass): a scavenger's refresh dropped the file's
        cached pages, and 1,000 lookups in a 250,000-entry archive were
        1,000 disk reads (67 ms) where a sequential read of its 8 MiB takes
        a few.  One window is held at a time: reading the whole table, and
        mapping each rolled-over archive's, held 8 MiB per 250,000 entries
        of the series (87 MiB for a flush of 1M entries)."""
        if not self.used or self.in_memory or not self._worth_a_pass(len(name_hashes)):
            return
        for _offset, window, group in self._by_window((name_hash, None)
                                                      for name_hash in set(name_hashes)):
            for home, name_hash, _position in group:
                positions = []
                for offset in range(home, len(window), _INDEX_SLOT.size):
                    slot_hash, position = _INDEX_SLOT.unpack_from(window, offset)
                    if not slot_hash:
                        self.resolved[name_hash] = positions
                        break
                    if slot_hash == name_hash:
                        positions.append(position)
                # A probe that runs past its window is left to _probe.

    def _worth_a_pass(self, names):
        """Is one sequential pass over the table file cheaper than a random
        read for each of ``names``?  (A random page read costs about as
        much as _RANDOM_READ_PAGES sequential ones.)"""
        return (self.fd >= 0 and names * _RANDOM_READ_PAGES * _PAGE_SIZE
                >= self.slots * _INDEX_SLOT.size)

    def _by_window(self, pairs):
        """(name hash, position) ``pairs`` grouped by window of _INDEX_WINDOW
        bytes of the table file, in file order: yields (the window's offset
        in the file, its bytes as a bytearray, [(offset of the name's home
        slot in the window, name hash, position)])."""
        mask = self.slots - 1
        window_slots = min(self.slots, _INDEX_WINDOW // _INDEX_SLOT.size)
        items = sorted((name_hash & mask, name_hash, position) for name_hash, position in pairs)
        at = 0
        while at < len(items):
            first = items[at][0] - items[at][0] % window_slots
            group = []
            while at < len(items) and items[at][0] < first + window_slots:
                home, name_hash, position = items[at]
                group.append(((home - first) * _INDEX_SLOT.size, name_hash, position))
                at += 1
            offset = _INDEX_HEADER.size + first * _INDEX_SLOT.size
            yield offset, bytearray(_pread_exact(self.fd, window_slots * _INDEX_SLOT.size,
                                                 offset, self.path)), group

    def _grow(self, needed):
        """Rehash into memory with room for ``needed`` names at load <= 1/2,
        the old table read a window at a time (not held whole beside the
        new one)."""
        old_size = self.slots * _INDEX_SLOT.size
        old_buffer, old_offset = self.buffer, self.buffer_offset
        self._new_table(needed)
        for start in range(0, old_size, _INDEX_WINDOW):
            end = min(start + _INDEX_WINDOW, old_size)
            if old_buffer is not None:
                window = old_buffer[old_offset + start:old_offset + end]
            else:
                window = _pread_exact(self.fd, end - start, _INDEX_HEADER.size + start,
                                      self.path)
            for slot_hash, position in _INDEX_SLOT.iter_unpack(window):
                if slot_hash:
                    self._insert_in_memory(slot_hash, position)


def _check_appendable(fd, size, directory, path):
    """Raise ArchiveError, the archive untouched, if it is inconsistent."""
    try:
        _check_structure(fd, size, directory, path)
    except _Inconsistent as err:
        raise _not_appendable(path, "%s is inconsistent (%s)" % (path, err)) from err


def _not_appendable(archive, problem):
    """The ArchiveError for an archive rear will not append to."""
    return ArchiveError("%s; rear leaves it as it is and appends nothing to it: move it "
                        "away (rear then starts a new archive), or if it is a damaged zip, "
                        "repair it with 'zip -F %s --out FIXED.zip' and put FIXED.zip in its "
                        "place" % (problem, archive), archive)


def _archive_stamp(fd, size, cd):
    """What ties an index to one state of its archive."""
    window = min(size, _INDEX_STAMP_BYTES)
    last = os.pread(fd, window, size - window) if window else b""
    return (size, cd.cd_offset, cd.cd_size, cd.count, zlib.crc32(last))


def _pack_index_header(slots, used, stamp):
    fields = (_INDEX_MAGIC, slots, used) + tuple(stamp)
    packed = _INDEX_HEADER.pack(*fields, 0)
    return packed[:-4] + struct.pack("<L", zlib.crc32(packed[:-4]))


def _parse_index_header(header):
    """The header's fields if it is intact, else None."""
    if len(header) != _INDEX_HEADER.size:
        return None
    fields = _INDEX_HEADER.unpack(header)
    if (fields[_INDEX_HEADER_MAGIC] != _INDEX_MAGIC
            or zlib.crc32(header[:-4]) != fields[_INDEX_HEADER_CRC]):
        return None
    slots = fields[_INDEX_HEADER_SLOTS]
    if slots < _INDEX_MIN_SLOTS or slots & (slots - 1):
        return None
    return fields


# ---------------------------------------------------------------- scavenger results
#
# What a pass did and what went wrong, counted and reported as it goes.


@dataclasses.dataclass
class ScavengeStats:
    """What one scavenger pass did."""

    files_moved: int = 0        # entries appended to final archives
    temp_zips_done: int = 0     # temp zips fully ingested and deleted
    archives_touched: int = 0   # commits made (an archive can take several in a pass)
    conflicts: int = 0          # entries kept under a name.~N~ name
    salvaged: int = 0           # unsealed temp zips of dead writers recovered
    duplicates: int = 0         # entries skipped because already archived
    busy: int = 0               # temp zips skipped: locked by a writer or scavenger
    taken_over: int = 0         # locked temp zips of hosts declared down (dead_hosts)
    locks_taken_over: int = 0   # archive locks held by scavengers on such hosts
    waiting: int = 0            # unsealed temp zips not yet past the grace period
    recovered_journals: int = 0  # interrupted commits rolled back or forward
    errors: list = dataclasses.field(default_factory=list)  # (path, reason)

    def add(self, other):
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


def _report_problem(stats, path, reason, level=logging.ERROR):
    """Record a problem of the pass in ``stats.errors`` and log it once (the
    CLI prints ``stats.errors`` itself, so its handler skips these records)."""
    stats.errors.append((path, reason))
    _log.log(level, "%s", reason if path in reason else "%s: %s" % (path, reason),
             extra={"rear_reported": True})


# ---------------------------------------------------------------- journal
#
# Commit step 4; layout in the module docstring.


def _crash_test_point(step):
    """A named point of the commit protocol: "journal-written" (step 4),
    "entries-written" (step 5, before the end records), "appended" (step 5
    done), "committed" (step 6), "temp-zip-deleted" (inside step 7, before
    its sidecar), "temps-finished" (step 7 done), "rolled-over",
    "salvaged".  Does nothing: it is the seam the crash tests kill the
    process at, so that they name steps rather than private functions."""


def _write_journal(paths, header, archive):
    """Commit step 4: the journal, complete under its own name or not at all.

    The header is followed by the archive's old tail, copied in the kernel
    (it is the whole central directory: 100 MB for a million entries, which
    must not pass through Python).  Written as ``.journal-new``, fsynced,
    then renamed: a ``.journal`` is therefore never torn and needs no CRC
    over its bulk.  Returns the open journal and the offset of the old tail,
    from which step 5 copies the old central directory back.
    """
    tail_size = archive.size - archive.cd.cd_offset
    head = json.dumps(dict(header, tail_size=tail_size), sort_keys=True).encode("utf-8")
    prefix = (_JOURNAL_HEAD.pack(_JOURNAL_MAGIC, len(head)) + head
              + _JOURNAL_HEAD_CRC.pack(zlib.crc32(head)))
    fd = _create_file(paths.journal_new, os.O_RDWR | os.O_TRUNC | _O_CLOEXEC)
    try:
        _write_all(fd, prefix)
        if tail_size:
            _copy_range(archive.fd, archive.cd.cd_offset, fd, len(prefix), tail_size,
                        paths.archive)
        os.fsync(fd)
        os.replace(paths.journal_new, paths.journal)
        _sync_directory(paths.directory)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):   # never hide the original error
            os.unlink(paths.journal_new)
        raise
    return fd, len(prefix)


def _read_journal(fd, path):
    """(header, offset of the old tail) of the journal open on ``fd``."""
    size = os.fstat(fd).st_size
    damaged = ArchiveError(
        "%s is not a complete rear journal (written by another rear version, or "
        "changed since); its archive may be mid-commit.  Keep it, check the archive "
        "with 'rear verify', and delete the journal only if the archive is intact"
        % path, path)
    head = os.pread(fd, _JOURNAL_HEAD.size, 0)
    if len(head) < _JOURNAL_HEAD.size:
        raise damaged
    magic, head_len = _JOURNAL_HEAD.unpack(head)
    data_offset = _JOURNAL_HEAD.size + head_len + _JOURNAL_HEAD_CRC.size
    if magic != _JOURNAL_MAGIC or data_offset > size:
        raise damaged
    body = os.pread(fd, head_len + _JOURNAL_HEAD_CRC.size, _JOURNAL_HEAD.size)
    (crc,) = _JOURNAL_HEAD_CRC.unpack_from(body, head_len)
    if zlib.crc32(body[:head_len]) != crc:
        raise damaged
    try:
        header = json.loads(body[:head_len].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise damaged from None
    if not _is_valid_journal_header(header, path) or size != data_offset + header["tail_size"]:
        raise damaged
    return header, data_offset


_JOURNAL_KEYS = {"dest": str, "archive": str, "created": bool, "old_size": int,
                 "old_cd_offset": int, "temps": list, "tail_size": int}


def _is_valid_journal_header(header, path):
    """Every key the docstring specifies, of its type and consistent, and a
    ``dest`` whose key is this journal's name: a header that passes its CRC
    but was written by something else must never direct a rollback."""
    if not isinstance(header, dict) or not all(
            type(header.get(key)) is kind for key, kind in _JOURNAL_KEYS.items()):
        return False
    if not 0 <= header["old_cd_offset"] <= header["old_size"] or header["tail_size"] != (
            header["old_size"] - header["old_cd_offset"]):
        return False
    if not all(isinstance(temp, dict) and type(temp.get("zip")) is str
               and type(temp.get("finish")) is bool for temp in header["temps"]):
        return False
    key = os.path.basename(path).split(".", 1)[0]
    try:
        dest = split_path(header["dest"] + "/_")[0]
    except PathError:
        return False
    return dest == header["dest"] and _archive_key(dest) == key


def _load_journal(path):
    """(descriptor, header, offset of the old tail) of a journal, or None
    if there is none.

    With the archive lock held, a journal that turns out to be gone (rule 1
    and 2 of "network filesystems") was finished by whoever held the lock
    before.  Its bytes are read once this client's view has caught up with
    the scavenger that wrote them (rule 3).
    """
    fd = _open_existing(path, os.O_RDONLY | _O_CLOEXEC)
    if fd is None:
        return None
    try:
        header, tail_offset = _await_current_view(fd, path,
                                                  lambda _st: _read_journal(fd, path))
    except OSError as err:
        _close_read_only(fd)
        if err.errno in _GONE_ERRNOS:
            return None
        raise
    except BaseException:
        _close_read_only(fd)
        raise
    return fd, header, tail_offset


# ---------------------------------------------------------------- recovery
#
# Interrupted commits, rolled back or finished (module docstring, Recovery).


def _finish_temps(paths, temps):
    """Commit step 7: delete finished temp zips, record the rest as done."""
    inbox = os.path.join(paths.base, _INBOX)
    shards = set()
    for temp in temps:
        zip_path = _journaled_temp_zip(inbox, temp["zip"])
        if os.path.dirname(zip_path) != inbox:
            shards.add(os.path.dirname(zip_path))
        if temp["finish"]:
            _unlink_if_exists(zip_path)
            _crash_test_point("temp-zip-deleted")
            _unlink_if_exists(_sidecar_path(zip_path))
        else:
            try:
                sidecar = _read_sidecar(_sidecar_path(zip_path))
            except TempZipError:
                sidecar = None
            if sidecar is None:
                continue   # gone: a crashed earlier run finished it already
            if paths.dest not in sidecar.done:
                sidecar.done.append(paths.dest)
                _write_sidecar(_sidecar_path(zip_path), sidecar)
    for shard in sorted(shards):
        with contextlib.suppress(FileNotFoundError):    # a journal's, its temp zips long gone
            _sync_directory(shard)
    _sync_directory(inbox)


def _journaled_temp_zip(inbox, recorded):
    """The temp zip a journal names by its path in inbox/ (``NAME.zip`` or
    ``hosts/HOST/NAME.zip``), never anything outside inbox/ whatever the
    journal holds.  (A scavenger of a release without sharded inboxes keeps
    the file name alone: it leaves a sharded temp zip in place, and the
    next pass skips its entries as duplicates.)"""
    parts = recorded.split("/")
    if len(parts) == 3 and parts[0] == _SHARDS_DIR and parts[1] not in ("", ".", ".."):
        return os.path.join(inbox, _SHARDS_DIR, parts[1], os.path.basename(parts[2]))
    return os.path.join(inbox, os.path.basename(recorded))


def _recover_locked(paths, stats):
    """With the archive lock held: roll back or forward an interrupted commit."""
    # Killed while writing the journal: the archive was not touched yet.
    # (Unlinked, not tested for: rule 1 of "network filesystems".)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(paths.journal_new)
        _sync_directory(paths.directory)
    _finish_committed(paths, stats)
    _roll_back_journal(paths, stats)


def _finish_committed(paths, stats):
    """Redo steps 7 and 8 of a commit that passed its commit point."""
    commit = _load_journal(paths.commit)
    if commit is None:
        return
    fd, header, _tail_offset = commit
    _close_read_only(fd)
    paths.set_dest(header["dest"])
    _finish_temps(paths, header["temps"])
    os.unlink(paths.commit)
    _sync_directory(paths.directory)
    stats.recovered_journals += 1
    _log.warning("finished the interrupted commit to %s", paths.archive)


def _roll_back_journal(paths, stats):
    """Undo a commit that did not reach its commit point: write the old tail
    back and truncate (or delete an archive the commit created)."""
    journal = _load_journal(paths.journal)
    if journal is None:
        return
    journal_fd, header, tail_offset = journal
    try:
        paths.set_dest(header["dest"])
        if header["created"]:
            _unlink_if_exists(paths.archive)
            if os.path.isdir(os.path.dirname(paths.archive)):
                _sync_directory(os.path.dirname(paths.archive))
        else:
            fd = _open_existing(paths.archive, os.O_RDWR | _O_CLOEXEC | _O_NOFOLLOW)
            if fd is None:
                raise ArchiveError("%s is missing, but the journal %s says a commit to it "
                                   "was interrupted; restore the archive (or move the "
                                   "journal away if it is gone for good)"
                                   % (paths.archive, paths.journal), paths.archive)
            try:
                _copy_range(journal_fd, tail_offset, fd, header["old_cd_offset"],
                            header["tail_size"], paths.journal)
                os.ftruncate(fd, header["old_size"])
                os.fsync(fd)
            finally:
                os.close(fd)
    finally:
        _close_read_only(journal_fd)
    _log.warning("rolled back the interrupted commit to %s", paths.archive)
    os.unlink(paths.journal)
    _sync_directory(paths.directory)
    stats.recovered_journals += 1


def _roll_back_quietly(paths, stats):
    """Roll back a failed commit; a failing rollback never hides the cause."""
    try:
        _recover_locked(paths, stats)
    except Exception:
        _log.exception("rolling back the failed commit to %s failed too; the journal "
                       "%s stays for 'rear recover'", paths.archive, paths.journal)


def _recover_all_journals(base, stats, dead_hosts=frozenset()):
    """Recover every interrupted commit whose archive is not locked now.

    A journal's name is its archive's key, so its lock can be taken before
    the journal is read: one being written by a live scavenger is never
    mistaken for a torn one.
    """
    directory = os.path.join(base, _INBOX, _ARCHIVES_DIR)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return
    keys = {name.rsplit(".", 1)[0] for name in names
            if name.endswith(_PENDING_JOURNAL_SUFFIXES)}
    # Index files being replaced when a scavenger died (.<key>.index.<hex>.tmp)
    leftovers = {}
    for name in names:
        if name.startswith(".") and name.endswith(".tmp") and _INDEX_SUFFIX + "." in name:
            leftovers.setdefault(name[1:].split(".", 1)[0], []).append(name)
    for key in sorted(keys | set(leftovers)):
        paths = _ArchivePaths(base, key=key)
        try:
            with _archive_lock(paths, blocking=False, dead_hosts=dead_hosts,
                               stats=stats) as held:
                if held:
                    if key in keys:
                        _recover_locked(paths, stats)
                    for name in leftovers.get(key, []):
                        _unlink_if_exists(os.path.join(directory, name))
        except (OSError, RearError, ValueError, KeyError) as err:
            _report_problem(stats, paths.journal, "recovery failed: %s" % err)


# ---------------------------------------------------------------- commit
#
# Steps 1-8 of the module docstring: the archive opened for appending,
# what to add, the journal written, the entries appended, the commit point.


class _ArchiveState:
    """An archive opened for appending: its descriptor, central directory
    (``cd``, a _CentralDirectory) and name index, and the name indexes of
    the series' rolled-over archives (``name.~N~.zip``), which duplicate and
    conflict decisions take into account too."""

    def __init__(self, paths, limits, roll_over=False):
        self.paths = paths
        self.roll_over = roll_over    # full for the next entry: start the next archive
        self.rolled = None        # [_RolledArchive], opened at the first lookup
        self.indexes = None       # _series_indexes()
        self.conflicts = 0        # renamed by name_for in this commit
        archive = paths.archive
        if not _is_inside(paths.base, archive):
            raise ArchiveError("%s resolves outside the base directory (a symlinked "
                               "directory?); refusing to write there" % archive, archive)
        _makedirs_durably(os.path.dirname(archive))
        # A new archive is created only once the journal saying so is durable
        # (see create()): created first, a kill would leave an empty file that
        # no zip reader accepts.
        self.fd = -1
        self.index = None
        for delay in itertools.chain(_ESTALE_RETRY.delays(), [None]):
            try:
                self._open(limits)
                return
            except BaseException as err:
                # Nothing was written through the descriptor yet.
                self.close(written=False)
                # Rule 2 of "network filesystems": the name opened, but a call
                # on the descriptor failed as gone (ESTALE, ENOENT; no file
                # name: not a lookup): a ghost of the archive another client's
                # scavenger removed before we took the lock (a new archive
                # whose commit was rolled back, a rollover), still in this
                # client's entry cache.  Looked up again once the cache lets
                # go (GlusterFS: 1 s).  Every step before the journal is
                # safe to redo.
                if delay is None or not _is_gone_descriptor(err):
                    raise
            time.sleep(delay)

    def _open(self, limits):
        self.rolled, self.index = None, None
        archive = self.paths.archive
        try:
            fd = _open_existing(archive, os.O_RDWR | _O_CLOEXEC | _O_NOFOLLOW)
        except IsADirectoryError as err:
            raise ArchiveError("%s is a directory, not an archive; move it away"
                               % archive, archive) from err
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise ArchiveError("%s is a symlink; rear does not follow links to "
                                   "archives, replace it with the file" % archive,
                                   archive) from err
            raise
        self.created = fd is None
        if fd is not None:
            self.fd = fd
        self._load_central_directory(limits)

    def _load_central_directory(self, limits):
        if self.created:
            self._start_empty()
            return
        st = os.fstat(self.fd)
        if not stat.S_ISREG(st.st_mode):
            raise ArchiveError("%s is not a regular file; move it away" % self.paths.archive,
                               self.paths.archive)
        if st.st_nlink > 1:
            members = _rolled_members(self.paths.archive)
            if members and _same_file(members[-1][1], self.paths.archive):
                # A rollover cut between its link and its unlink: finish it.
                self._finish_rollover(members[-1][1])
                return

        def read(st):
            size = st.st_size
            if size == 0 or size >= limits.max_size:
                return size, None
            return size, _read_end_records(self.fd, size, self.paths.archive)

        # Sizes come from the locked descriptor, never from before the lock,
        # and only as the server has them (rule 3 of "network filesystems").
        try:
            self.size, cd = _await_current_view(self.fd, self.paths.archive, read)
        except ArchiveError as err:
            raise _not_appendable(self.paths.archive, str(err)) from err
        if self.size and (self.roll_over or self.size >= limits.max_size
                          or cd.count >= limits.max_entries):
            self._roll_over()
            return
        if self.size == 0:
            self._start_empty()
            return
        self.cd = cd
        self.index = _NameIndex(self.paths.index, self.fd, self.paths.archive, cd, self.size)

    def _roll_over(self):
        archive = self.paths.archive
        members = _rolled_members(archive)
        number = members[-1][0] + 1 if members else 1
        for _attempt in range(_ROLLOVER_ATTEMPTS):
            rolled = _rolled_path(archive, number)
            try:
                linked = _link_exclusively(archive, rolled)
                break
            except FileExistsError:     # listed before this client saw it
                number += 1
        else:
            raise ArchiveError("%s cannot be rolled over: %s and %d names after it exist; "
                               "move some of the series away" % (archive, rolled,
                                                                  _ROLLOVER_ATTEMPTS), archive)
        if linked:
            _crash_test_point("rollover-linked")
        self._finish_rollover(rolled, linked)

    def _finish_rollover(self, rolled, linked=True):
        """The rest of a rollover once ``rolled`` names the full archive too
        (``linked``) or instead: the archive's own name removed, its name
        index moved with it, a new archive to start."""
        archive = self.paths.archive
        if linked:
            os.unlink(archive)
        _sync_directory(os.path.dirname(archive))
        # Its name index goes with it (the bytes, and so the stamp, are the
        # same): readers of the series and series-wide duplicate checks use
        # it.  Lost in a crash right here, it is rebuilt when needed.
        rolled_paths = _ArchivePaths(self.paths.base, _dest_of(self.paths.base, rolled))
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.paths.index, rolled_paths.index)
        _log.info("%s reached its size or entry cap; rolled over to %s", archive, rolled)
        _crash_test_point("rolled-over")
        self.close()
        self.created = True
        self._start_empty()

    def _start_empty(self):
        self.size = 0
        self.cd = _EMPTY_DIRECTORY
        self.index = _NameIndex(self.paths.index, self.fd, self.paths.archive, self.cd, 0)

    def create(self):
        """Create the new archive file (commit step 5, after the journal)."""
        self.fd = _create_file(self.paths.archive, os.O_RDWR | os.O_EXCL | _O_CLOEXEC
                               | _O_NOFOLLOW)

    def name_for(self, name, crc, file_size, stats):
        """The name to add ``name`` under, or None if the series already holds
        it (same name, CRC and size, in this archive or a rolled-over one)."""
        found = self._copies_in_series(name)
        if not found:
            return name
        if (crc, file_size) in found:
            return None
        number = 1
        while True:
            candidate = "%s.~%d~" % (name, number)
            found = self._copies_in_series(candidate)
            if not found:
                stats.conflicts += 1
                self.conflicts += 1
                if self.conflicts <= _CONFLICT_WARNINGS:
                    _log.warning("%s already holds %r with other content; keeping the "
                                 "new one as %r", self.paths.archive, name, candidate)
                return candidate
            if (crc, file_size) in found:
                return None
            number += 1

    def warn_of_more_conflicts(self):
        """One warning for the conflicts name_for did not name one by one."""
        more = self.conflicts - _CONFLICT_WARNINGS
        if more > 0:
            _log.warning("%s: %s of names it already holds with other content, kept "
                         "as 'name.~N~' too ('rear ls %s %s --versions' lists every copy)",
                         self.paths.archive, _counted(more, "more new copy"),
                         self.paths.base, self.paths.dest)

    def resolve(self, names):
        """Prepare the series-wide lookups of a commit's ``names``: one
        sequential pass over each index that holds any (_NameIndex.resolve).
        Returns the set of the names' hashes under which no index of the
        series holds a name, as far as those passes walked their probes
        (a hash not walked to its end is left out: name_for looks it up)."""
        hashes = [self.index.hash_of(name) for name in names]
        absent = set(hashes)
        for index in self._series_indexes():
            if index.used:
                index.resolve(hashes)
                absent.intersection_update([name_hash for name_hash, positions
                                            in index.resolved.items() if not positions])
        return absent

    def _copies_in_series(self, name):
        """{(crc, size)} of ``name`` across the series."""
        found = set()
        hash_of = self.index.hash_of
        for index in self._series_indexes():
            existing = index.lookup(name, hash_of)
            if existing is not None:
                found.add(existing)
        return found

    def _series_indexes(self):
        """This archive's index and its rolled-over archives', worked out
        once per index: a commit looks every name of its batch up in them."""
        if self.indexes is None or self.indexes[0] is not self.index:
            self.indexes = [self.index] + [rolled.index for rolled in self._rolled_archives()]
        return self.indexes

    def _rolled_archives(self):
        """The series' rolled-over archives, opened once per commit.  Under
        this archive's lock: only a rollover, made under it, changes them."""
        if self.rolled is None:
            self.rolled = []
            for path in _series(self.paths.base, self.paths.dest):
                if path != self.paths.archive:
                    self.rolled.append(_RolledArchive(self.paths.base, path))
        return self.rolled

    def update_index(self, positions, cd, size, stats):
        """After the commit point.  A failure here loses no data (the index
        is a cache, rebuilt when stale), so it is reported, not raised: the
        commit stands and its temp zips are still finished.  Indexes of
        rolled-over archives rebuilt for this commit are saved too."""
        updates = [(self.index, positions, self.fd, cd, size)] + [
            (rolled.index, [], rolled.fd, rolled.cd, rolled.size)
            for rolled in self.rolled or () if rolled.index.rebuilt]
        for index, new, fd, index_cd, index_size in updates:
            try:
                index.update(new, fd, index_cd, index_size)
            except OSError as err:
                _report_problem(stats, index.path, "could not update the name index (%s); the "
                                "next commit rebuilds it" % err, logging.WARNING)

    def close(self, written=True):
        """``written=False``: nothing was written through the descriptor
        yet, and a close that fails as gone (rule 2) is no error."""
        for rolled in self.rolled or ():
            rolled.close()
        if self.index is not None:
            self.index.close()
        _close_held(self, os.close if written else _close_read_only)


class _RolledArchive:
    """A rolled-over archive of a series, open read-only for its name index."""

    def __init__(self, base, path):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | _O_CLOEXEC | _O_NOFOLLOW)
        self.index = None
        try:
            self.size = os.fstat(self.fd).st_size
            self.cd = _read_end_records(self.fd, self.size, path)
            self.index = _NameIndex(_ArchivePaths(base, _dest_of(base, path)).index,
                                    self.fd, path, self.cd, self.size, rolled=True)
        except BaseException:
            self.close()
            raise

    def close(self):
        if self.index is not None:
            self.index.close()
        _close_held(self)


def _commit_to_archive(base, dest, items, limits, stats, dead_hosts=frozenset(), wait=True):
    """Append (claim, member, entry) items to one archive atomically (steps
    1-8).  What would take the archive past ``limits`` continues in the
    next archive of the series, by a commit of its own under the same lock;
    only the last one finishes the temp zips, so a crash between two leaves
    them whole, and the next run finds the entries committed so far as
    duplicates.  Without ``wait``, returns False having done nothing if
    another scavenger holds the archive's lock; else True."""
    paths = _ArchivePaths(base, dest)
    claims = list({id(claim): claim for claim, _member, _entry in items}.values())
    with _archive_lock(paths, blocking=wait, dead_hosts=dead_hosts,
                       stats=stats) as held:                        # step 1
        if not held:
            return False
        _recover_locked(paths, stats)
        paths.set_dest(dest)
        roll_over = False
        while items:
            archive = _ArchiveState(paths, limits, roll_over)      # step 2
            try:
                additions, items = _plan_additions(archive, items, limits, stats)   # step 3
                archive.warn_of_more_conflicts()
                roll_over = bool(items)
                _commit_additions(paths, archive, additions, [] if items else claims, stats)
            finally:
                archive.close()
    return True


def _commit_additions(paths, archive, additions, claims, stats):
    """Steps 4-8 of one commit of ``additions`` to ``archive``; ``claims``
    are the temp zips it finishes (none for a commit that the next archive
    of the series continues)."""
    dest = paths.dest
    inbox = os.path.join(paths.base, _INBOX)
    temps = [{"zip": "/".join(os.path.relpath(claim.path, inbox).split(os.sep)),
              "finish": claim.pending == {dest}} for claim in claims]
    if additions:
        positions, cd, size = _journal_and_append(paths, archive, additions,
                                                  temps, stats)       # steps 4-5
        for _temp, entry, _name in additions:
            entry.staged = None     # written: the index update may need the memory
        os.replace(paths.journal, paths.commit)               # step 6: the commit point
        _sync_directory(paths.directory)
        stats.files_moved += len(additions)
        stats.archives_touched += 1
        archive.update_index(positions, cd, size, stats)      # step 7
    elif archive.index.rebuilt:   # save the rebuild even when all were duplicates
        archive.update_index([], archive.cd, archive.size, stats)
    _crash_test_point("committed")
    _finish_temps(paths, temps)
    _crash_test_point("temps-finished")
    for claim in claims:
        claim.pending.discard(dest)
    _unlink_if_exists(paths.commit)                           # step 8
    _sync_directory(paths.directory)


def _plan_additions(archive, items, limits, stats):
    """Commit step 3: ([(claim, entry, name to add it under)], duplicates
    left out; the items that would take the archive past ``limits``, which
    the next archive of the series takes).  An empty archive takes at least
    one entry, however large: a cap is never a reason to refuse one."""
    archive.index.hashes.update((member, entry.staged.name_hash)
                                for _temp, member, entry in items if entry.staged)
    # Names whose hash no index of the series holds are new unless this
    # commit adds them twice: decided without name_for's lookup of each
    # name, which was half of the planning's CPU time under the lock.
    new_hashes = archive.resolve([member for _temp, member, _entry in items])
    adding = archive.index.pending
    additions = []
    entries_left = limits.max_entries - archive.cd.count
    bytes_left = limits.max_size - archive.size - _END_RECORDS_MAX
    for position, (claim, member, entry) in enumerate(items):
        staged = entry.staged
        cost = _entry_cost_bound(member, entry)
        if (entries_left < 1 or cost > bytes_left) and (additions or archive.cd.count):
            return additions, items[position:]
        if staged is not None and staged.name_hash in new_hashes and member not in adding:
            name = member
        else:
            name = archive.name_for(member, entry.crc, entry.file_size, stats)
            if name is None:
                stats.duplicates += 1
                continue
        adding[name] = (entry.crc, entry.file_size)
        additions.append((claim, entry, name))
        entries_left -= 1
        bytes_left -= cost
    return additions, []


def _entry_cost_bound(member, entry):
    """At most how many bytes adding ``entry`` as ``member`` (or a
    ``member.~N~``) takes in an archive: data, local header and central
    record with every extra field rear may write, zip64 included."""
    name_size = len(member) if member.isascii() else len(member.encode("utf-8"))
    return (entry.compressed_size + 2 * (name_size + _CONFLICT_SUFFIX_MAX)
            + _HEADERS_PER_ENTRY_MAX
            + (_EXTRA_HEADER.size + len(entry.provenance) if entry.provenance else 0))


def _journal_and_append(paths, archive, additions, temps, stats):
    """Commit steps 4 and 5; on any error the archive is rolled back before
    the error is raised.  Returns what _append_entries returns."""
    header = {"dest": paths.dest, "archive": paths.archive, "created": archive.created,
              "old_size": archive.size, "old_cd_offset": archive.cd.cd_offset,
              "temps": temps}
    try:
        journal_fd, tail_offset = _write_journal(paths, header, archive)
        _crash_test_point("journal-written")
        try:
            return _append_entries(archive, additions, journal_fd, tail_offset)
        finally:
            # Closed before the journal is renamed or deleted: an NFS
            # client keeps an open deleted file as .nfsXXXX.
            os.close(journal_fd)
    except BaseException:
        # ENOSPC, EIO...: put the old tail back now rather than leave a
        # broken archive until the next run.
        _roll_back_quietly(paths, stats)
        raise


def _append_entries(archive, additions, journal_fd, tail_offset):
    """Commit step 5: new entries over the old tail, then the old central
    directory copied back from the journal, the new records and the end
    records; fsync.  Returns [(name, position of its record in the new
    central directory)], the new _CentralDirectory and the new size."""
    if archive.created:
        archive.create()
    old = archive.cd
    offset, new_central, positions = _write_entries(archive, additions, old.cd_size)
    # The old central directory, verbatim: nothing of it is parsed or held.
    _copy_range(journal_fd, tail_offset, archive.fd, offset, old.cd_size,
                archive.paths.journal)
    cd = _CentralDirectory(old.count + len(positions), offset,
                           old.cd_size + len(new_central), old.comment)
    _crash_test_point("entries-written")
    end_records = _pack_end_records(cd.count, cd.cd_size, offset, cd.comment)
    _pwrite_all(archive.fd, new_central + end_records, offset + old.cd_size)
    size = offset + cd.cd_size + len(end_records)
    os.ftruncate(archive.fd, size)
    os.fsync(archive.fd)
    if archive.created:
        _sync_directory(os.path.dirname(archive.paths.archive))
    _crash_test_point("appended")
    return positions, cd, size


class _Staged:
    """What committing an entry as ``member`` needs that no archive's state
    changes: the name's hash, the local header and the central record (with
    its offset left to fill in; None if a zip64 field may be needed).
    Worked out when its temp zip is claimed, before any archive's lock is
    taken, so that scavengers committing to one archive take turns for
    less of their work (two on one archive went 1.25x as fast as one).
    Dropped once the entry is written: a batch holds about 250 bytes more
    per entry meanwhile."""

    __slots__ = ("member", "name_hash", "local_header", "central_record")

    def __init__(self, member, entry, shapes):
        name = member.encode("utf-8")
        self.member = member
        self.name_hash = _name_hash(name)
        if entry.file_size < _U32_LIMIT and entry.compressed_size < _U32_LIMIT:
            self.local_header, self.central_record = _pack_headers(entry, name, shapes)
        else:
            self.local_header = _pack_local_header(entry, _encode_name(member))
            self.central_record = None


def _local_header_as(entry, name):
    """``entry``'s local header under the archive name ``name``: the staged
    one unless the name is new (a conflict's) or nothing is staged."""
    staged = entry.staged
    if staged is not None and staged.member == name:
        return staged.local_header
    return _pack_local_header(entry, _encode_name(name))


def _add_central_record(central, entry, name, offset):
    """Append ``entry``'s central record as ``name`` with its local header
    at ``offset`` to the bytearray ``central``: the staged one with the
    offset put in where no zip64 field is needed (4.5.3: then the record
    differs in that field alone)."""
    staged = entry.staged
    if staged is None or staged.member != name or staged.central_record is None \
            or offset >= _U32_LIMIT:
        central += _pack_central_record(entry, offset, _encode_name(name))
    else:
        at = len(central) + _CD_LOCAL_HEADER_OFFSET_AT
        central += staged.central_record
        _CD_LOCAL_HEADER_OFFSET_STRUCT.pack_into(central, at, offset)


def _write_entries(archive, additions, cd_position):
    """The new entries, copied raw from their temp zips over the old tail:
    small ones gathered in a buffer, large ones copied in the kernel.
    Returns (offset where they end, their central records (a bytearray),
    [(name, position of its record in the new central directory, whose
    records from ``cd_position`` on these are)])."""
    fd = archive.fd
    offset = archive.cd.cd_offset
    central = bytearray()
    positions = []
    buffer = bytearray()
    buffer_offset = offset
    written_back = offset       # where the last _start_writeback ended
    for claim, entry, name in additions:
        header = _local_header_as(entry, name)
        positions.append((name, cd_position + len(central)))
        _add_central_record(central, entry, name, offset)
        buffer += header
        if entry.compressed_size <= _SMALL_ENTRY:
            # A view: the bytes are copied once, into the buffer.
            buffer += claim.reader.view_exact(entry.data_offset, entry.compressed_size)
        else:
            _pwrite_all(fd, buffer, buffer_offset)
            _copy_range(claim.fd, entry.data_offset, fd, offset + len(header),
                        entry.compressed_size, claim.path)
            buffer = bytearray()
            buffer_offset = offset + len(header) + entry.compressed_size
        offset += len(header) + entry.compressed_size
        if len(buffer) >= _CHUNK:
            _pwrite_all(fd, buffer, buffer_offset)
            buffer_offset += len(buffer)
            buffer = bytearray()
        if buffer_offset - written_back >= _WRITEBACK_BYTES:
            _start_writeback(fd, written_back, buffer_offset - written_back)
            written_back = buffer_offset
    _pwrite_all(fd, buffer, buffer_offset)
    return offset, central, positions


# ---------------------------------------------------------------- claim
#
# Taking temp zips: locked, read (sealed) or salvaged (dead writers'),
# their entries routed to archives.


class _Claim:
    """A temp zip this scavenger holds the lock of, with its entries routed:
    ``routes`` is [(dest, member, entry)], each name split (and validated)
    once, when the temp zip was claimed; ``pending`` holds the archives it
    still feeds (those its sidecar's ``done`` lists are left out)."""

    def __init__(self, path, fd, routes, salvaged, done):
        self.path = path
        self.sidecar_path = _sidecar_path(path)
        self.fd = fd
        self.reader = _ChunkReader(fd, path)
        self.routes = routes
        self.salvaged = salvaged
        self.pending = {dest for dest, _member, _entry in routes} - set(done)
        # No commit will delete it (no entries, or every archive done by a
        # scavenger that died before deleting it): _commit_claims does.
        self.nothing_to_commit = not self.pending
        self.failed = False

    def release(self):
        _close_held(self)


def _in_part(key, part):
    """Is the temp zip whose _part_key is ``key`` in ``part`` (see
    scavenge; None: all)?"""
    if part is None:
        return True
    number, count = part
    return _name_hash(key.encode("utf-8")) % count == number - 1


def _part_key(inbox, path):
    """What puts the temp zip ``path`` in a part: its host's directory in a
    sharded inbox (a scavenger lists only its part's), else its file name.
    Both stay the same from its creation to its deletion, so a temp zip
    stays in one part whoever lists it."""
    relative = os.path.relpath(path, inbox).split(os.sep)
    if len(relative) == 3 and relative[0] == _SHARDS_DIR:
        return relative[1]
    return relative[-1]


def _list_temp_zips(inbox, part=None):
    """The temp zips in ``inbox`` and its hosts' shards (those of ``part``,
    see scavenge), in the order their writers started them: the order
    scavengers archive them in and the pending view reads them in, so that
    of several copies of one name the first written is the one archived
    under the name, before and after scavenging alike."""
    paths = [os.path.join(inbox, name) for name in _temp_zip_names(inbox)
             if _in_part(name, part)]
    for shard in _shard_directories(inbox, part):
        paths.extend(os.path.join(shard, name) for name in _temp_zip_names(shard))
    return sorted(paths, key=_started_order_of_path)


def _temp_zip_names(directory):
    """Names of the temp zips in ``directory`` (none if it is gone)."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [name for name in names if name.endswith(_TEMP_SUFFIX) and not name.startswith(".")]


def _shard_directories(inbox, part=None):
    """The hosts' directories of a sharded ``inbox`` (of ``part``): a pass
    lists only its own part's."""
    shards = os.path.join(inbox, _SHARDS_DIR)
    try:
        names = os.listdir(shards)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [os.path.join(shards, name) for name in sorted(names)
            if not name.startswith(".") and _in_part(name, part)]


def _started_order_of_path(path):
    return _started_order(os.path.basename(path))


def _started_order(name):
    """Sort key of a temp zip's file name ``<host>-<pid>-<ns>-<random>.zip``:
    when its writer started it (hex nanoseconds), then the name.  A name of
    another shape (made by hand) sorts last."""
    fields = name[:-len(_TEMP_SUFFIX)].rsplit("-", 3)
    try:
        return (0, int(fields[-2], 16), name)
    except (IndexError, ValueError):
        return (1, 0, name)


def _past_grace(sidecar, st, grace):
    """True if an unsealed temp zip has not changed for the grace period.

    Its last change, not its creation, counts: a live writer on a filesystem
    without locks keeps its temp zip's mtime fresh.
    """
    return time.time() >= _salvage_after(sidecar, st, grace)


def _salvage_after(sidecar, st, grace):
    """When an unsealed temp zip becomes past its grace period: its last
    change plus ``grace``, or plus the writer's own if that is longer."""
    if sidecar is None:
        return st.st_mtime + grace
    return max(sidecar.created, st.st_mtime) + sidecar.grace(grace)


def _claim(path, stats, *, flush=False, grace=0.0, salvage_only=False, dead_hosts=()):
    """Lock one temp zip and read its entries; None if it is not ready.

    The steps: the name is a regular file (never a link) that this process
    is not writing; it opens and locks (busy: a live writer or another
    scavenger has it, unless its writer's host is in ``dead_hosts``); its
    entries are read (sealed) or salvaged (a dead writer's, once past the
    grace period or with ``flush``); each entry is routed to its archive.
    """
    if not _is_regular_temp_zip(path):
        return None
    with _OWN_TEMP_ZIPS_LOCK:
        if path in _OWN_TEMP_ZIPS:
            stats.busy += 1
            return None
    locked = _open_and_lock(path, stats, dead_hosts, flush)
    if locked is None:
        return None
    fd, locks_work = locked
    claim = None
    try:
        sidecar = _read_sidecar(_sidecar_path(path))
        read = _read_claimed_entries(fd, path, sidecar, stats, flush=flush and locks_work,
                                     grace=grace, salvage_only=salvage_only)
        if read is not None:
            entries, salvaged = read
            done = sidecar.done if sidecar is not None else []
            claim = _Claim(path, fd, _route_entries(path, entries), salvaged is not None, done)
            if salvaged is not None:   # said once the entries are known to be routable
                _log.warning("salvaged %s from %s, an unsealed temp zip of a dead "
                             "writer%s", _counted(len(entries), "entry"), path,
                             "; after them, %s" % salvaged if salvaged else "")
        return claim
    finally:
        if claim is None:
            _close_read_only(fd)


def _is_regular_temp_zip(path):
    """False if the temp zip is gone; TempZipError if it is not a regular file."""
    st = _stat_existing(path, follow_symlinks=False)
    if st is None:
        return False
    if not stat.S_ISREG(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise TempZipError("%s is %s; rear never follows links in inbox/, remove it"
                           % (path, kind), path)
    return True


def _open_and_lock(path, stats, dead_hosts=(), flush=False):
    """(descriptor, whether locks work) of the temp zip, locked by us (or
    taken over from a host in ``dead_hosts``, waiting for it to be still
    with ``flush``); None if it is gone or busy."""
    fd = _open_existing(path, os.O_RDWR | _O_CLOEXEC | _O_NOFOLLOW)
    if fd is None:
        return None
    locked = None
    try:
        locks_work = True
        try:
            if not _lock(fd, path, exclusive=True, blocking=False):
                if not _may_take_over(fd, path, dead_hosts, flush):
                    stats.busy += 1
                    return None
                stats.taken_over += 1
        except OSError as err:
            # GlusterFS: another client's scavenger ingested and deleted it
            # after our lookup; the lock call is the first to ask the server.
            if err.errno in _GONE_ERRNOS:
                return None
            raise
        except LockingUnsupportedError as err:
            _warn_no_locks(path, err)
            locks_work = False
        # The file may have been ingested and unlinked between our open and
        # our lock: only the name's current inode counts.
        current = _stat_existing(path)
        st = os.fstat(fd)
        if current is None or (current.st_ino, current.st_dev) != (st.st_ino, st.st_dev):
            return None
        locked = fd, locks_work
        return locked
    finally:
        if locked is None:
            _close_read_only(fd)


def _may_take_over(fd, path, dead_hosts, wait=False):
    """Is this locked temp zip, with hosts declared down, one to take over
    without its lock: an unsealed one whose writer is on such a host, or a
    sealed one (its lock can then only be a scavenger's claim) that has
    been still for _DEAD_HOST_QUIET seconds (with ``wait``, once it has)?

    A crashed node's locks last as long as the filesystem keeps its session:
    until the connection drops (GlusterFS), the MDS session timeout (CephFS,
    about a minute), ``SESSION_SUSTAIN_TIME`` (MooseFS: a day by default).
    Two scavengers taking over the same temp zip are safe (the archive lock
    orders their commits; the second finds every entry already there and
    skips it as a duplicate); a writer still alive would not be: what it
    wrote after the takeover would go to a deleted file.  So what can be
    checked is: the writer's pid when it ran on this host, and that the temp
    zip has been still for _DEAD_HOST_QUIET seconds.
    """
    if not dead_hosts:
        return False
    sidecar = _read_sidecar(_sidecar_path(path))
    if sidecar is not None:
        host, pid = sidecar.host, sidecar.pid
    else:
        host, pid = _writer_of_temp_name(os.path.basename(path), dead_hosts)
    # A sealed one is taken over too: its writer may have died between
    # sealing and closing it, and if its lock is a live scavenger's claim,
    # the second commit of the same entries finds them all and skips them.
    # That makes a sealed one safe to take whoever wrote it: its lock may be
    # the claim of a scavenger on the host declared down (a dead client's
    # claims last as long as its other locks).
    # Nor does its writer matter: it never writes to a sealed one again.
    claimed = sidecar is not None and sidecar.is_sealed
    if host not in dead_hosts and not claimed:
        return False
    writer = "pid %s on %s" % (pid, host)
    if not claimed and _runs_on_this_host(host, pid):
        raise TempZipError("%s: its writer, %s, this host, still runs; --dead-host is for "
                           "a node that is down" % (path, writer), path)
    st, _changed = _refresh_view(fd)
    still = time.time() - st.st_mtime
    if still < _DEAD_HOST_QUIET and wait and claimed:
        # A --flush is to finish: a sealed one does not change again, so
        # waiting out the quiet period tells a live scavenger's claim
        # (which finishes meanwhile, the temp zip gone) from a dead one.
        # (An unsealed one that just changed is refused instead: its
        # writer may well be alive, and the operator told otherwise.)
        time.sleep(_DEAD_HOST_QUIET - still)
        if _stat_existing(path) is None:
            return False
        st, _changed = _refresh_view(fd)
        still = time.time() - st.st_mtime
    if still < _DEAD_HOST_QUIET and claimed:
        return False        # just sealed: most likely a live scavenger's claim
    if still < _DEAD_HOST_QUIET:
        raise TempZipError("%s changed %.1f s ago, so its writer (%s) may be alive; "
                           "--dead-host is for a node that is down: if it is, run the "
                           "scavenger again in %.0f s" % (path, still, writer,
                                                          _DEAD_HOST_QUIET - still), path)
    if claimed:
        _log.warning("taking over sealed %s without its lock, which a scavenger on a host "
                     "declared down (--dead-host) may hold", path)
    else:
        _log.warning("taking over %s without its lock: its writer (%s) is on a host declared "
                     "down (--dead-host)", path, writer)
    return True


def _writer_of_temp_name(name, hosts):
    """(host, pid) of the writer of a temp zip without a sidecar (its writer
    died between writer steps 1 and 2), from its name ``<host>-<pid>-...``;
    (None, None) if none of ``hosts`` made it."""
    for host in hosts:
        prefix = _short_hostname(host) + "-"
        if name.startswith(prefix):
            pid = name[len(prefix):].split("-")[0]
            return host, int(pid) if pid.isdigit() else None
    return None, None


def _read_claimed_entries(fd, path, sidecar, stats, *, flush, grace, salvage_only):
    """(entries, None) of a sealed temp zip we hold the lock of, (entries,
    what followed them) of a salvaged one; None if it must wait (a dead
    writer's within the grace period) or is not ours to take (a sealed one,
    when only salvaging)."""
    if sidecar is not None and sidecar.is_sealed:
        if salvage_only:
            return None
        entries = _await_current_view(fd, path, lambda st: _read_central_entries(
            fd, st.st_size, path, TempZipError, check_small=True, sidecar=sidecar))
        return entries, None
    # A writer on another client may have written more than this client's
    # cache shows; salvaging by the cached size would drop acknowledged
    # entries.  The lock keeps it still while we look.
    st, _changed = _refresh_view(fd)
    if not flush and not _past_grace(sidecar, st, grace):
        stats.waiting += 1
        return None
    entries, rest = _salvage_entries(fd, st.st_size, path)
    _crash_test_point("salvaged")
    return entries, rest


def _route_entries(path, entries):
    """[(dest, member, entry)] for a temp zip's entries; TempZipError if
    one cannot be routed or copied (the temp zip is then left in place)."""
    routes = []
    known_directories = {}
    shapes = {}     # kinds of entries: see _pack_headers
    for entry in entries:
        try:
            dest, member = _route_name(entry.name, known_directories)
        except PathError as err:
            raise TempZipError("%s: entry %r is not a valid rear path (%s); the temp "
                               "zip is left in place" % (path, entry.name, err), path) from err
        if entry.flags & ~_FLAGS_UNDERSTOOD:
            raise TempZipError("%s: entry %r uses zip features rear does not copy "
                               "(general purpose flags 0x%04x)" % (path, entry.name,
                                                                   entry.flags), path)
        if entry.name.endswith("/") and entry.file_size:
            raise TempZipError("%s: entry %r is named as a directory but holds %d bytes; "
                               "the temp zip is left in place" % (path, entry.name,
                                                                  entry.file_size), path)
        if entry.method not in _COMPRESSION_METHODS:
            raise TempZipError("%s: entry %r uses compression method %d, which this "
                               "Python cannot handle" % (path, entry.name, entry.method),
                               path)
        entry.staged = _Staged(member, entry, shapes)
        routes.append((dest, member, entry))
    return routes


def _remove_orphans(inbox, grace, stats):
    """Remove what crashes leave that holds no data in ``inbox`` (or a
    host's directory of it): sidecars whose zip is gone (a scavenger deletes
    the zip first), and, once older than the grace period, sidecar temp
    files and hidden new temp zips of writers that died while making them
    (nothing is written to a temp zip while it is hidden)."""
    try:
        names = os.listdir(inbox)
    except (FileNotFoundError, NotADirectoryError):
        return
    present = set(names)
    now = time.time()
    for name in names:
        path = os.path.join(inbox, name)
        try:
            if name.endswith(_SIDECAR_SUFFIX) and not name.startswith("."):
                if name[:-len(_SIDECAR_SUFFIX)] + _TEMP_SUFFIX not in present:
                    os.unlink(path)
            elif name.startswith(".") and name.endswith((".tmp", _TEMP_SUFFIX)):
                st = os.lstat(path)
                if now - st.st_mtime >= grace and (name.endswith(".tmp") or st.st_size == 0):
                    os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as err:   # not worth failing the pass over
            _report_problem(stats, path, "could not remove this leftover: %s" % err)


# ---------------------------------------------------------------- scavenger
#
# The pass that ties claims and commits together, and the public API.


def scavenge(base=None, flush=False, rotation_span=None, max_size=DEFAULT_MAX_SIZE,
             salvage_only=False, progress=None, max_entries=DEFAULT_MAX_ENTRIES,
             dead_hosts=(), part=None):
    """One scavenger pass over ``base/inbox``; returns a ScavengeStats.

    Sealed temp zips are ingested.  Unsealed ones whose lock is free (their
    writer died) are salvaged once older than 2 x rotation_span (the
    writer's, recorded in its sidecar, if that is longer), or at once
    with ``flush=True``.  Damaged files are reported in ``stats.errors`` and
    left in place.  Safe to run in any number of processes at once.
    ``progress(stats, done, total)`` is called after each commit, where done
    and total count the temp zips this pass looked at.

    ``dead_hosts`` names nodes known to be down whose writers' locks the
    filesystem still holds (MooseFS keeps a crashed client's locks for a
    day by default): their unsealed temp zips are taken over as if their
    locks were free, once unchanged for 10 s.  Never name a node that runs.

    ``part=(K, N)`` takes only the temp zips of part K of N (1 <= K <= N),
    split by a hash of their names, or of their hosts in a sharded inbox
    (each part lists only its own hosts' directories): N scavengers given
    parts 1 to N share the inbox without trying the same temp zip (each try
    is an open and a lock on the filesystem's metadata server), and each
    --flush waits for its own part only.  Interrupted commits are finished
    by every part.
    """
    part = _checked_part(part)
    if isinstance(dead_hosts, str):
        dead_hosts = (dead_hosts,)
    dead_hosts = frozenset(dead_hosts)
    grace = _GRACE_SPANS * _rotation_or_env(rotation_span)
    limits = _Limits(max_size, max_entries)
    base = _checked_base(base, writing=True, whole=True)
    inbox = os.path.join(base, _INBOX)
    stats = ScavengeStats()
    with _SCAVENGE_LOCK:
        _recover_all_journals(base, stats, dead_hosts)
        for directory in [inbox] + _shard_directories(inbox, part):
            _remove_orphans(directory, grace, stats)
        # Listed once: relisting for every batch made a pass quadratic in the
        # inbox size.  Temp zips sealed meanwhile wait for the next pass.
        paths = _list_temp_zips(inbox, part)
        looked_at = 0
        while looked_at < len(paths):
            claims, entries_held = [], 0
            # A batch's entries are many small objects, none in a cycle: see
            # _cyclic_gc_paused.
            with _cyclic_gc_paused():
                try:
                    while (looked_at < len(paths) and len(claims) < _BATCH_TEMP_ZIPS
                           and entries_held < _BATCH_ENTRIES):
                        path = paths[looked_at]
                        looked_at += 1
                        claim = _claim_or_report(path, stats, flush=flush, grace=grace,
                                                 salvage_only=salvage_only,
                                                 dead_hosts=dead_hosts)
                        if claim is not None:
                            claims.append(claim)
                            entries_held += len(claim.routes)
                    if claims:
                        report = _progress_report(progress, stats, looked_at, claims,
                                                  len(paths))
                        _commit_claims(base, claims, limits, stats, report, dead_hosts)
                finally:
                    for claim in claims:
                        claim.release()
                    # Freed before the collector resumes: its first run
                    # would walk the whole batch once more.
                    claims.clear()
    return stats


@contextlib.contextmanager
def _cyclic_gc_paused():
    """Pause Python's cyclic garbage collector for one batch, if it runs.

    A batch allocates several objects for each of up to 20,000 entries
    and keeps them until its commit; the collector, started every 700 new
    objects, walked them all again and again: 7.5% of a pass's
    instructions (callgrind, 20,000 1 KiB entries), for no garbage, as
    they form no cycles and are freed by their reference counts.  Paused
    per batch, like timeit pauses it while timing: cycles made meanwhile
    (by any thread of the process) wait for the collector's first run
    after the batch.  A caller that disabled the collector finds it
    disabled still."""
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def _checked_part(part):
    """``part`` as a (K, N) tuple, None for all, else ValueError."""
    if part is None:
        return None
    try:
        number, count = part
        valid = (isinstance(number, int) and isinstance(count, int)
                 and 1 <= number <= count)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError("part must be (K, N) with 1 <= K <= N, like (1, 4) to (4, 4) for "
                         "four scavengers, not %r" % (part,))
    return number, count


def _claim_or_report(path, stats, **options):
    """_claim, with a damaged temp zip reported in ``stats`` instead of raised."""
    try:
        return _claim(path, stats, **options)
    except (TempZipError, OSError) as err:
        if not _is_vanished(err, path):   # else ingested by a scavenger on another client
            _report_problem(stats, path, str(err))
        return None


def _progress_report(progress, stats, looked_at, claims, total):
    """A no-argument callback for _commit_claims, or None without ``progress``."""
    if progress is None:
        return None

    def report():
        # temp zips looked at so far, less this batch's unfinished claims
        unfinished = sum(bool(claim.pending) for claim in claims)
        progress(stats, looked_at - unfinished, total)

    return report


def _commit_claims(base, claims, limits, stats, report=None, dead_hosts=frozenset()):
    """Commit the claims' entries, one archive at a time; then count (and
    delete, where no commit did) the temp zips that are done."""
    by_dest = {}
    for claim in claims:
        for dest, member, entry in claim.routes:
            if dest in claim.pending:
                by_dest.setdefault(dest, []).append((claim, member, entry))

    def commit(dest, wait):
        """Commit to ``dest``, an error reported; False if skipped as busy."""
        items = [item for item in by_dest[dest] if not item[0].failed]
        if not items:
            return True
        try:
            if not _commit_to_archive(base, dest, items, limits, stats, dead_hosts, wait):
                return False
        except (RearError, OSError) as err:
            # Only this archive failed: the claims' other archives are still
            # committed (their sidecars record them as done), and every bad
            # archive is reported in this same pass.  A temp zip that failed
            # while being read is left out of the rest of the pass.
            archive = os.path.join(base, dest)
            reason = str(err) if archive in str(err) else "%s: %s" % (archive, err)
            remedy = _remedy(err, archive)
            _report_problem(stats, getattr(err, "path", None) or archive,
                            "%s; %sits entries stay in their temp zips in inbox/, and a later "
                            "pass commits them" % (reason, remedy + "; " if remedy else ""))
            if isinstance(err, TempZipError):
                for claim, _member, _entry in items:
                    claim.failed = True
        if report is not None:
            report()
        return True

    # Archives another scavenger is committing to are left for last: two
    # scavengers going through the same archives in the same order took
    # turns at every lock.
    busy = [dest for dest in sorted(by_dest) if not commit(dest, wait=len(by_dest) == 1)]
    for dest in busy:
        commit(dest, wait=True)
    for claim in claims:
        if claim.failed or claim.pending:
            continue      # not salvaged yet: nothing of it moved, or not all
        if claim.salvaged:
            stats.salvaged += 1
        if claim.nothing_to_commit and not _delete_temp_zip(claim, stats):
            continue
        stats.temp_zips_done += 1


def _delete_temp_zip(claim, stats):
    """Delete a temp zip no commit deleted; False (reported) if that fails."""
    try:
        _unlink_if_exists(claim.path)
        _unlink_if_exists(claim.sidecar_path)
        _sync_directory(os.path.dirname(claim.path))
    except OSError as err:
        # Its entries are committed: a later pass deletes it and skips them
        # as duplicates.
        _report_problem(stats, claim.path, "could not delete it: %s" % err)
        return False
    return True


class scavengerd:  # noqa: N801 -- the public name rear 0.1 users know
    """Run scavenger passes in a background thread every ``rotation_span``
    seconds, and a final flushing pass when the block exits."""

    def __init__(self, base=None, rotation_span=None, max_size=DEFAULT_MAX_SIZE,
                 max_entries=DEFAULT_MAX_ENTRIES):
        self.base = os.path.abspath(_base_or_env(base))
        self.rotation_span = _rotation_or_env(rotation_span)
        self.limits = _Limits(max_size, max_entries)
        self.stats = ScavengeStats()
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        _makedirs_durably(os.path.join(self.base, _INBOX))
        self._thread = threading.Thread(target=self._run_passes,
                                        name="rear-scavengerd", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, traceback):
        self._stop.set()
        self._thread.join()
        self._one_pass(flush=True)

    async def __aenter__(self):
        return self.__enter__()

    async def __aexit__(self, exc_type, exc, traceback):
        await _off_the_event_loop(self.__exit__, exc_type, exc, traceback)

    def _run_passes(self):
        while not self._stop.wait(self.rotation_span):
            self._one_pass(flush=False)

    def _one_pass(self, flush):
        try:
            self.stats.add(scavenge(self.base, flush=flush, rotation_span=self.rotation_span,
                                    max_size=self.limits.max_size,
                                    max_entries=self.limits.max_entries))
        except Exception:
            _log.exception("scavenger pass over %s failed", self.base)


def recover(base=None, rotation_span=None):
    """Roll back or finish interrupted commits and salvage dead writers' temp
    zips at once (sealed temp zips are left to the normal scavenger)."""
    return scavenge(base, flush=True, rotation_span=rotation_span, salvage_only=True)


# ---------------------------------------------------------------- member streams
#
# A member's bytes as a file object: decompressed a chunk at a time, CRC-checked
# at the end, from an archive or from a temp zip that a scavenger may commit
# and delete under the read.


def _local_lengths(fd, path, entry):
    """(name length, extra length) of ``entry``'s local header (4.3.7)."""
    header = os.pread(fd, _LOCAL_STRUCT.size, entry.header_offset)
    if len(header) < _LOCAL_STRUCT.size or header[:4] != _LOCAL_SIG:
        raise ArchiveError("%s: member %r has no local header at byte %d; the archive is "
                           "damaged ('rear verify' tells more)"
                           % (path, entry.name, entry.header_offset), path)
    return _LOCAL_NAME_EXTRA.unpack_from(header, _LOCAL_NAME_EXTRA_OFFSET)


def _data_offset(fd, path, entry):
    """Where ``entry``'s data starts, from its local header."""
    name_len, extra_len = _local_lengths(fd, path, entry)
    return entry.header_offset + _LOCAL_STRUCT.size + name_len + extra_len


def _local_provenance(fd, path, entry):
    """{key: value} of the provenance field in ``entry``'s local header."""
    name_len, extra_len = _local_lengths(fd, path, entry)
    extra = os.pread(fd, extra_len, entry.header_offset + _LOCAL_STRUCT.size + name_len)
    return _parse_provenance(_find_extra_field(extra, _PROVENANCE_ID))


class _MemberReader(io.RawIOBase):
    """A member's bytes, decompressed a chunk at a time: memory stays
    bounded for any size.  The CRC-32 and size are checked when the end is
    reached; a mismatch raises ArchiveError instead of returning the last
    chunk, so bytes that fail their check are never all delivered."""

    def __init__(self, fd, path, entry):
        super().__init__()
        self._fd = fd
        self._path = path
        self._entry = entry
        self._offset = entry.data_offset or _data_offset(fd, path, entry)
        self._left = entry.compressed_size
        try:
            self._decompressor = _new_decompressor(entry.method)
        except (NotImplementedError, RuntimeError) as err:
            raise ArchiveError("%s: member %r uses compression method %d, which this "
                               "Python cannot read (%s)" % (path, entry.name, entry.method,
                                                            err), path) from None
        self._crc = 0
        self._produced = 0
        self._pieces = iter(())      # what the last compressed chunk decompresses to
        # A view, so that handing out a chunk a buffer at a time does not copy
        # the rest each time (slicing bytes made a 200 MiB member quadratic).
        self._pending = memoryview(b"")
        self._done = False

    def readable(self):
        return True

    def readinto(self, buffer):
        while not self._pending and not self._done:
            self._pending = memoryview(self._next_chunk())
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def _next_chunk(self):
        data = self._next_piece()
        while data is None:
            if not self._left:
                data = self._flush()
                self._done = True
                break
            raw = os.pread(self._fd, min(self._left, _CHUNK), self._offset)
            if not raw:
                raise self._damaged_error("ends early")
            self._offset += len(raw)
            self._left -= len(raw)
            self._pieces = _decompressed_pieces(self._decompressor, raw)
            data = self._next_piece()
        self._crc = zlib.crc32(data, self._crc)
        self._produced += len(data)
        if self._produced > self._entry.file_size:
            raise self._damaged_error("is longer than its size")
        if self._done and (self._produced, self._crc) != (self._entry.file_size,
                                                          self._entry.crc):
            raise self._damaged_error("fails its CRC-32 or size check")
        return data

    def _next_piece(self):
        """The next at most _CHUNK bytes of the current chunk; None after its last."""
        try:
            return next(self._pieces, None)
        except (zlib.error, EOFError, OSError, ValueError, LookupError) as err:
            raise self._damaged_error("does not decompress (%s)" % err) from None

    def _flush(self):
        if self._decompressor is None or not hasattr(self._decompressor, "flush"):
            return b""
        try:
            return self._decompressor.flush()
        except (zlib.error, EOFError, OSError, ValueError) as err:
            raise self._damaged_error("does not decompress (%s)" % err) from None

    def _damaged_error(self, what):
        return ArchiveError("%s: member %r %s; the archive is damaged ('rear verify' tells "
                            "more)" % (self._path, self._entry.name, what), self._path)


def _skip_forward(stream, count):
    """Read and drop ``count`` bytes of ``stream``, a chunk at a time (a
    compressed member has no random access); how many it had."""
    skipped = 0
    while skipped < count:
        got = len(stream.read(min(_CHUNK, count - skipped)))
        if not got:
            break
        skipped += got
    return skipped


class _OwningReader(io.RawIOBase):
    """A _MemberReader that closes the descriptor it was given (a member's
    stream never shares one with the reader that opened it)."""

    def __init__(self, reader):
        super().__init__()
        self._reader = reader

    def readable(self):
        return True

    def readinto(self, buffer):
        return self._reader.readinto(buffer)

    def close(self):
        if not self.closed:
            _close_read_only(self._reader.owned_fd)
        super().close()


class _PendingMemberReader(io.RawIOBase):
    """A pending member's stream that carries on from the member's archived
    copy when its temp zip goes away under the read.  Rule 2 of "network
    filesystems": a scavenger on another client committed the entry, then
    deleted the temp zip, and the next read of our descriptor fails ESTALE
    (GlusterFS, NFS; a local filesystem keeps an open file readable).  The
    archived copy is read from its start, the bytes already delivered
    skipped, so its CRC-32 is still checked over the whole member."""

    def __init__(self, stream, temp_zip, member, open_archived):
        super().__init__()
        self._stream = stream
        self._temp_zip = temp_zip
        self._member = member
        self._open_archived = open_archived
        self._delivered = 0

    def readable(self):
        return True

    def readinto(self, buffer):
        try:
            count = self._stream.readinto(buffer)
        except OSError as err:
            if not _is_gone_descriptor(err):
                raise
            self._switch_to_archive(err)
            count = self._stream.readinto(buffer)
        self._delivered += count
        return count

    def _switch_to_archive(self, err):
        self._stream.close()
        archived = self._open_archived()
        if archived is None:
            # A scavenger deletes a temp zip only once its entries are
            # committed: something else removed this one.
            raise TempZipError("%s: removed while its member %r was read, and no archive "
                               "holds that member: the temp zip was deleted by hand or by "
                               "a tool other than rear's scavenger; write the file again"
                               % (self._temp_zip, self._member), self._temp_zip) from err
        self._stream = archived
        if _skip_forward(archived, self._delivered) < self._delivered:
            raise ArchiveError("the archived copy of a member read from a temp zip "
                               "is shorter than the bytes already read; the archive "
                               "is damaged ('rear verify' tells more)", None)

    def close(self):
        if not self.closed:
            self._stream.close()
        super().close()


# ---------------------------------------------------------------- reading
#
# A reader finds one member of a million-entry archive without parsing its
# central directory: through the archive's name index when its stamp
# matches, else in one streaming pass over the records (a foreign or stale
# archive), never holding them all.  Each look at the central directory is
# made under the archive's shared lock, because a commit overwrites the old
# central directory in place (step 5); member data lies before it and is
# never rewritten, so it is read without the lock.  Every read is checked
# against the member's CRC-32 and size.


class MemberInfo:
    """What a reader knows of a member: ``name``, ``size``,
    ``compressed_size``, ``crc``, ``mtime`` (Unix seconds), ``mode``
    (st_mode bits), ``archive`` (the file that holds it) and ``pending``
    (True for a member still in a temp zip in ``inbox/``)."""

    __slots__ = ("name", "size", "compressed_size", "crc", "mtime", "mode", "archive",
                 "pending")

    def __init__(self, name, size, compressed_size, crc, mtime, mode, archive, pending=False):
        self.name = name
        self.size = size
        self.compressed_size = compressed_size
        self.crc = crc
        self.mtime = mtime
        self.mode = mode
        self.archive = archive
        self.pending = pending

    @classmethod
    def of(cls, entry, name, archive, pending=False):
        """The MemberInfo of an _Entry."""
        mtime = entry.mtime
        if mtime is None:
            mtime = _dos_to_unix(entry.dos_date, entry.dos_time)
        return cls(name, entry.file_size, entry.compressed_size, entry.crc, mtime,
                   entry.external_attr >> 16, archive, pending)

    def __repr__(self):
        return "<MemberInfo %r %d bytes in %s%s>" % (self.name, self.size, self.archive,
                                                     " (pending)" if self.pending else "")


def _dos_to_unix(dos_date, dos_time):
    """Unix seconds of an MS-DOS date and time, read as local time (4.4.6)."""
    try:
        return int(time.mktime(((dos_date >> 9) + _DOS_EPOCH_YEAR, (dos_date >> 5) & 0xF,
                                dos_date & 0x1F, dos_time >> 11, (dos_time >> 5) & 0x3F,
                                (dos_time & 0x1F) * 2, 0, 0, -1)))
    except (OverflowError, ValueError):
        return 0


def _wait_for(acquire, timeout, what, path, holder=None):
    """Call ``acquire()`` until it returns True, by _LOCK_POLL for up to
    ``timeout`` s; ``holder()``, if given, says who holds it when it fails."""
    started = time.monotonic()
    reported = holder is None
    for delay in _LOCK_POLL.delays(total=timeout):
        if acquire():
            return
        if not reported and time.monotonic() - started >= _ARCHIVE_LOCK_REPORT:
            _log.warning("%s: waiting for its lock: %s", path, holder())
            reported = True
        time.sleep(delay)
    if not acquire():
        raise ArchiveError("%s is busy: %s for more than %g s; try again, or wait for "
                           "the scavenger%s" % (path, what, timeout,
                                                "; " + holder() if holder else ""), path)


@contextlib.contextmanager
def _shared_lock(lock_path, archive, timeout=None):
    """Hold the archive's lock file shared, so that no commit is half-way
    through its central directory while we read it.  Waits ``timeout``
    seconds at most (None: for ever).  Where the lock file cannot be opened
    (no scavenger ever committed here, a read-only base), reads without it:
    readers then retry a view that does not parse (_retry_unparsed)."""
    # POSIX locks belong to the process: closing our descriptor would drop
    # an in-process scavenger's lock on the same file.  Keep out of its way.
    if timeout is None:
        _SCAVENGE_LOCK.acquire()
    else:
        _wait_for(lambda: _SCAVENGE_LOCK.acquire(blocking=False), timeout,
                  "a scavenger pass in this process is running", archive)
    try:
        lock = None
        for writable in (True, False):
            with contextlib.suppress(OSError):
                lock = _LockFile(lock_path, writable)
                break
        if lock is None:
            yield
            return
        try:
            with contextlib.suppress(LockingUnsupportedError):
                base = os.path.dirname(os.path.dirname(os.path.dirname(lock_path)))
                _wait_for(lambda: lock.try_lock(exclusive=False), timeout,
                          "a scavenger is committing to it", archive,
                          lambda: _lock_holder_text(_read_holder(lock_path), base))
            yield
        finally:
            lock.close()
    finally:
        _SCAVENGE_LOCK.release()


def _retry_unparsed(read):
    """``read()``, again by _UNPARSED_RETRY while it raises ArchiveError:
    without the lock a commit may be under way."""
    for delay in _UNPARSED_RETRY.delays():
        try:
            return read()
        except ArchiveError:
            time.sleep(delay)
    return read()


class _ArchiveView:
    """One zip file open for reading, with its name index when that matches."""

    def __init__(self, path, base=None, dest=None, lock_timeout=None):
        self.path = path
        if base is None:
            base, dest = _locate_base(path)
        self.paths = _ArchivePaths(base, dest) if base is not None else None
        self.lock_timeout = lock_timeout
        try:
            self.fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
        except FileNotFoundError:
            raise ArchiveError("%s does not exist; 'rear status BASE' lists the archives"
                               % path, path) from None
        except IsADirectoryError:
            raise ArchiveError("%s is a directory, not an archive" % path, path) from None
        except OSError as err:
            raise ArchiveError("cannot read %s: %s" % (path, err.strerror), path) from None
        self.index = None
        try:
            with self._locked():
                self._load_central_directory()
        except BaseException:
            self.close()
            raise

    def _locked(self):
        if self.paths is None:
            return contextlib.nullcontext()
        return _shared_lock(self.paths.lock, self.path, self.lock_timeout)

    def _load_central_directory(self):
        def read():
            size = os.fstat(self.fd).st_size
            return size, _read_end_records(self.fd, size, self.path)

        if self.index is not None:
            self.index.close()
            self.index = None
        self.size, self.cd = _retry_unparsed(read)
        if self.paths is not None:
            index = _IndexReader(self.paths.index, self.fd, self.path, self.cd)
            if index.open_matching(self.size):
                self.index = index

    def _reload_if_changed(self):
        """With the lock held: reload what a commit since the last look
        changed (it moved the central directory, and grew the file)."""
        if os.fstat(self.fd).st_size != self.size:
            self._load_central_directory()

    def find(self, name):
        """The _Entry of member ``name``, or None."""
        with self._locked():
            self._reload_if_changed()
            if self.index is not None:
                return self.index.find(name)
            return self._scan_for(name)

    def _scan_for(self, name):
        """One streaming pass for ``name``: a foreign archive or a stale index.
        Names are compared as bytes; only non-ASCII ones are decoded."""
        encoded = name.encode("utf-8")
        reader = _ChunkReader(self.fd, self.path)
        for position, fields, raw_name, extra in _iter_central_records(reader, self.cd, self.path):
            if raw_name == encoded or (not raw_name.isascii() and _decode_central_name(
                    raw_name, fields[_CD_FLAG_BITS], self.path, position,
                    ArchiveError) == name):
                return _parse_central_entry(fields, raw_name, extra, self.path,
                                            self.cd.cd_offset + position)
        return None

    def _name_of(self, raw_name, fields, position):
        """A record's name: ASCII names (nearly all) decoded as such, the
        fastest codec; others as their flags say (4.4.4)."""
        if raw_name.isascii():
            return raw_name.decode("ascii")
        return _decode_central_name(raw_name, fields[_CD_FLAG_BITS], self.path,
                                    self.cd.cd_offset + position, ArchiveError)

    def names(self, prefix=""):
        """Member names in archive order that start with ``prefix``, and
        nothing else decoded: 'rear ls -1', like 'zipinfo -1'."""
        with self._locked():
            self._reload_if_changed()
            for position, fields, raw_name, _extra in _iter_central_records(
                    _ChunkReader(self.fd, self.path), self.cd, self.path):
                name = self._name_of(raw_name, fields, position)
                if name.startswith(prefix):
                    yield name

    def rows(self, prefix=""):
        """(name, size, compressed size, crc, mtime, mode, archive, False) of
        every member in archive order whose name starts with ``prefix``,
        read a chunk at a time under the lock (commits wait).  Made straight
        from the records (ASCII names decoded as such, DOS times converted
        once per distinct value): a listing of a million entries is this
        loop, about a microsecond an entry."""
        with self._locked():
            self._reload_if_changed()
            dos_times = {}
            path = self.path
            limit = _U32_LIMIT
            for position, fields, raw_name, extra in _iter_central_records(
                    _ChunkReader(self.fd, path), self.cd, path):
                name = self._name_of(raw_name, fields, position)
                if prefix and not name.startswith(prefix):
                    continue
                # fields 10, 11: compressed and uncompressed size (_CD_*)
                compressed, size = fields[10], fields[11]
                if size == limit or compressed == limit:
                    entry = _parse_central_entry(fields, raw_name, extra, path, position)
                    size, compressed = entry.file_size, entry.compressed_size
                mtime = _parse_timestamp_extra(extra) if extra else None
                if mtime is None:
                    key = fields[8] << 16 | fields[7]       # _CD_DATE, _CD_TIME
                    mtime = dos_times.get(key)
                    if mtime is None:
                        mtime = dos_times[key] = _dos_to_unix(fields[8], fields[7])
                yield (name, size, compressed, fields[9], mtime, fields[17] >> 16, path,
                       False)      # _CD_CRC, _CD_EXTERNAL_FILE_ATTRIBUTES

    def open_member(self, entry):
        """A _MemberReader of ``entry`` on a descriptor of its own, so that
        it outlives this view (a reader refreshed, or closed, meanwhile)."""
        fd = os.dup(self.fd)
        try:
            reader = _MemberReader(fd, self.path, entry)
        except BaseException:
            _close_read_only(fd)
            raise
        reader.owned_fd = fd
        return reader

    def close(self):
        if self.index is not None:
            self.index.close()
            self.index = None
        _close_held(self)


class _PendingView:
    """Entries for one archive that are still in temp zips in ``inbox/``:
    sealed temp zips through their central directory, unsealed ones (live
    or dead writers') through their local headers.  Only entries whose
    bytes are all on disk are listed, and each read checks its CRC, so a
    torn last entry is never returned."""

    def __init__(self, base, dest):
        self.base = base
        self.dest = dest
        # member -> (temp zip path, _Entry) of its first copy: the one the
        # scavenger archives under the plain name (see _list_temp_zips)
        self.entries = {}
        for path in _list_temp_zips(os.path.join(base, _INBOX)):
            with contextlib.suppress(OSError, RearError):   # gone or damaged: not readable
                self._add_temp_zip(path)

    def _add_temp_zip(self, path):
        fd = _open_existing(path, os.O_RDONLY | _O_CLOEXEC | _O_NOFOLLOW)
        if fd is None:
            return
        try:
            size = os.fstat(fd).st_size
            sidecar = _read_sidecar(_sidecar_path(path))
            if sidecar is not None and sidecar.is_sealed:
                entries = _iter_central_entries(_ChunkReader(fd, path),
                                                _read_end_records(fd, size, path), path)
            else:
                entries = _complete_local_entries(fd, path, size)
            known = {}
            for entry in entries:
                with contextlib.suppress(PathError):
                    dest, member = _route_name(entry.name, known)
                    if dest == self.dest:
                        self.entries.setdefault(member, (path, entry))
        finally:
            _close_read_only(fd)

    def open_member(self, member):
        """A _MemberReader of the pending ``member``; None if its temp zip
        was scavenged meanwhile (look in the archives again)."""
        path, entry = self.entries[member]
        fd = _open_existing(path, os.O_RDONLY | _O_CLOEXEC | _O_NOFOLLOW)
        if fd is None:
            return None
        try:
            reader = _MemberReader(fd, path, entry)
        except BaseException as err:
            _close_read_only(fd)
            # Rule 2 of "network filesystems": a scavenger on another client
            # deleted the temp zip between our open and the header's read
            # (GlusterFS: ESTALE on the descriptor); it deletes one only
            # once its entries are committed, so they are in an archive.
            if _is_gone_descriptor(err):
                return None
            raise
        reader.owned_fd = fd
        return reader


def _complete_local_entries(fd, path, size):
    """The entries of an unsealed temp zip whose bytes are all on disk, from
    its local headers (their data is checked when read)."""
    reader = _ChunkReader(fd, path)
    offset = 0
    while True:
        entry = _read_local_header(reader, offset, size)
        if entry is None or entry.data_offset + entry.compressed_size > size:
            return
        yield entry
        offset = entry.data_offset + entry.compressed_size


class ArchiveReader:
    """Read-only access to an archive, or to a whole series and, with
    ``pending``, to the files not yet scavenged; see open_archive."""

    def __init__(self, views, pending=None, name=None):
        self._views = views          # oldest first
        self._pending = pending
        self.name = name
        self._reopen_args = None     # (base, dest, ...) of a series; see open_archive

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        self.close()

    def close(self):
        for view in self._views:
            view.close()
        self._views = []

    def _find_member(self, member):
        """(view or None, _Entry) of ``member``, newest archive first, then
        pending; (None, None) if absent."""
        for view in reversed(self._views):
            entry = view.find(member)
            if entry is not None:
                return view, entry
        if self._pending is not None and member in self._pending.entries:
            return None, self._pending.entries[member][1]
        return None, None

    def __contains__(self, member):
        return self._find_member(member)[1] is not None

    def copies(self, member):
        """The names the copies of ``member`` are stored under, in the order
        they were written: ``member`` itself (the first), then
        ``member.~1~``, ``member.~2~``, ... (written again with other
        content: see the scavenger).  [] if there is none."""
        names = []
        candidate = member
        while candidate in self:
            names.append(candidate)
            candidate = "%s.~%d~" % (member, len(names))
        return names

    def _copy_name(self, member, version):
        """The stored name of ``version`` of ``member``: None or "first"
        (the name itself, what unzip shows under it), "last", or N >= 1
        (the copy stored as ``member.~N~``)."""
        if version is None or version == "first":
            return member
        if version == "last":
            return (self.copies(member) or [member])[-1]
        if isinstance(version, int) and not isinstance(version, bool) and version >= 1:
            return "%s.~%d~" % (member, version)
        raise ValueError("version must be 'first', 'last' or a copy number N >= 1 (the "
                         "copy stored as NAME.~N~), not %r" % (version,))

    def provenance(self, member, version=None):
        """Who wrote ``member`` (``version`` as for read): {key: value} of
        host, pid and, where it ran under one, the scheduler's job ids and
        the MPI rank (_PROVENANCE_TAGS); {} for a member that rear before
        1.3, or another tool, wrote.  KeyError if it is not there."""
        member = self._copy_name(member, version)
        view, entry = self._find_member(member)
        if entry is None:
            raise self._missing_error(member)
        if view is not None:
            return _local_provenance(view.fd, view.path, entry)
        path = self._pending.entries[member][0]
        fd = _open_existing(path, os.O_RDONLY | _O_CLOEXEC | _O_NOFOLLOW)
        if fd is not None:
            try:
                return _local_provenance(fd, path, entry)
            except OSError as err:
                # gone after the open (rule 2), as in _PendingView.open_member
                if not _is_gone_descriptor(err):
                    raise
            finally:
                _close_read_only(fd)
        self._reopen()      # scavenged since we looked: it is in an archive now
        return self.provenance(member)

    def info(self, member, version=None):
        """MemberInfo of ``member`` (``version`` as for read); KeyError if
        it is not there."""
        member = self._copy_name(member, version)
        view, entry = self._find_member(member)
        if entry is None:
            raise self._missing_error(member)
        if view is None:
            return MemberInfo.of(entry, member, self._pending.entries[member][0], True)
        return MemberInfo.of(entry, member, view.path)

    def open(self, member, version=None):
        """A binary file object streaming ``member``'s bytes, CRC-checked at
        the end (``version`` as for read); KeyError if it is not there."""
        return self._open_with_info(self._copy_name(member, version))[1]

    def _open_with_info(self, member):
        """(MemberInfo, stream) of ``member``, found with one lookup."""
        view, entry = self._find_member(member)
        if entry is None:
            raise self._missing_error(member)
        if view is not None:
            return (MemberInfo.of(entry, member, view.path),
                    io.BufferedReader(_OwningReader(view.open_member(entry)), _CHUNK))
        path = self._pending.entries[member][0]
        reader = self._pending.open_member(member)
        if reader is None:     # scavenged since we looked: it is in an archive now
            self._reopen()
            return self._open_with_info(member)
        stream = _PendingMemberReader(
            _OwningReader(reader), path, member,
            lambda: self._open_archived_copy(member, entry))
        return MemberInfo.of(entry, member, path, True), io.BufferedReader(stream, _CHUNK)

    def _open_archived_copy(self, member, entry):
        """A raw stream of the archived copy of the pending ``member``
        (``entry`` in its temp zip), found by its CRC-32 and size among the
        member's copies: another writer's copy committed first holds the
        plain name.  None if no archive holds it."""
        if not _series(*self._reopen_args[:2]):
            return None
        self._reopen()
        for name in self.copies(member):
            view, found = self._find_member(name)
            if view is not None and (found.crc, found.file_size) == (entry.crc,
                                                                     entry.file_size):
                return _OwningReader(view.open_member(found))
        return None

    def read(self, member, version=None):
        """The bytes of ``member``, CRC-checked; KeyError if it is not there.

        A name written again with other content is kept under
        ``member.~1~``, ``member.~2~``...; ``member`` means the first copy
        written, before and after scavenging.  ``version``: "first" (the
        default), "last", or N for the copy stored as ``member.~N~``."""
        with self.open(member, version) as handle:
            return handle.read()

    def infos(self, prefix=""):
        """MemberInfo of every member whose name starts with ``prefix``, in
        archive order (oldest archive of a series first; pending ones last)."""
        for row in self.rows(prefix):
            yield MemberInfo(*row)

    def rows(self, prefix=""):
        """What infos() yields, as plain tuples (name, size, compressed_size,
        crc, mtime, mode, archive, pending): the fast form for listings."""
        for view in self._views:
            yield from view.rows(prefix)
        for member, (path, entry) in self._pending_only(prefix):
            info = MemberInfo.of(entry, member, path, True)
            yield (info.name, info.size, info.compressed_size, info.crc,
                   info.mtime, info.mode, info.archive, True)

    def names(self, prefix=""):
        """Names of the members that start with ``prefix``, in archive order."""
        for view in self._views:
            yield from view.names(prefix)
        for member, _copy in self._pending_only(prefix):
            yield member

    def _pending_only(self, prefix):
        """(member, (temp zip path, _Entry)) of the pending members under
        ``prefix`` that no archive holds yet: an archived name means its
        archived copy (the first), so a later pending copy is not listed
        under it either."""
        if self._pending is None:
            return
        for member, copy in self._pending.entries.items():
            if member.startswith(prefix) and not any(
                    view.find(member) is not None for view in self._views):
                yield member, copy

    def __iter__(self):
        return self.names()

    def _reopen(self):
        for view in self._views:
            view.close()
        fresh = open_archive(*self._reopen_args)
        self._views, self._pending = fresh._views, fresh._pending

    def _missing_error(self, member):
        hint = ""
        if self._pending is None:
            found = (self._reopen_args[:2] if self._reopen_args is not None
                     else _locate_base(self.name))
            hint = " (%s)" % _pending_hint(*found, member=member)
        return KeyError("%s has no member %r%s" % (self.name, member, hint))


def _pending_hint(base, dest, member=None):
    """How to read the files of ``base``'s ``dest`` not scavenged yet (the
    one named ``member``, or a listing of them), for an error that did not
    look there: through the API and the CLI alike."""
    if member is None:
        return ("files not scavenged yet are read with open_archive(%r, %r, pending=True), "
                "listed with 'rear ls %s %s --pending'" % (base, dest, base, dest))
    if base is None:
        return ("a file not scavenged yet is read through its base: open_archive(BASE, DEST, "
                "pending=True), 'rear cat BASE DEST/%s'" % member)
    return ("a file not scavenged yet is read through the base: open_archive(%r, %r, "
            "pending=True), 'rear cat %s %s/%s'" % (base, dest, base, dest, member))


#: How long a reader waits for a commit to finish before saying so.
_READ_LOCK_TIMEOUT = 30.0


def open_archive(path, dest=None, pending=False, lock_timeout=_READ_LOCK_TIMEOUT):
    """A read-only ArchiveReader (a context manager) for any zip.

    ``open_archive("/scratch/run42/logs.zip")`` reads one archive.
    ``open_archive("/scratch/run42", "logs.zip")`` reads the series
    ``logs.zip``, ``logs.~1~.zip``, ... as one, and with ``pending=True`` also
    the files still in temp zips in ``inbox/`` (read-your-writes).  Opening
    it and reading one member uses the archive's name index, not its central
    directory.  Raises ArchiveError if there is nothing to read.
    """
    if dest is None:
        path = os.path.abspath(os.fspath(path))
        return ArchiveReader([_ArchiveView(path, lock_timeout=lock_timeout)], name=path)
    base = _checked_base(path)
    _check_dest(dest)
    views = []
    try:
        for archive in _series(base, dest):
            views.append(_ArchiveView(archive, base, _dest_of(base, archive), lock_timeout))
    except BaseException:
        for view in views:
            view.close()
        raise
    reader = ArchiveReader(views, _PendingView(base, dest) if pending else None,
                           os.path.join(base, dest))
    if not views and (reader._pending is None or not reader._pending.entries):
        raise ArchiveError("%s has no archive %s yet%s" % (
            base, dest, "" if pending else "; " + _pending_hint(base, dest)),
            os.path.join(base, dest))
    reader._reopen_args = (base, dest, pending, lock_timeout)
    return reader


def read_bytes(base, path, lock_timeout=_READ_LOCK_TIMEOUT, version=None):
    """The bytes of ``"sub/name.zip/member"`` under ``base``: from the
    archive series, or failing that from the temp zips not yet scavenged.
    KeyError if it is nowhere (yet).  ``version`` as for ArchiveReader.read."""
    dest, member = split_path(path)
    with open_archive(base, dest, pending=True, lock_timeout=lock_timeout) as reader:
        return reader.read(member, version)


# ---------------------------------------------------------------- fsspec filesystem
#
# rear:// for fsspec, so that pandas, xarray, Dask and anything else that
# opens paths through fsspec reads a base's archives with rear's readers.
# Optional: fsspec is imported only when the filesystem is used.  Its
# methods live in _RearFileSystemMethods, defined here without fsspec; the
# class fsspec sees, RearFileSystem, is made from them and fsspec's base
# class on first use (module __getattr__, PEP 562), which is also how
# fsspec's entry point and pickle find it.

#: How many records of its last find a rear:// instance keeps for isdir().
_FS_FOUND_KEPT = 100000
#: Characters that make an fsspec path a glob pattern.
_GLOB_MAGIC = "*?["


def _import_fsspec():
    try:
        import fsspec
    except ImportError as err:
        raise ImportError("rear's fsspec filesystem (rear://) needs fsspec: pip install "
                          "fsspec; the rest of rear works without it") from err
    return fsspec


def _split_fs_path(path):
    """(dest, member) of a rear:// path (``sub/name.zip/member``): dest None
    for a directory of the base, member "" for an archive itself."""
    components = path.split("/") if path else []
    for component in components:
        if component in ("", ".", ".."):
            raise PathError("rear:// path %r has a %r component; give it like "
                            "'sub/name.zip/member'" % (path, component))
    if components and components[0] == _INBOX:
        raise FileNotFoundError(errno.ENOENT, "inbox/ holds rear's temporary files, not "
                                "archives; read files not scavenged yet with "
                                "pending=True", path)
    for index, component in enumerate(components):
        if component.lower().endswith(".zip") and len(component) > len(".zip"):
            return "/".join(components[:index + 1]), "/".join(components[index + 1:])
    return None, path


def _read_only_error(path):
    return OSError(errno.EROFS, "rear:// is read-only; write files with rear.rear_open() "
                   "inside a rear.rear_fs() (a scavenger then archives them)", path)


class _SeekableMember(io.RawIOBase):
    """A member's bytes with seek(): reading forward continues the stream,
    seeking back reopens it (a compressed member has no random access)."""

    def __init__(self, open_stream, size, stream=None):
        super().__init__()
        self._open_stream = open_stream
        self._size = size
        self._stream = stream    # already open at 0, or None
        self._at = 0         # where the stream is
        self._wanted = 0     # where the next read starts

    @property
    def size(self):
        return self._size

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._wanted

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._wanted, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position %d" % (base + offset))
        self._wanted = base + offset
        return self._wanted

    def readinto(self, buffer):
        if self._wanted >= self._size:
            return 0
        if self._stream is None or self._wanted < self._at:
            self._close_stream()
            self._stream, self._at = self._open_stream(), 0
        self._at += _skip_forward(self._stream, self._wanted - self._at)
        if self._at < self._wanted:
            return 0
        count = self._stream.readinto(buffer)
        self._at += count
        self._wanted = self._at
        return count

    def _close_stream(self):
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def close(self):
        self._close_stream()
        super().close()


class _MemberFile(io.BufferedReader):
    """What rear:// opens: buffered, seekable, and with the ``size`` fsspec's
    callers look for."""

    @property
    def size(self):
        return self.raw.size


class _RearFileSystemMethods:
    """``rear://``: a base's archives as a read-only filesystem for fsspec.

    ``fo`` is the base directory (default ``$REAR_BASE``); paths are the
    ones rear_open takes, ``sub/name.zip/member``, and an archive is a
    directory.  A series (``name.zip`` and its rolled-over ``name.~N~.zip``)
    reads as one archive; ``pending=True`` adds the files still in temp
    zips.  One reader per archive stays open per instance (and instances
    are cached per process, so Dask workers reuse one); a name not found is
    looked for once more in a freshly opened reader, so files archived (or
    written, with ``pending``) since are found.
    """

    protocol = "rear"
    root_marker = ""

    def __init__(self, fo="", pending=False, lock_timeout=_READ_LOCK_TIMEOUT,
                 target_protocol=None, target_options=None, **kwargs):
        if target_protocol not in (None, "file", "local") or target_options:
            raise ValueError("rear:// reads a base directory of this machine's filesystem "
                             "(a mounted NFS, Lustre, GPFS ... path), not %r"
                             % (target_protocol,))
        super().__init__(**kwargs)
        if not fo and not os.environ.get("REAR_BASE"):
            raise ValueError("rear:// needs the base directory: chain it, like "
                             "'rear://logs.zip/task-1/out.txt::/scratch/run42', or give "
                             "fo='/scratch/run42' (or set $REAR_BASE)")
        self.base = _checked_base(fo or None)
        self.pending = bool(pending)
        self.lock_timeout = lock_timeout
        self._readers = {}
        self._readers_pid = os.getpid()
        # What the last find (or glob) found, so that fsspec's open_files,
        # which asks isdir() of each path a glob returned, needs no lookups.
        self._last_found = {}
        # Readers parse and cache; one thread at a time (Dask runs tasks in
        # threads).  Member bytes are read outside it, on descriptors of
        # their own.
        self._lock = threading.Lock()

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(item) for item in path]
        return super()._strip_protocol(path).strip("/")

    # -- readers

    def _reader(self, dest, refresh=False):
        """The open reader of ``dest`` (with self._lock held)."""
        if self._readers_pid != os.getpid():
            # A forked child (a loader or pool worker): its own readers.
            for reader in self._readers.values():
                reader.close()
            self._readers, self._readers_pid = {}, os.getpid()
        reader = self._readers.pop(dest, None)
        if reader is not None and refresh:
            reader.close()
            reader = None
        if reader is None:
            try:
                reader = open_archive(self.base, dest, pending=self.pending,
                                      lock_timeout=self.lock_timeout)
            except ArchiveError as err:
                if _series(self.base, dest):
                    raise        # there, but damaged: its error says what is wrong
                raise FileNotFoundError(errno.ENOENT, str(err), dest) from None
        self._readers[dest] = reader
        return reader

    def _look(self, dest, look):
        """``look(reader)``, again with a fresh reader if it raises KeyError
        (the name may have been archived, rolled over or written since)."""
        with self._lock:
            try:
                return look(self._reader(dest))
            except KeyError:
                return look(self._reader(dest, refresh=True))

    def close_readers(self):
        """Close the open readers (they reopen when next needed)."""
        with self._lock:
            for reader in self._readers.values():
                reader.close()
            self._readers = {}

    # -- what is there

    def _member_record(self, dest, info):
        name = info.name.rstrip("/")
        return {"name": dest + "/" + name if name else dest,
                "type": "directory" if info.name.endswith("/") else "file",
                "size": 0 if info.name.endswith("/") else info.size,
                "compressed_size": info.compressed_size, "crc": info.crc,
                "mtime": info.mtime, "mode": info.mode, "archive": info.archive,
                "pending": info.pending}

    def info(self, path, **kwargs):
        path = self._strip_protocol(path)
        dest, member = _split_fs_path(path)
        if dest is None:
            return self._directory_record(path)
        if not member:
            with self._lock:
                self._reader(dest)
            return {"name": dest, "type": "directory", "size": 0}

        def look(reader):
            for name in (member, member + "/"):
                with contextlib.suppress(KeyError):
                    return self._member_record(dest, reader.info(name))
            if next(iter(reader.names(member + "/")), None) is not None:
                return {"name": path, "type": "directory", "size": 0}
            raise KeyError(member)

        try:
            return self._look(dest, look)
        except KeyError:
            raise FileNotFoundError(errno.ENOENT, "no such member in %s%s" % (
                os.path.join(self.base, dest), "" if self.pending else
                " (files not scavenged yet are read with pending=True)"), path) from None

    def _directory_record(self, path):
        full = os.path.join(self.base, *path.split("/")) if path else self.base
        if not os.path.isdir(full):
            raise FileNotFoundError(errno.ENOENT, "no such directory in the base", path)
        return {"name": path, "type": "directory", "size": 0}

    def _directory_children(self, path):
        """Records of a base directory's subdirectories and archives (a
        series once, under the name of its current archive)."""
        self._directory_record(path)
        full = os.path.join(self.base, *path.split("/")) if path else self.base
        with os.scandir(full) as entries:
            found = {entry.name: entry.is_dir() for entry in entries}
        records = []
        for name, is_dir in sorted(found.items()):
            child = path + "/" + name if path else name
            if is_dir and not (not path and name == _INBOX):
                records.append({"name": child, "type": "directory", "size": 0})
            elif not is_dir and name.lower().endswith(".zip") \
                    and not self._is_rolled_over(name, found):
                records.append({"name": child, "type": "directory", "size": 0})
        return records

    @staticmethod
    def _is_rolled_over(name, siblings):
        """Is ``name`` a ``stem.~N~.zip`` of a series whose ``stem.zip`` is there?"""
        rolled = _rolled_name(name)
        return rolled is not None and rolled[0] in siblings

    def _archive_records(self, dest, prefix, withdirs):
        """{name: record} of the members of ``dest`` whose names start with
        ``prefix``, and with ``withdirs`` their directories below the last
        "/" of ``prefix``; a name in several archives of a series is the
        copy ``info`` answers with (the newest)."""
        records = {}
        top = prefix[:prefix.rfind("/") + 1]
        with self._lock:
            for row in self._reader(dest).rows(prefix):
                record = self._member_record(dest, MemberInfo(*row))
                if record["type"] == "file" or withdirs:
                    records[record["name"]] = record
                if withdirs:
                    parts = row[0][len(top):].rstrip("/").split("/")[:-1]
                    for depth in range(1, len(parts) + 1):
                        name = "%s/%s%s" % (dest, top, "/".join(parts[:depth]))
                        records.setdefault(name, {"name": name, "type": "directory",
                                                  "size": 0})
        return records

    def ls(self, path, detail=True, **kwargs):
        path = self._strip_protocol(path)
        dest, member = _split_fs_path(path)
        if dest is None:
            records = self._directory_children(path)
        else:
            prefix = member + "/" if member else ""
            below = self._archive_records(dest, prefix, withdirs=True)
            records = [record for name, record in sorted(below.items())
                       if "/" not in name[len(dest) + 1 + len(prefix):]]
            if not records and member:
                records = [self.info(path)]     # a file lists as itself
                if records[0]["type"] == "directory":
                    records = []
        return records if detail else [record["name"] for record in records]

    def find(self, path, maxdepth=None, withdirs=False, detail=False, prefix="", **kwargs):
        """Every file under ``path`` (with ``withdirs``, directories too),
        streamed from the archives' names; ``prefix`` narrows them to names
        that continue ``path`` with it (glob passes its literal part)."""
        path = self._strip_protocol(path)
        dest, member = _split_fs_path(path)
        records = {}
        if dest is None:
            for record in self._directories_below(path):
                if withdirs:
                    records[record["name"]] = record
                if record["name"].lower().endswith(".zip"):
                    records.update(self._archive_records(record["name"], "", withdirs))
        else:
            records = self._archive_records(
                dest, (member + "/" if member else "") + prefix, withdirs)
            if member and not prefix and not records:
                found = self.info(path)
                if found["type"] == "file":
                    records = {found["name"]: found}
        if maxdepth is not None:
            depth = path.count("/") + 1 if path else 0
            records = {name: record for name, record in records.items()
                       if name.count("/") - depth < maxdepth}
        records = dict(sorted(records.items()))
        self._last_found = records if len(records) <= _FS_FOUND_KEPT else {}
        return records if detail else list(records)

    def isdir(self, path):
        record = self._last_found.get(self._strip_protocol(path))
        if record is not None:     # names are never removed from an archive
            return record["type"] == "directory"
        return super().isdir(path)

    def _directories_below(self, path):
        """Records of the directories and archives (a series once) in the
        base directory ``path`` and below."""
        for record in self._directory_children(path):
            yield record
            if not record["name"].lower().endswith(".zip"):
                yield from self._directories_below(record["name"])

    def glob(self, path, maxdepth=None, **kwargs):
        stripped = self._strip_protocol(path)
        magic = min([stripped.find(char) for char in _GLOB_MAGIC if char in stripped]
                    or [len(stripped)])
        literal = stripped[:magic]
        if magic < len(stripped) and "/" in literal:
            dest, _member = _split_fs_path(literal[:literal.rindex("/")])
            if dest is not None:   # stream only the names that begin with the literal part
                kwargs["prefix"] = literal[literal.rindex("/") + 1:]
        return super().glob(path, maxdepth=maxdepth, **kwargs)

    def modified(self, path):
        import datetime
        return datetime.datetime.fromtimestamp(self.info(path).get("mtime", 0),
                                               datetime.timezone.utc)

    # -- reading

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None,
              **kwargs):
        if mode != "rb":
            raise _read_only_error(path)
        path = self._strip_protocol(path)
        dest, member = _split_fs_path(path)
        if dest is None or not member:
            raise IsADirectoryError(errno.EISDIR, "a directory (an archive is one: open a "
                                    "member in it)", path)
        try:       # one lookup finds the member and opens it
            info, stream = self._look(dest, lambda reader: reader._open_with_info(member))
        except KeyError:
            self.info(path)    # FileNotFoundError, unless it is a directory
            raise IsADirectoryError(errno.EISDIR, "a directory in the archive", path) from None

        def open_stream():
            return self._look(dest, lambda reader: reader.open(member))

        raw = _SeekableMember(open_stream, info.size, stream)
        raw.name = path     # what BufferedReader.name shows
        return _MemberFile(raw, _CHUNK)

    # -- read-only: everything that would change the base says how to write

    def _refuse(self, path, *args, **kwargs):
        raise _read_only_error(path)

    mkdir = makedirs = rmdir = rm = rm_file = _rm = touch = pipe_file = put_file = _refuse

    def cp_file(self, path1, path2, **kwargs):
        raise _read_only_error(path2)

    def mv(self, path1, path2, **kwargs):
        raise _read_only_error(path1)


#: RearFileSystem, once made (see __getattr__).
_FSSPEC_CLASS = []


def _fsspec_filesystem_class():
    if not _FSSPEC_CLASS:
        fsspec = _import_fsspec()

        class RearFileSystem(_RearFileSystemMethods, fsspec.AbstractFileSystem):
            __doc__ = _RearFileSystemMethods.__doc__

        # Named as pickle and fsspec's registry find it: rear.RearFileSystem.
        RearFileSystem.__module__, RearFileSystem.__qualname__ = __name__, "RearFileSystem"
        _FSSPEC_CLASS.append(RearFileSystem)
    return _FSSPEC_CLASS[0]


def __getattr__(name):
    # rear.RearFileSystem: made on first use, so that rear imports without
    # fsspec; fsspec's entry point and pickle look it up by this name.
    if name == "RearFileSystem":
        return _fsspec_filesystem_class()
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


def register_fsspec():
    """Make ``rear://`` known to fsspec in this process and return the
    filesystem class.  An installed rear is registered through fsspec's
    entry point already; a vendored rear.py needs this one call."""
    cls = _fsspec_filesystem_class()
    _import_fsspec().register_implementation("rear", cls, clobber=True)
    return cls


# ---------------------------------------------------------------- inspection


def _archives_under(base, unreadable=None):
    """Every final archive under ``base`` (not in inbox/), in sorted order.
    Directories that cannot be listed are appended to ``unreadable`` as
    (path, reason) when given, else raise: nothing is skipped silently."""
    inbox = os.path.join(base, _INBOX)

    def cannot_list(err):
        if unreadable is None:
            raise err
        unreadable.append((err.filename, "cannot list this directory (%s); the archives "
                           "in it were not checked" % err.strerror))

    for directory, subdirs, files in os.walk(base, onerror=cannot_list):
        if directory == base and _INBOX in subdirs:
            subdirs.remove(_INBOX)
        subdirs.sort()
        for name in sorted(files):
            if name.lower().endswith(".zip"):
                path = os.path.join(directory, name)
                if not path.startswith(inbox + os.sep):
                    yield path


class VerifyReport(list):
    """What ``verify`` found: a list of (path, problem), empty when every
    archive read back with its CRCs, and how much was read: ``archives``
    and ``entries`` checked.  A report with nothing checked is not a pass."""

    def __init__(self):
        super().__init__()
        self.archives = 0
        self.entries = 0


def verify(path):
    """CRC-check every member of an archive, or of every archive under a base.

    Returns a VerifyReport (a list of (path, problem), plus the counts of
    archives and entries checked).  Under a base, each archive is read under
    its shared lock, so a commit in progress is waited for; directories and
    archives that cannot be read are problems, never skipped.  Raises
    RearError if ``path`` does not exist.
    """
    path = os.path.abspath(os.fspath(path))
    report = VerifyReport()
    if not os.path.isdir(path):
        if not os.path.lexists(path):
            raise RearError("%s does not exist; give an archive or a base directory" % path,
                            path)
        _verify_archive(path, report, _journal_of(path))
        return report
    base = _checked_base(path, whole=True)
    # Lock files are locked per process: keep out of an in-process
    # scavenger's way, as status() does.
    with _SCAVENGE_LOCK:
        for archive in _archives_under(base, unreadable=report):
            paths = _ArchivePaths(base, _dest_of(base, archive))
            try:
                with _shared_lock(paths.lock, archive, timeout=_ARCHIVE_LOCK_WAIT):
                    _verify_archive(archive, report, _pending_journal(paths))
            except ArchiveError as err:       # a commit that does not end
                report.append((archive, str(err)))
    return report


def _pending_journal(paths):
    """The journal of an interrupted commit to the archive, or None."""
    for journal in (paths.journal, paths.commit):
        if _stat_existing(journal) is not None:
            return journal
    return None


def _journal_of(archive):
    """_pending_journal for an archive given alone (its base located)."""
    base, dest = _locate_base(archive)
    return None if base is None else _pending_journal(_ArchivePaths(base, dest))


def _verify_archive(archive, report, journal=None):
    """Read every member of ``archive`` with its CRC; count it in ``report``
    or add the problem."""
    if journal is not None:
        report.append((archive, "a commit to it was interrupted (journal %s): run 'rear "
                       "recover BASE' to roll it back or finish it, then verify again"
                       % journal))
        return
    try:
        with zipfile.ZipFile(archive) as handle:
            for info in handle.infolist():
                with handle.open(info) as member:
                    while member.read(_CHUNK):
                        pass
                report.entries += 1
    except OSError as err:
        report.append((archive, "cannot read it: %s" % (err.strerror or err)))
        return
    except zipfile.BadZipFile as err:
        report.append((archive, "not a zip archive, or a damaged one (%s)" % err))
        return
    except (zipfile.LargeZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError,
            ValueError) as err:
        report.append((archive, "%s: %s" % (type(err).__name__, err)))
        return
    # zipfile reads past contradictions that other readers do not, and
    # that the scavenger refuses to append to: say so before it does.
    fd = os.open(archive, os.O_RDONLY | _O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        _check_appendable(fd, size, _read_end_records(fd, size, archive), archive)
    except ArchiveError as err:
        report.append((archive, str(err)))
        return
    finally:
        os.close(fd)
    report.archives += 1


@dataclasses.dataclass
class TempZipStatus:
    """What ``status`` says of one temp zip in ``BASE/inbox/``: ``path`` is
    its path in inbox/ (``NAME.zip``, or ``hosts/HOST/NAME.zip`` in a
    sharded inbox).

    ``state``: "sealed"; "open" (a live writer holds its lock); "dead"
    (unsealed, its writer gone, salvaged once the grace period passes, at
    ``salvage_after``); "stale" (the same, past it: the next pass salvages
    it); "damaged" (``error`` says why).  ``entries`` counts the complete
    entries a salvage would find in an unsealed one.  Unknown fields are
    None, and left out of ``to_json()``."""

    path: str
    state: str = "damaged"
    size: int = None
    changed: float = None           # mtime
    entries: int = None
    host: str = None                # its writer, from the sidecar
    pid: int = None
    created: float = None
    salvage_after: float = None     # dead: when a pass salvages it
    still_for_grace: bool = None    # open: unchanged for the grace period
    error: str = None               # damaged: why

    def to_json(self):
        return _known_fields(self)


@dataclasses.dataclass
class ArchiveStatus:
    """What ``status`` says of one final archive: ``entries`` and ``size``
    are None, and ``error`` says why, when it cannot be read."""

    path: str                       # relative to the base
    size: int = None
    entries: int = None
    error: str = None
    locked: str = None              # who holds its lock, while another process does

    def to_json(self):
        return _known_fields(self)


@dataclasses.dataclass
class BaseStatus:
    """What ``status`` found under a base: ``temp_zips`` (TempZipStatus),
    ``journals`` (file names of interrupted commits), ``archives``
    (ArchiveStatus), ``unreadable`` ((path, reason) of directories that
    could not be listed) and ``committing`` (file names of the journals of
    commits in progress: their archive's lock is held)."""

    base: str
    temp_zips: list
    journals: list
    archives: list
    unreadable: list
    committing: list = dataclasses.field(default_factory=list)

    def to_json(self):
        return {"base": self.base, "journals": self.journals, "committing": self.committing,
                "temp_zips": [temp.to_json() for temp in self.temp_zips],
                "archives": [archive.to_json() for archive in self.archives],
                "unreadable": [{"path": path, "error": reason}
                               for path, reason in self.unreadable]}


def _known_fields(record):
    return {field.name: getattr(record, field.name) for field in dataclasses.fields(record)
            if getattr(record, field.name) is not None}


def status(base=None, rotation_span=None):
    """A BaseStatus: the temp zips (open/sealed/dead/stale/damaged), pending
    journals and final archives under ``base``."""
    base = _checked_base(base, whole=True)
    inbox = os.path.join(base, _INBOX)
    # Probing a lock opens and closes a descriptor, which would drop the lock
    # of an in-process scavenger on that file: keep out of its way.
    with _SCAVENGE_LOCK:
        temps = _temp_statuses(base, rotation_span)
        journals, committing = [], []
        directory = os.path.join(inbox, _ARCHIVES_DIR)
        if os.path.isdir(directory):
            for name in sorted(os.listdir(directory)):
                if name.endswith(_PENDING_JOURNAL_SUFFIXES):
                    paths = _ArchivePaths(base, key=name.rsplit(".", 1)[0])
                    (committing if _lock_holder(paths) else journals).append(name)
        unreadable = []
        archives = [_archive_status(base, archive)
                    for archive in _archives_under(base, unreadable=unreadable)]
    return BaseStatus(base, temps, journals, [info for info in archives if info is not None],
                      unreadable, committing)


def _temp_statuses(base, rotation_span=None):
    """The TempZipStatus of every temp zip in ``base``'s inbox."""
    grace = _GRACE_SPANS * _rotation_or_env(rotation_span)
    inbox = os.path.join(base, _INBOX)
    with _SCAVENGE_LOCK:
        return [_temp_status(path, grace, inbox) for path in _list_temp_zips(inbox)]


def _lock_holder(paths):
    """Who holds the archive's lock now (a _lock_holder_text), or None if
    a shared lock could be taken (nobody is committing)."""
    try:
        lock = _LockFile(paths.lock, writable=False)
    except OSError:
        return None            # no lock file: no scavenger ever committed here
    try:
        if lock.try_lock(exclusive=False):
            return None
        return _lock_holder_text(_read_holder(paths.lock), paths.base)
    except LockingUnsupportedError:
        return None
    finally:
        lock.close()


def _archive_status(base, archive):
    """The ArchiveStatus of a final archive; None if it was rolled over
    since it was listed."""
    info = ArchiveStatus(os.path.relpath(archive, base))
    info.locked = _lock_holder(_ArchivePaths(base, _dest_of(base, archive)))
    try:
        fd = _open_existing(archive, os.O_RDONLY | _O_CLOEXEC)
        if fd is None:
            return None
        try:
            info.size = os.fstat(fd).st_size
            info.entries = _read_end_records(fd, info.size, archive).count
        finally:
            _close_read_only(fd)
    except (ArchiveError, OSError) as err:
        info.entries = None
        # Mid-commit, the end records are being rewritten: not an error.
        info.error = None if info.locked else str(err)
    return info


def _temp_status(path, grace, inbox):
    """The TempZipStatus of the temp zip at ``path`` in ``inbox``."""
    info = TempZipStatus("/".join(os.path.relpath(path, inbox).split(os.sep)))
    try:
        st = os.lstat(path)
        info.size, info.changed = st.st_size, st.st_mtime
        if not stat.S_ISREG(st.st_mode):
            info.error = "not a regular file"
            return info
        sidecar = _read_sidecar(_sidecar_path(path))
    except (OSError, TempZipError) as err:
        info.error = str(err)
        return info
    if sidecar is not None:
        info.entries, info.host, info.pid = sidecar.entries, sidecar.host, sidecar.pid
        info.created = sidecar.created
        if sidecar.is_sealed:
            info.state = "sealed"
            return info
    if _held_by_a_writer(path):
        info.state = "open"
        # Judged by the writer's span too: an idle writer with a longer span
        # than this scavenger's leaves its temp zip unchanged for that long.
        info.still_for_grace = time.time() - st.st_mtime >= (sidecar.grace(grace) if sidecar
                                                              else grace)
        # The sidecar counts entries only once sealed: count what is on disk.
        info.entries = _count_complete_entries(path, st.st_size)
        return info
    info.entries = _count_complete_entries(path, st.st_size)
    info.salvage_after = _salvage_after(sidecar, st, grace)
    info.state = "stale" if time.time() >= info.salvage_after else "dead"
    return info


def _held_by_a_writer(path):
    """Is the temp zip's lock held (by a writer in this or another process)?"""
    with _OWN_TEMP_ZIPS_LOCK:
        if path in _OWN_TEMP_ZIPS:
            return True
    try:
        fd = _open_existing(path, os.O_RDWR | _O_CLOEXEC | _O_NOFOLLOW)
        if fd is None:
            return False
        try:
            return not _lock(fd, path, blocking=False)
        finally:
            _close_read_only(fd)
    except (OSError, RearError):
        return False


def _count_complete_entries(path, size):
    """How many complete entries an unsealed temp zip holds, by walking its
    local headers (no data is read: this is status, not salvage)."""
    try:
        fd = _open_existing(path, os.O_RDONLY | _O_CLOEXEC)
    except OSError:
        return None
    if fd is None:
        return None
    try:
        return sum(1 for _entry in _complete_local_entries(fd, path, size))
    finally:
        _close_read_only(fd)


# ---------------------------------------------------------------- accounting
#
# Which outputs of a campaign are missing: expected names, given as bash
# brace patterns, against an archive series and its pending files.


class _NumberRange:
    """The values of a ``{A..B}`` or ``{A..B..STEP}`` brace, as text (zero
    padded to the wider end when either end is, as bash pads them)."""

    def __init__(self, first, last, step, width):
        self.numbers = range(first, last + (1 if first <= last else -1),
                             abs(step) if first <= last else -abs(step))
        self.width = width

    def __iter__(self):
        for number in self.numbers:
            yield ("%0*d" % (self.width, number) if number >= 0
                   else "-%0*d" % (max(self.width - 1, 0), -number)), number


class _Choices:
    """The values of a ``{a,b,c}`` brace."""

    def __init__(self, words):
        self.words = words

    def __iter__(self):
        for word in self.words:
            yield word, None


_BRACE = re.compile(r"\{([^{}]*)\}")
_BRACE_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?$")


def _parse_pattern(pattern):
    """The parts of a brace pattern: text, _NumberRange and _Choices, in
    order; a brace that is neither a range nor a list of two or more is
    text, as bash leaves it."""
    parts, position = [], 0
    for match in _BRACE.finditer(pattern):
        body = match.group(1)
        numbers = _BRACE_RANGE.match(body)
        if numbers:
            first, last = int(numbers.group(1)), int(numbers.group(2))
            step = int(numbers.group(3) or 1) or 1
            padded = any(re.match(r"^-?0\d", end) for end in numbers.group(1, 2))
            width = max(len(numbers.group(1)), len(numbers.group(2))) if padded else 0
            brace = _NumberRange(first, last, step, width)
        elif "," in body:
            brace = _Choices(body.split(","))
        else:
            continue
        parts.append(pattern[position:match.start()])
        parts.append(brace)
        position = match.end()
    parts.append(pattern[position:])
    if "{" in pattern and len(parts) == 1:
        raise ValueError("%r has a brace rear does not expand: use {0..999}, {000..999}, "
                         "{0..999..2} or {a,b}, not nested" % pattern)
    return parts


def _expand_pattern(pattern):
    """Yield (name, value) for every name a bash brace pattern expands to,
    in bash's order, lazily (a campaign of a million names is never held):
    ``value`` is the number the pattern's first numeric range gave it, or
    None if it has none."""
    parts = _parse_pattern(pattern)
    texts, braces = parts[0::2], parts[1::2]     # text, brace, text, ..., text
    first_range = next((level for level, brace in enumerate(braces)
                        if isinstance(brace, _NumberRange)), None)

    def expand(level, prefix, value):
        after = texts[level + 1]
        ranged = level == first_range
        if level == len(braces) - 1:      # the innermost loop, without a call per name
            for text, number in braces[level]:
                yield prefix + text + after, number if ranged else value
            return
        for text, number in braces[level]:
            yield from expand(level + 1, prefix + text + after, number if ranged else value)

    if not braces:
        return iter([(texts[0], None)])
    return expand(0, texts[0], None)


class Missing:
    """What ``missing`` finds: iterate it for the missing names, in the
    order they were expected (once).  Meanwhile it counts ``expected``,
    ``archived`` (anywhere in the series), ``pending`` (acknowledged, still
    in temp zips in inbox/) and ``missing``; ``values`` is the set of the
    missing names' values of their pattern's first numeric range (the
    array task ids to resubmit)."""

    def __init__(self, base, dest, expected):
        self.base = _checked_base(base)
        _check_dest(dest)
        self.dest = dest
        if isinstance(expected, str):
            expected = [expected]
        self._expected = expected
        self.expected = self.archived = self.pending = self.missing = 0
        self.values = set()
        self.archives = 0      # how many archives the series has

    def __iter__(self):
        # The inbox first, then the archives: a name a scavenger moves in
        # between is then in the one or the other, never in neither.
        pending = _PendingView(self.base, self.dest).entries
        views = []
        try:
            for archive in _series(self.base, self.dest):
                views.append(_ArchiveView(archive, self.base, _dest_of(self.base, archive),
                                          _READ_LOCK_TIMEOUT))
            self.archives = len(views)
            lookups = [_name_lookup(view) for view in views]
            for name, value in self._names():
                self.expected += 1
                encoded = name.encode("utf-8")
                name_hash = _name_hash(encoded)
                for position, lookup in enumerate(lookups):
                    if lookup(encoded, name_hash):
                        if position:    # names in order are mostly in one archive
                            lookups.insert(0, lookups.pop(position))
                        break
                else:
                    lookup = None
                if lookup is not None:
                    self.archived += 1
                elif name in pending:
                    self.pending += 1
                else:
                    self.missing += 1
                    if value is not None:
                        self.values.add(value)
                    yield name
        finally:
            for view in views:
                view.close()

    def _names(self):
        for item in self._expected:
            if isinstance(item, tuple):        # (name, value), as the CLI passes them
                yield item
            else:
                yield from _expand_pattern(item)


def _name_lookup(view):
    """Whether the archive ``view`` holds a name, as f(its UTF-8, its hash)."""
    if view.index is not None:
        return view.index.contains
    # Without a matching index (another tool's archive, or a stale index)
    # its names are read once, not once per name looked up.
    names = {name.encode("utf-8") for name in view.names()}
    return lambda encoded, _name_hash: encoded in names


def missing(base, dest, expected):
    """The names of ``expected`` that the archive ``dest`` of ``base``
    (its whole series) does not hold and that are not pending in the inbox
    either: a Missing, to iterate.

    ``expected`` is a bash brace pattern (``"out/{000..999}.json"``; ranges,
    zero padding, steps, lists, several braces) or a list of them; a name
    without braces stands for itself.  Memory stays bounded whatever the
    campaign's size: names are expanded and looked up one at a time.
    """
    return Missing(base, dest, expected)


def _slurm_array(values):
    """``3,17,50-52``: sorted values, runs joined (sbatch --array syntax)."""
    runs = []
    for value in sorted(values):
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return ",".join(str(first) if first == last else "%d-%d" % (first, last)
                    for first, last in runs)


# ---------------------------------------------------------------- CLI

_EXIT_CODES = """exit codes:
  0  done (verify: every archive read back with its CRCs)
  1  some work failed or was not done; each problem is one line on stderr, e.g.
       rear: error: base directory /scratch/run4 does not exist; check the path (or $REAR_BASE)
       rear: error: /scratch/run42/a.zip is a directory, not an archive; move it away; ...
       rear: error: no archives under /scratch: nothing was verified; ...
  2  usage error (an unknown option, a missing argument, no base and no $REAR_BASE)
  3  not finished: temp zips remain in inbox/ after 'scavenge --flush' (each named,
     with its writer and whether it still runs), or are not archived yet at 'verify';
     'missing' found expected files missing"""


def _size_arg(text):
    """--max-size: checked as the library checks max_size, as a usage error."""
    try:
        return _parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err))


def _rotation_arg(text):
    """--rotation: checked as rear_fs checks rotation_span, as a usage error."""
    try:
        return _rotation_or_env(_positive_float(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err))


def _host_arg(text):
    if not text.strip() or "/" in text:
        raise argparse.ArgumentTypeError("%r is not a host name; name it as 'rear status' "
                                         "shows it (pid P on HOST)" % text)
    return text.strip()


def _part_arg(text):
    try:
        number, count = (int(field) for field in text.split("/"))
        return _checked_part((number, count))
    except ValueError:
        raise argparse.ArgumentTypeError(
            "%r is not a part: give K/N with 1 <= K <= N, like 1/4 to 4/4 for four "
            "scavengers (in a SLURM step: $((SLURM_PROCID + 1))/$SLURM_NTASKS)" % text)


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a whole number" % text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be at least 1, not %r" % text)
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number of seconds" % text)
    if not value > 0:
        raise argparse.ArgumentTypeError("seconds must be positive, not %r" % text)
    return value


class _ProgressLine:
    """A progress line on a terminal's stderr, once a pass has run for a while."""

    def __init__(self, stream):
        self.stream = stream
        self.started = time.monotonic()
        self.last = 0.0
        self.shown = False

    def __call__(self, stats, done, total):
        now = time.monotonic()
        if now - self.started < _PROGRESS_DELAY or now - self.last < _PROGRESS_INTERVAL:
            return
        self.last = now
        self.shown = True
        self.stream.write("\rrear: %d/%d temp zips, %d files moved, %d errors "
                          % (done, total, stats.files_moved, len(stats.errors)))
        self.stream.flush()

    def finish(self):
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


def _print_stats(stats, out):
    # Commits, not archives: a pass commits to one archive once per batch.
    out.write("moved %d files from %d temp zips in %d commits (%d duplicates skipped, "
              "%d conflicts renamed, %d salvaged, %d busy, %d waiting, %d errors)\n"
              % (stats.files_moved, stats.temp_zips_done, stats.archives_touched,
                 stats.duplicates, stats.conflicts, stats.salvaged, stats.busy,
                 stats.waiting, len(stats.errors)))
    if stats.busy:
        out.write("  %d busy: held by a live writer or another scavenger; a later pass "
                  "takes them\n" % stats.busy)
    if stats.taken_over:
        out.write("  %s taken over without their locks, which hosts declared down may hold "
                  "(--dead-host)\n" % _counted(stats.taken_over, "temp zip"))
    if stats.locks_taken_over:
        out.write("  %s taken over from scavengers on hosts declared down (--dead-host); "
                  "their commits rolled back or finished\n"
                  % _counted(stats.locks_taken_over, "archive lock"))
    if stats.waiting:
        out.write("  %d waiting: unsealed temp zips of writers that died, kept until the "
                  "grace period (2 x their rotation span or this one, the longer) has "
                  "passed; 'rear scavenge --flush' salvages them now\n" % stats.waiting)


def _did_something(stats):
    return bool(stats.files_moved or stats.temp_zips_done or stats.salvaged or stats.errors
                or stats.recovered_journals or stats.duplicates)


def _report_errors(stats):
    """Print each of the pass's problems once, naming its file once."""
    for path, reason in stats.errors:
        sys.stderr.write("rear: error: %s\n" % (reason if path in reason
                                                else "%s: %s" % (path, reason)))
    return 1 if stats.errors else 0


def _not_reported(record):
    """Logging filter of the CLI: what _report_problem logged, _report_errors prints."""
    return not getattr(record, "rear_reported", False)


#: Exit code when the work ran but did not finish: temp zips remain in the
#: inbox after 'scavenge --flush', or are not yet archived at 'verify'.
_EXIT_UNFINISHED = 3


def _cmd_scavenge(args):
    code = 0
    totals = ScavengeStats()
    if args.watch:
        # A job step is stopped with SIGTERM (scancel, a time limit): end it
        # as Ctrl-C ends it, the commit in progress finished or rolled back.
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        while True:
            stats = _scavenge_pass(args)
            totals.add(stats)
            # Under --watch an idle pass prints nothing (-v: every pass).
            if not args.quiet and (not args.watch or args.verbose or _did_something(stats)):
                _print_stats(stats, sys.stdout)
                sys.stdout.flush()
            code = _report_errors(stats)
            if not args.watch:
                if args.flush and not code:
                    code = _finish_flush(args)
                return code
            time.sleep(args.watch)
    except KeyboardInterrupt:
        if not args.watch:
            raise
        if not args.quiet:    # Ctrl-C or SIGTERM is how a --watch loop is meant to end
            sys.stdout.write("stopped; in all: ")
            _print_stats(totals, sys.stdout)
            sys.stdout.flush()
        return code


def _raise_keyboard_interrupt(_signum, _frame):
    raise KeyboardInterrupt


def _scavenge_pass(args):
    progress = None
    if not args.quiet and sys.stderr.isatty():
        progress = _ProgressLine(sys.stderr)
    try:
        return scavenge(args.base, flush=args.flush, rotation_span=args.rotation,
                        max_size=args.max_size, max_entries=args.max_entries,
                        progress=progress, dead_hosts=args.dead_host, part=args.part)
    finally:
        if progress is not None:
            progress.finish()


def _finish_flush(args):
    """--flush asked for everything.  Sealed temp zips a pass left were
    claimed by another scavenger: they are waited for while their number
    keeps changing, then one more pass takes what it left; what remains then
    is reported (_report_unfinished).  (An unsealed one left is a live
    writer's, or a crashed client's: that is said at once.)"""
    base = _checked_base(args.base)
    taken, changed = None, time.monotonic()
    while True:
        inbox = os.path.join(base, _INBOX)
        now_taken = {temp.path for temp in _temp_statuses(base, args.rotation)
                     if temp.state == "sealed"
                     and _in_part(_part_key(inbox, os.path.join(inbox, temp.path)),
                                  args.part)}
        if not now_taken:
            break
        if now_taken != taken:
            taken, changed = now_taken, time.monotonic()
        elif time.monotonic() - changed > _FLUSH_PATIENCE:
            break
        time.sleep(_FLUSH_POLL)
    if taken:
        stats = _scavenge_pass(args)
        if not args.quiet and _did_something(stats):
            _print_stats(stats, sys.stdout)
            sys.stdout.flush()
        code = _report_errors(stats)
        if code:
            return code
    return _report_unfinished(base, args.rotation, args.part)


def _report_unfinished(base, rotation_span=None, part=None):
    """After 'scavenge --flush', which asked for everything (of its
    ``part``): name each temp zip still in the inbox with its writer, and
    return _EXIT_UNFINISHED if there are any (0 if none)."""
    inbox = os.path.join(base, _INBOX)
    temps = [temp for temp in status(base, rotation_span).temp_zips
             if _in_part(_part_key(inbox, os.path.join(inbox, temp.path)), part)]
    for temp in temps:
        sys.stderr.write("rear: error: %s remains in %s/inbox/: %s\n"
                         % (temp.path, base, _why_left(temp, base)))
    if temps:
        sys.stderr.write("rear: error: %s not archived; once their writers have ended, run "
                         "'rear scavenge --flush %s' again\n"
                         % (_counted(len(temps), "temp zip"), base))
        return _EXIT_UNFINISHED
    return 0


def _why_left(temp, base):
    """Why a flush left a temp zip: its state and its writer, alive or not."""
    if temp.state == "damaged":
        return "damaged (%s)" % temp.error
    writer = _writer_name(temp) or " (writer unknown)"
    if temp.state == "open":
        if temp.host == socket.gethostname() and _process_state(temp.pid) == _PROCESS_GONE:
            return ("locked although its writer%s has ended: a scavenger is taking it, or "
                    "the filesystem still holds a crashed client's lock%s"
                    % (writer, _dead_host_hint(temp, base)))
        held = ("a stopped writer holds it" if temp.host == socket.gethostname()
                and _process_state(temp.pid) == _PROCESS_STOPPED else "a live writer holds it")
        return "%s%s%s" % (held, writer, _dead_host_hint(temp, base))
    return "%s temp zip%s, %s" % (temp.state, writer, _entries_text(temp.entries))


def _cmd_recover(args):
    stats = recover(args.base, rotation_span=args.rotation)
    if not args.quiet:
        sys.stdout.write("recovered %d interrupted commits, salvaged %d temp zips "
                         "(%d files moved)\n" % (stats.recovered_journals, stats.salvaged,
                                                 stats.files_moved))
    return _report_errors(stats)


def _cmd_status(args):
    report = status(args.base, rotation_span=args.rotation)
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 1 if report.unreadable else 0
    counts = collections.Counter(temp.state for temp in report.temp_zips)
    out = sys.stdout
    out.write("base %s\n" % report.base)
    out.write("temp zips: %s\n" % (", ".join(
        "%d %s" % (counts[state], state)
        for state in ("open", "sealed", "dead", "stale", "damaged"))))
    for temp in report.temp_zips:
        _print_temp_status(temp, report.base, out)
    if report.journals:
        out.write("interrupted commits: %d (run 'rear recover %s')\n"
                  % (len(report.journals), report.base))
    if report.committing:
        out.write("commits in progress: %d\n" % len(report.committing))
    out.write("archives: %d\n" % len(report.archives))
    for archive in report.archives:
        note = archive.error
        if archive.locked is not None:
            note = "being committed to: " + archive.locked
        out.write("  %10s entries %14s bytes  %s%s\n" % (
            "?" if archive.entries is None else archive.entries,
            "?" if archive.size is None else archive.size, archive.path,
            "  (%s)" % note if note is not None else ""))
    for path, reason in report.unreadable:
        sys.stderr.write("rear: error: %s: %s\n" % (path, reason))
    return 1 if report.unreadable else 0


def _dead_host_hint(temp, base):
    """For a locked temp zip: how to take it over if its writer's node is
    down and the filesystem keeps the crashed client's locks."""
    if not temp.host or _runs_on_this_host(temp.host, temp.pid):
        return ""
    return ("; if %s is down, the filesystem may keep its locks long after (MooseFS: "
            "SESSION_SUSTAIN_TIME, a day by default), and 'rear scavenge --flush "
            "--dead-host %s %s' takes it over" % (temp.host, temp.host, base))


def _print_temp_status(temp, base, out):
    """One line for a temp zip that needs explaining: damaged, a dead
    writer's, or locked but still for longer than the grace period."""
    if temp.state == "open" and temp.still_for_grace:
        out.write("  open %s: locked by its writer%s, unchanged since %s%s\n"
                  % (temp.path, _writer_name(temp), time.strftime(
                      "%Y-%m-%d %H:%M:%S", time.localtime(temp.changed)),
                     _dead_host_hint(temp, base)))
    elif temp.state == "damaged":
        out.write("  damaged %s: %s\n" % (temp.path, temp.error))
    elif temp.state in ("dead", "stale"):
        when = ("by the next pass" if temp.state == "stale" else "by a pass after %s"
                % time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(temp.salvage_after)))
        out.write("  %s %s: unsealed and unlocked, its writer%s has ended; %s, salvaged %s, "
                  "or now with 'rear scavenge --flush'\n"
                  % (temp.state, temp.path, _writer_name(temp),
                     _entries_text(temp.entries, "complete entry"), when))


def _writer_name(temp):
    """' (pid P on host H, still running)': whether it runs is known only on
    its own host."""
    if not temp.host:
        return ""
    return " (pid %s on %s, %s)" % (temp.pid, temp.host, _describe_process(temp.host, temp.pid))


def _describe_process(host, pid):
    if host != socket.gethostname():
        return "another host: cannot tell whether it still runs"
    state = _process_state(pid)
    if state is None:
        return "cannot tell whether it still runs"
    if state == _PROCESS_STOPPED:
        return ("stopped (SIGSTOP, or suspended by the scheduler): it archives nothing "
                "until it is resumed, 'kill -CONT %d' or 'scontrol resume'" % pid)
    return "no longer running" if state == _PROCESS_GONE else "still " + state


def _reader_for(target, dest=None, pending=False):
    """open_archive for the CLI's two forms: an ARCHIVE, or a BASE and an
    archive path in it (the whole series, and the inbox with ``pending``)."""
    if os.path.isdir(target):
        if dest is None:
            raise RearError("%s is a directory: give the archive path in it too, like "
                            "'rear ls %s logs.zip', or the archive's own path"
                            % (target, target), target)
        return open_archive(target, dest, pending=pending)
    if pending:
        raise RearError("--pending needs the base and the archive path, like 'rear ls "
                        "BASE logs.zip --pending': files not yet scavenged are in "
                        "BASE/inbox/", target)
    return open_archive(target)


class _LocalTimes:
    """Unix times shown in the reader's time zone, each minute formatted once
    (an archive's entries share few minutes; strftime per entry was a
    third of a listing)."""

    def __init__(self, layout):
        self.layout = layout
        self.shown = {}

    def __call__(self, mtime):
        minute = mtime // 60
        text = self.shown.get(minute)
        if text is None:
            text = self.shown[minute] = time.strftime(self.layout, time.localtime(mtime))
        return text


def _cmd_ls(args):
    with _reader_for(args.target, args.archive, args.pending) as reader:
        if args.versions:
            _write_lines(sys.stdout, _version_lines(reader, args.prefix, args.json))
            return 0
        if args.names_only:
            _write_lines(sys.stdout, ((name if name.isprintable() else _shown_name(name)) + "\n"
                                      for name in reader.names(args.prefix)))
            return 0
        rows = reader.rows(args.prefix)
        if args.json:     # one object per line: streams, and greps
            _write_lines(sys.stdout, _json_lines(rows))
            return 0
        sys.stdout.write("%12s %12s  %-16s  %s\n" % ("Length", "Compressed", "Date Time",
                                                     "Name"))
        totals = [0, 0, 0]
        _write_lines(sys.stdout, _listing_lines(rows, totals))
        sys.stdout.write("%12d %12d  %-16s  %s\n" % (totals[0], totals[1], "",
                                                     _counted(totals[2], "file")))
    return 0


#: The suffix of a copy the scavenger kept under another name (name.~N~).
_COPY_SUFFIX = re.compile(r"\.~[1-9][0-9]*~$")


def _version_lines(reader, prefix, as_json):
    """'rear ls --versions': every copy of each name, with who wrote it."""
    shown = _LocalTimes("%Y-%m-%d %H:%M:%S")
    for name in reader.names(prefix):
        copy_of = _COPY_SUFFIX.search(name)
        if copy_of and name[:copy_of.start()] in reader:
            continue          # listed under its name
        for number, stored in enumerate(reader.copies(name)):
            info = reader.info(stored)
            provenance = reader.provenance(stored)
            if as_json:
                yield json.dumps({"name": name, "version": number + 1, "stored_as": stored,
                                  "size": info.size, "crc": info.crc,
                                  "mtime": int(info.mtime), "date_time": shown(info.mtime),
                                  "archive": info.archive, "pending": info.pending,
                                  "provenance": provenance}) + "\n"
            else:
                yield "%s  %s  %d  %08x  %s%s  %s\n" % (
                    _shown_name(name), _shown_name(stored), info.size, info.crc,
                    shown(info.mtime), "  (pending)" if info.pending else "",
                    " ".join("%s=%s" % item for item in provenance.items()) or "-")


def _listing_lines(rows, totals):
    """unzip -l style lines of reader rows; ``totals`` gets (bytes,
    compressed, files).  The minute cache is inlined: this loop runs once
    per entry of the archive."""
    shown = _LocalTimes("%Y-%m-%d %H:%M")
    cached = shown.shown.get
    total = compressed = count = 0
    for name, size, packed, _crc, mtime, _mode, _archive, pending in rows:
        when = cached(mtime // 60) or shown(mtime)
        if not name.isprintable():
            name = _shown_name(name)
        if pending:
            name += "  (pending: not scavenged yet)"
        yield "%12d %12d  %s  %s\n" % (size, packed, when, name)
        total += size
        compressed += packed
        count += 1
    totals[:] = total, compressed, count


def _shown_name(name):
    """A member name for a listing line: control characters as zipinfo
    shows them (a newline as ^J), so that one entry is one line."""
    return "".join("^" + chr(ord(char) ^ 0x40) if ord(char) < 0x20 or char == "\x7f"
                   else char for char in name)


def _json_lines(rows):
    shown = _LocalTimes("%Y-%m-%d %H:%M:%S")
    dumps = json.dumps
    for name, size, packed, crc, mtime, mode, archive, pending in rows:
        yield ('{"name": %s, "size": %d, "compressed_size": %d, "crc": %d, "mode": %d, '
               '"mtime": %d, "date_time": "%s", "archive": %s, "pending": %s}\n' % (
                   dumps(name), size, packed, crc, mode, mtime, shown(mtime), dumps(archive),
                   "true" if pending else "false"))


def _write_lines(out, lines, batch=4096):
    """Write ``lines`` a few thousand at a time: a write per line of a
    million-line listing cost more than making the lines."""
    while True:
        chunk = "".join(itertools.islice(lines, batch))
        if not chunk:
            return
        out.write(chunk)


def _cmd_cat(args):
    if os.path.isdir(args.target):
        dest, member = split_path(args.member)
        reader = _reader_for(args.target, dest, pending=True)
        # Given a base, cat reads pending files too: so does the listing it
        # points to (without --pending it fails before a first commit).
        listing = ["--pending", args.target, dest]
    else:
        member, reader = args.member, _reader_for(args.target)
        listing = [args.target]
    with reader:
        try:
            handle = reader.open(member, args.version)
        except KeyError as err:
            options = (["--versions"] if args.version else []) + listing
            raise RearError("%s; list the members with 'rear ls %s'"
                            % (err.args[0], " ".join(options)), args.target) from None
        with handle:
            shutil.copyfileobj(handle, sys.stdout.buffer, _CHUNK)
    sys.stdout.buffer.flush()
    return 0


def _cmd_missing(args):
    if not args.expect and args.expect_file is None:
        sys.stderr.write("rear: error: say which names are expected: --expect PATTERN (like "
                         "'out/{0..999}.json') or --expect-file FILE\n")
        return 2
    for pattern in args.expect:
        try:
            _parse_pattern(pattern)
        except ValueError as err:
            sys.stderr.write("rear: error: --expect %s\n" % err)
            return 2
    if args.array and not any(isinstance(part, _NumberRange) for pattern in args.expect
                              for part in _parse_pattern(pattern)):
        sys.stderr.write("rear: error: --array needs an --expect pattern with a numeric range, "
                         "like 'out/{0..999}.json'\n")
        return 2
    expected = list(args.expect)
    if args.expect_file is not None:
        expected = itertools.chain(expected, _names_in_file(args.expect_file))
    found = missing(args.base, args.archive, expected)
    names = []
    lines = (name + "\n" for name in found)
    if args.json:
        names = list(found)
    elif args.array:
        for _name in found:
            pass
        if found.values:
            sys.stdout.write(_slurm_array(found.values) + "\n")
    else:
        _write_lines(sys.stdout, lines)
    if args.json:
        json.dump({"base": found.base, "archive": found.dest, "expected": found.expected,
                   "archived": found.archived, "pending": found.pending,
                   "missing": found.missing, "names": names,
                   "array": _slurm_array(found.values)}, sys.stdout, sort_keys=True)
        sys.stdout.write("\n")
    sys.stderr.write("rear: %s of %d expected missing from %s (%d archived, %d pending in "
                     "inbox/)\n" % ("none" if not found.missing else "%d" % found.missing,
                                    found.expected, args.archive, found.archived,
                                    found.pending))
    if not found.archives and not found.archived and not found.pending:
        others = [_dest_of(found.base, path) for path in
                  itertools.islice(_archives_under(found.base), 5)]
        sys.stderr.write("rear: note: %s has no archive %s and nothing pending for it; is the "
                         "name right? (%s)\n" % (found.base, args.archive, (
                             "archives there: " + ", ".join(others)) if others
                             else "it has no archives yet"))
    elif found.expected and found.missing == found.expected:
        # Not one expected name is there, yet the archive holds others: a
        # pattern that does not match the names (padding, a glob) would
        # otherwise have every task resubmitted.
        with open_archive(found.base, args.archive, pending=True) as reader:
            names = list(itertools.islice(reader.names(), 3))
        sys.stderr.write("rear: note: none of the expected names is in %s, which holds others "
                         "(%s, ...); is the pattern right?%s\n" % (
                             args.archive, ", ".join(names),
                             " '*' and '?' are not expanded: use braces, like "
                             "{0..999} or {000..999}" if any(
                                 "*" in pattern or "?" in pattern for pattern in args.expect)
                             else " Zero padding is {000..999}, not {0..999}"))
    return 3 if found.missing else 0


def _names_in_file(path):
    """(name, None) for each non-empty line of ``path``: literal names."""
    try:
        handle = open(path, encoding="utf-8")
    except OSError as err:
        raise RearError("cannot read --expect-file %s: %s; give a file of expected names, "
                        "one per line" % (path, err.strerror), path) from err
    with handle:
        try:
            for line in handle:
                name = line.rstrip("\n")
                if name:
                    yield name, None
        except UnicodeDecodeError as err:
            raise RearError("--expect-file %s is not UTF-8 text (%s); give a file of expected "
                            "names, one per line" % (path, err.reason), path) from err


def _cmd_verify(args):
    report = verify(args.path)
    for archive, problem in report:
        sys.stderr.write("rear: error: %s: %s\n" % (archive, problem))
    what = "%s, %s" % (_counted(report.archives, "archive"), _counted(report.entries, "entry"))
    if report:
        sys.stderr.write("rear: error: %s under %s; checked %s intact\n"
                         % (_counted(len(report), "problem"), args.path, what))
        return 1
    if not report.archives:
        # Nothing read is nothing verified: never "intact".
        if os.path.isdir(os.path.join(args.path, _INBOX)):
            sys.stderr.write("rear: error: no archives under %s yet: nothing was verified\n"
                             % args.path)
            return _report_pending(args.path) or 1
        sys.stderr.write("rear: error: no archives under %s: nothing was verified; give the "
                         "base directory (the one that holds inbox/) or an archive\n"
                         % args.path)
        return 1
    if not args.quiet:
        sys.stdout.write("verified %s under %s: every CRC matches\n" % (what, args.path))
    return _report_pending(args.path)


def _report_pending(path):
    """verify BASE: archives intact is not 'everything is there' while temp
    zips wait in the inbox.  Says how many and what they hold."""
    if not os.path.isdir(os.path.join(path, _INBOX)):
        return 0
    temps = status(path).temp_zips
    if not temps:
        return 0
    entries = sum(temp.entries or 0 for temp in temps)
    sys.stderr.write("rear: error: but %s holding %s are still in %s: not in the archives "
                     "yet; run 'rear scavenge --flush %s' ('rear status' says whose)\n"
                     % (_counted(len(temps), "temp zip"), _counted(entries, "entry"),
                        os.path.join(path, _INBOX), path))
    return _EXIT_UNFINISHED


def _entries_text(number, noun="entry"):
    """'1 complete entry', '75 complete entries', or '? entries' when unknown."""
    return "? %s" % _counted(2, noun).split(" ", 1)[1] if number is None \
        else _counted(number, noun)


def _demo_worker(base, worker, count, rotation_span):
    with rear_fs(base, rotation_span=rotation_span):
        for index in range(count):
            with rear_open("demo.zip/worker-%d/file-%05d.txt" % (worker, index)) as handle:
                handle.write("worker %d file %d\n" % (worker, index))
            if index % 100 == 0:
                with rear_open("logs/worker-%d.zip/progress.log.%d" % (worker, index)) as handle:
                    handle.write("reached %d\n" % index)


def _cmd_demo(args):
    directory = args.dir or tempfile.mkdtemp(prefix="rear-demo-")
    try:
        return _run_demo(directory, args.workers, args.files)
    finally:
        if args.dir is None:    # a directory of our own: leave nothing behind
            shutil.rmtree(directory, ignore_errors=True)


def _run_demo(directory, workers, files):
    import multiprocessing

    _shard_or_env(None)     # a bad $REAR_SHARD_INBOX said once, not by every worker
    os.makedirs(directory, exist_ok=True)
    started = time.monotonic()
    processes = [multiprocessing.Process(target=_demo_worker,
                                         args=(directory, worker, files, 0.5))
                 for worker in range(workers)]
    with scavengerd(directory, rotation_span=0.5) as daemon:
        for process in processes:
            process.start()
        for process in processes:
            process.join()
    failed = [process.exitcode for process in processes if process.exitcode != 0]
    report = verify(directory)
    with zipfile.ZipFile(os.path.join(directory, "demo.zip")) as handle:
        archived = len(handle.namelist())
    expected = workers * files
    logs = workers * ((files + 99) // 100)
    sys.stdout.write("demo: %d workers wrote %d files (and %d progress logs) in %.1f s; the "
                     "scavenger moved %d entries from %d temp zips into demo.zip and logs/; "
                     "demo.zip holds %d of %d; %s\n"
                     % (workers, expected, logs, time.monotonic() - started,
                        daemon.stats.files_moved, daemon.stats.temp_zips_done, archived,
                        expected, "verified %d archives, %d entries" % (
                            report.archives, report.entries) if not report
                        else "%d PROBLEMS" % len(report)))
    return 0 if archived == expected and not report and not failed else 1


# ---------------------------------------------------------------- CLI parser
#
# The table of subcommands, the parser built from it, and the entry points.


class _Command:
    """One subcommand of ``rear``: its help line and example, how its
    arguments are declared, what runs it, and whether it can commit (so an
    interrupted run must say what became of the commit in progress)."""

    __slots__ = ("name", "help", "example", "add_arguments", "run", "commits")

    def __init__(self, name, help_text, example, add_arguments, run, commits=False):
        self.name, self.help, self.example = name, help_text, example
        self.add_arguments, self.run, self.commits = add_arguments, run, commits


def _add_base_arguments(sub):
    sub.add_argument("base", nargs="?", default=None,
                     help="base directory (default: $REAR_BASE)")
    sub.add_argument("--rotation", type=_rotation_arg, default=None, metavar="S",
                     help="workers' rotation span in seconds (default: $REAR_ROTATION "
                     "or 300); unsealed temp zips of dead writers are salvaged "
                     "after twice this")


def _add_scavenge_arguments(sub):
    _add_base_arguments(sub)
    sub.add_argument("--flush", action="store_true",
                     help="also salvage unsealed temp zips of dead writers now")
    sub.add_argument("--dead-host", action="append", default=[], metavar="HOST",
                     type=_host_arg, help="HOST is down (crashed, powered off): take "
                     "over its writers' temp zips and its scavengers' archive locks "
                     "although the filesystem still holds them (MooseFS does, for a day "
                     "by default); repeatable.  Never name a node that runs")
    sub.add_argument("--part", type=_part_arg, default=None, metavar="K/N",
                     help="take only part K of N of the temp zips (split by name): N "
                     "scavengers given 1/N to N/N share the inbox without trying the same "
                     "temp zip; --flush then waits for its own part only")
    sub.add_argument("--watch", type=_positive_float, default=None, metavar="S",
                     help="repeat every S seconds until interrupted")
    sub.add_argument("--max-size", type=_size_arg, default=DEFAULT_MAX_SIZE, metavar="SIZE",
                     help="roll an archive over to name.~N~.zip at this size (default 50G)")
    sub.add_argument("--max-entries", type=_positive_int, default=DEFAULT_MAX_ENTRIES,
                     metavar="N", help="... or at this many entries (default %d)"
                     % DEFAULT_MAX_ENTRIES)


def _add_status_arguments(sub):
    _add_base_arguments(sub)
    sub.add_argument("--json", action="store_true", help="machine-readable output")


def _add_ls_arguments(sub):
    sub.add_argument("target", help="an archive (BASE/logs.zip), or a base directory")
    sub.add_argument("archive", nargs="?", default=None,
                     help="with a base: the archive path in it, like 'logs.zip' or "
                     "'sub/name.zip'")
    sub.add_argument("--prefix", default="", metavar="P",
                     help="only members whose names start with P")
    sub.add_argument("--pending", action="store_true",
                     help="with a base: also list files still in temp zips in inbox/")
    shape = sub.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true",
                       help="one JSON object per line (name, size, compressed_size, crc, "
                       "mode, mtime, date_time, archive, pending)")
    shape.add_argument("-1", dest="names_only", action="store_true",
                       help="names only, one per line, like 'zipinfo -1'")
    sub.add_argument("--versions", action="store_true",
                     help="every copy of each name (a name written again with other content "
                     "is kept as NAME.~N~): the name, where it is stored, size, CRC, time, "
                     "and who wrote it (host, pid, scheduler job ids)")


def _add_missing_arguments(sub):
    sub.add_argument("base", help="the base directory")
    sub.add_argument("archive", help="the archive path in it, like 'results.zip' (its whole "
                     "series, and what is pending for it in inbox/)")
    sub.add_argument("--expect", action="append", default=[], metavar="PATTERN",
                     help="the names expected, as a bash brace pattern: 'out/{000..999}.json', "
                     "'{a,b}/{0..9}.log'; repeatable")
    sub.add_argument("--expect-file", metavar="FILE",
                     help="also the names in FILE, one per line, as they are")
    shape = sub.add_mutually_exclusive_group()
    shape.add_argument("--array", action="store_true",
                       help="print the values of the first numeric range of the missing "
                       "names in sbatch --array syntax (3,17,50-52)")
    shape.add_argument("--json", action="store_true",
                       help="one JSON object: counts, the missing names, the array")


def _add_cat_arguments(sub):
    sub.add_argument("target", help="an archive (BASE/logs.zip), or a base directory")
    sub.add_argument("member", help="the member's name in the archive, as 'rear ls' "
                     "lists it; with a base: its full path, like 'logs.zip/task-17/out.txt'")
    sub.add_argument("--version", type=_version_arg, default=None, metavar="first|last|N",
                     help="which copy of a name written more than once: the first (default, "
                     "the plain name), the last, or the one stored as NAME.~N~")


def _version_arg(text):
    if text in ("first", "last"):
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError("%r is not a version: give first, last or a copy number "
                                     "N >= 1 (the copy stored as NAME.~N~)" % text)


def _add_verify_arguments(sub):
    sub.add_argument("path", help="a base directory (every archive under it) or one archive")


def _add_demo_arguments(sub):
    sub.add_argument("dir", nargs="?", default=None,
                     help="where to put the demo base and keep its archives (default: a "
                     "temporary directory, removed at the end)")
    sub.add_argument("--workers", type=_positive_int, default=4, metavar="N",
                     help="worker processes (default 4)")
    sub.add_argument("--files", type=_positive_int, default=2000, metavar="N",
                     help="files per worker (default 2000)")


#: Every subcommand, in the order ``rear --help`` lists them.
_COMMANDS = (
    _Command("scavenge", "move entries from temp zips into the final archives",
             "rear scavenge /scratch/run42 --flush", _add_scavenge_arguments,
             _cmd_scavenge, commits=True),
    _Command("status", "show temp zips, interrupted commits and archives",
             "rear status /scratch/run42 --json", _add_status_arguments,
             _cmd_status),
    _Command("ls", "list an archive's members like 'unzip -l', streaming; given a base "
             "and an archive path, the whole series name.zip, name.~1~.zip, ...",
             "rear ls /scratch/run42 logs.zip --pending", _add_ls_arguments,
             _cmd_ls),
    _Command("cat", "write one member to stdout, CRC-checked: from an archive, or from "
             "a base's series and, failing that, its inbox (not scavenged yet)",
             "rear cat /scratch/run42 logs.zip/task-17/out.txt", _add_cat_arguments,
             _cmd_cat),
    _Command("missing", "name the expected files a campaign has not produced: neither "
             "archived nor pending (exit 3 if any)",
             "rear missing /scratch/run42 results.zip --expect 'out/{0..999}.json' "
             "--array  (sbatch --array=$(...) job.sbatch resubmits them)",
             _add_missing_arguments, _cmd_missing),
    _Command("verify", "CRC-check every member of an archive or of every archive "
             "under a base", "rear verify /scratch/run42", _add_verify_arguments,
             _cmd_verify),
    _Command("recover", "roll back interrupted commits and salvage temp zips of dead "
             "writers", "rear recover /scratch/run42", _add_base_arguments,
             _cmd_recover, commits=True),
    _Command("demo", "several workers write thousands of files, a scavenger collects "
             "them, everything is verified", "rear demo /tmp/rear-demo",
             _add_demo_arguments, _cmd_demo),
)


def _build_parser():
    parser = argparse.ArgumentParser(
        prog="rear", description="Remote Archiver: safely collect many small output files "
        "into zip archives on a shared filesystem.", epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version="rear " + __version__)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for command in _COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help,
                                    epilog="example: " + command.example,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        verbosity = sub.add_mutually_exclusive_group()
        verbosity.add_argument("-v", "--verbose", action="store_true", help="log more")
        verbosity.add_argument("-q", "--quiet", action="store_true", help="print only errors")
        command.add_arguments(sub)
        sub.set_defaults(command_entry=command)
    return parser


def _configure_logging(args):
    level = logging.WARNING
    if getattr(args, "verbose", False):
        level = logging.INFO
    elif getattr(args, "quiet", False):
        level = logging.ERROR
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("rear: %(levelname)s: %(message)s"))
    handler.addFilter(_not_reported)
    _log.addHandler(handler)
    _log.setLevel(level)
    return handler


def _run_command(args):
    handler = _configure_logging(args)
    try:
        return args.command_entry.run(args)
    except BrokenPipeError:
        # 'rear ls | head': the reader went away; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (RearError, ValueError, OSError) as err:
        sys.stderr.write("rear: error: %s\n" % err)
        return 1
    except KeyboardInterrupt:
        if args.command_entry.commits:
            sys.stderr.write("rear: interrupted; %s; nothing acknowledged is lost: run the "
                             "command again to finish\n" % _interrupted_commits(args.base))
        else:     # ls, cat, status, verify only read; demo's base is its own
            sys.stderr.write("rear: interrupted\n")
        return 1
    finally:
        _log.removeHandler(handler)


def _interrupted_commits(base):
    """What Ctrl-C left of the commits under ``base``, said as it is."""
    try:
        names = os.listdir(os.path.join(os.path.abspath(_base_or_env(base)), _INBOX,
                                        _ARCHIVES_DIR))
    except (OSError, ValueError):
        names = []
    base = os.path.abspath(_base_or_env(base)) if names else None
    # Ours only: a commit another process holds the lock of (one we were
    # waiting for) is not.  Ours were released on the way out.
    names = [name for name in names if name.endswith((_COMMIT_SUFFIX, _JOURNAL_SUFFIX))
             and not _lock_holder(_ArchivePaths(base, key=name.rsplit(".", 1)[0]))]
    if any(name.endswith(_COMMIT_SUFFIX) for name in names):
        return ("a commit had passed its commit point: its entries are in the archive, and "
                "the next run finishes it")
    if any(name.endswith(_JOURNAL_SUFFIX) for name in names):
        return ("a commit stopped before its commit point: the next run (or 'rear recover') "
                "rolls it back")
    return "a commit in progress, if any, was rolled back"


def main(argv=None):
    """The ``rear`` command; returns the exit code (0 ok, 1 failures, 2 usage,
    3 not finished)."""
    try:
        parser = _build_parser()
        args = parser.parse_args(argv)
        _require_base(parser, args)
    except KeyboardInterrupt:     # before anything ran: nothing to say but that
        sys.stderr.write("rear: interrupted before it started; nothing was done\n")
        return 1
    return _run_command(args)


def _require_base(parser, args):
    """No base and no $REAR_BASE is a usage error (exit 2), said before anything runs."""
    if getattr(args, "base", "") is None and not os.environ.get("REAR_BASE"):
        parser.error("%s: no base directory given and REAR_BASE is not set; give the base "
                     "directory" % (getattr(args, "command", None) or parser.prog))


def legacy_main(argv=None):
    """``rear-scavenger -d BASE [--flush] [--rotation S]``, as in rear 0.1:
    the same as ``rear scavenge``."""
    parser = argparse.ArgumentParser(prog="rear-scavenger",
                                     description="Run one scavenger pass (rear 0.1 style); "
                                     "the same as 'rear scavenge'.")
    parser.add_argument("-d", "--directory", dest="base", default=None,
                        help="base directory (default: $REAR_BASE)")
    parser.add_argument("--flush", action="store_true",
                        help="also salvage unsealed temp zips of dead writers now")
    parser.add_argument("--rotation", type=_rotation_arg, default=None, metavar="S",
                        help="workers' rotation span in seconds (default: $REAR_ROTATION "
                        "or 300)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    args = parser.parse_args(argv)
    _require_base(parser, args)
    return main(["scavenge"] + (["--flush"] if args.flush else [])
                + (["--quiet"] if args.quiet else [])
                + (["--rotation", repr(args.rotation)] if args.rotation is not None else [])
                + ([args.base] if args.base is not None else []))


if __name__ == "__main__":
    sys.exit(main())
