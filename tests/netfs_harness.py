"""Throwaway distributed filesystems on this machine, each mounted by two
FUSE clients that stand in for two nodes: GlusterFS, CephFS and MooseFS.

Used by test_netfs.py; also a script for poking at them by hand (as root)::

    python tests/netfs_harness.py up cephfs /tmp/ceph     # prints the mount points
    python tests/netfs_harness.py down /tmp/ceph          # stops and removes everything

``glusterfs``  one glusterd, two single-brick volumes on loopback:
               ``default`` (Gluster's client caching, what users get) and
               ``nocache`` (performance translators off, kernel caches at 0).
``cephfs``     one mon, one mgr, one memstore OSD, one MDS (pool size 1, no
               auth) on loopback ports; stock MDS and client settings.
``moosefs``    a master and one chunkserver in a network namespace of its own
               (the chunkserver refuses loopback addresses, and test traffic
               must not leave this machine); the clients are started inside
               that namespace with ``nsenter --net`` only, so their mounts
               stay visible to every process of the host.

Each ``up`` returns {mode: [mount A, mount B]}; ``mount_client`` adds a
further client (the one a node-crash test kills with ``kill_client``).
Everything started is recorded in ``<workdir>/harness.json`` before it
starts (pids with their start times, mounts, volumes, the namespace), and
``down`` undoes exactly that, never a process whose pid was reused, so a
crashed test run is cleaned up by the next one.  Needs root, /dev/fuse and
the Debian packages each ``unavailable_reason`` names.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

#: name -> (tools that must be installed, the Debian packages that have them)
REQUIREMENTS = {
    "glusterfs": (("glusterd", "gluster", "mount.glusterfs"),
                  "glusterfs-server glusterfs-client"),
    "cephfs": (("ceph-mon", "ceph-mgr", "ceph-osd", "ceph-mds", "ceph-fuse", "ceph"),
               "ceph-mon ceph-mgr ceph-osd ceph-mds ceph-fuse ceph-common"),
    "moosefs": (("mfsmaster", "mfschunkserver", "mfsmount", "nsenter", "ip"),
                "moosefs-master moosefs-chunkserver moosefs-client"),
}
#: How long the step-by-step waits of ``up`` may take before it gives up.
START_TIMEOUT = 120


def unavailable_reason(filesystem):
    """Why ``filesystem`` cannot be brought up here, or None if it can."""
    if os.geteuid() != 0:
        return "%s needs root (its daemons, FUSE mounts)" % filesystem
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse for the %s FUSE clients" % filesystem
    tools, packages = REQUIREMENTS[filesystem]
    for tool in tools:
        if shutil.which(tool) is None and not os.path.exists("/sbin/" + tool):
            return "%s is not installed (apt-get install %s)" % (tool, packages)
    return None


# ---------------------------------------------------------------- helpers


def _run(*command, check=True, timeout=120, env=None):
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=timeout, env=env)
    if check and result.returncode:
        raise RuntimeError("%s failed (exit %d): %s" % (" ".join(command), result.returncode,
                                                        result.stdout.strip()))
    return result.stdout


def _succeeds(*command, env=None):
    try:
        return subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=30, env=env).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _wait_for(condition, what, timeout=START_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for %s" % what)
        time.sleep(0.2)


def _start_time(pid):
    """The kernel's start time of ``pid`` (field 22 of /proc/PID/stat), or
    None if it is gone: with the pid it names one process, never a reuse."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":   # a child of ours that died: reap it, it is gone
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return None
    return int(fields[19])


def _alive(pid, start_time):
    return start_time is not None and _start_time(pid) == start_time


def _port_is_free(port, host="127.0.0.1"):
    with socket.socket() as probe:
        return probe.connect_ex((host, port)) != 0


def _processes_mentioning(text):
    """Pids of processes whose command line contains ``text``."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open("/proc/%s/cmdline" % entry, "rb") as handle:
                    if text.encode() in handle.read():
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def _unmount(point):
    """Unmount ``point``; lazily if its FUSE daemon is dead or hangs."""
    if _is_mounted(point):
        if not _succeeds("umount", point):
            _succeeds("umount", "-l", point)


def _is_mounted(point):
    """From /proc/mounts: os.path.ismount fails (ENOTCONN) on a dead FUSE mount."""
    with open("/proc/mounts") as handle:
        return any(line.split()[1] == point for line in handle)


def _stop(pids, grace=5.0):
    """SIGTERM [(pid, start time)], SIGKILL what is left after ``grace`` s."""
    for pid, start_time in pids:
        if _alive(pid, start_time):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for pid, start_time in pids:
        while _alive(pid, start_time) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid, start_time):
            os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------- the common part


class Cluster:
    """One filesystem's daemons and mounts under ``workdir``."""

    name = None

    def __init__(self, workdir):
        self.workdir = os.path.abspath(workdir)
        self.record_path = os.path.join(self.workdir, "harness.json")
        self.record = {"filesystem": self.name, "pids": [], "mounts": [], "volumes": [],
                       "netns": None}
        self.mounts = {}     # mode -> [mount A, mount B]
        self.processes = []  # the Popen objects of what _start started

    def _save(self):
        with open(self.record_path + ".tmp", "w") as handle:
            json.dump(self.record, handle)
        os.replace(self.record_path + ".tmp", self.record_path)

    def _begin(self):
        reason = unavailable_reason(self.name)
        if reason:
            raise RuntimeError(reason)
        if os.path.exists(self.record_path):
            down(self.workdir)   # what a crashed run left
        os.makedirs(os.path.join(self.workdir, "log"), exist_ok=True)
        self._save()

    def _start(self, label, command, env=None):
        """Start a daemon in the foreground of a session of its own; its pid
        (and start time) is recorded at once."""
        log = open(os.path.join(self.workdir, "log", label + ".out"), "ab")
        try:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True,
                                       env=env)
        finally:
            log.close()
        self.processes.append(process)
        self.record["pids"].append([process.pid, _start_time(process.pid), label])
        self._save()
        return process.pid

    def _new_mount_point(self, label):
        point = os.path.join(self.workdir, "mnt-" + label)
        os.makedirs(point, exist_ok=True)
        self.record["mounts"].append(point)
        self._save()
        return point

    def up(self):
        raise NotImplementedError

    def mount_client(self, label):
        """Mount one more client (``label`` names it); returns its mount point."""
        raise NotImplementedError

    def client_pid(self, point):
        """The pid of the FUSE daemon serving ``point``."""
        pids = [pid for pid in _processes_mentioning(point)
                if _comm(pid) in ("ceph-fuse", "mfsmount", "glusterfs")]
        if len(pids) != 1:
            raise RuntimeError("expected one FUSE client process for %s, found %r"
                               % (point, pids))
        return pids[0]

    def kill_client(self, point):
        """A node crash as the cluster sees it: SIGKILL the FUSE daemon of
        ``point`` (every process still using the mount gets ENOTCONN)."""
        pid = self.client_pid(point)
        os.kill(pid, signal.SIGKILL)
        return pid

    def down(self):
        down(self.workdir)

    @classmethod
    def attach(cls, workdir):
        """The cluster an earlier ``up`` (maybe of another process) left
        running under ``workdir``."""
        cluster = FILESYSTEMS[_load_record(workdir)["filesystem"]](workdir)
        cluster.record = _load_record(workdir)
        return cluster


def _comm(pid):
    try:
        with open("/proc/%d/comm" % pid) as handle:
            return handle.read().strip()
    except OSError:
        return None


def _load_record(workdir):
    with open(os.path.join(os.path.abspath(workdir), "harness.json")) as handle:
        return json.load(handle)


def down(workdir):
    """Undo everything ``up`` recorded under ``workdir``; never raises."""
    workdir = os.path.abspath(workdir)
    try:
        record = _load_record(workdir)
    except (OSError, ValueError):
        record = {"pids": [], "mounts": [], "volumes": [], "netns": None}
    for point in record["mounts"]:
        _unmount(point)
    for volume in record["volumes"]:
        for action in (("stop", volume, "force"), ("delete", volume)):
            try:
                subprocess.run(("gluster", "--mode=script", "volume") + action,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                pass
    # Newest first (clients before servers).  Then what our daemons started
    # themselves and recorded nowhere (Gluster's brick and client processes),
    # found by the working directory on their command lines.
    pids = [(pid, start_time) for pid, start_time, _label in reversed(record["pids"])]
    pids += [(pid, _start_time(pid)) for pid in _processes_mentioning(workdir)
             if pid not in {known for known, _start in pids}]
    try:
        _stop(pids)
    except OSError:
        pass
    for point in record["mounts"]:   # a client that was still busy at the first try
        _unmount(point)
    if record.get("netns"):
        _succeeds("ip", "netns", "del", record["netns"])
    if any(_is_mounted(point) for point in record["mounts"]):
        return   # never rm -rf through a live mount
    shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------- GlusterFS


GLUSTERD_PORT = 24007
GLUSTER_VOLUMES = ("default", "nocache")
#: Gluster's client-side caches (performance translators), turned off for
#: the ``nocache`` volume.
PERFORMANCE_TRANSLATORS = ("quick-read", "stat-prefetch", "open-behind", "io-cache",
                           "read-ahead", "readdir-ahead", "nl-cache", "write-behind")
GLUSTER_MOUNT_OPTIONS = {"default": None,
                         "nocache": "attribute-timeout=0,entry-timeout=0,negative-timeout=0"}
GLUSTERD_VOLFILE = """volume management
    type mgmt/glusterd
    option working-directory {workdir}/glusterd
    option transport-type socket
    option transport.socket.bind-address 127.0.0.1
    option transport.socket.listen-port {port}
    option base-port 49152
    option max-port 49251
    option ping-timeout 0
end-volume
"""


class GlusterCluster(Cluster):
    name = "glusterfs"

    def up(self):
        self._begin()
        if not _port_is_free(GLUSTERD_PORT):
            raise RuntimeError("port %d is taken: another glusterd runs here; stop it "
                               "(or run 'python tests/netfs_harness.py down DIR')" % GLUSTERD_PORT)
        os.makedirs(os.path.join(self.workdir, "glusterd"), exist_ok=True)
        volfile = os.path.join(self.workdir, "glusterd.vol")
        with open(volfile, "w") as handle:
            handle.write(GLUSTERD_VOLFILE.format(workdir=self.workdir, port=GLUSTERD_PORT))
        self._start("glusterd", ["glusterd", "-N", "-f", volfile, "-p",
                                 os.path.join(self.workdir, "glusterd.pid"),
                                 "-l", os.path.join(self.workdir, "log", "glusterd.log")])
        _wait_for(lambda: _run("gluster", "--mode=script", "pool", "list",
                               check=False).startswith("UUID"), "glusterd to answer")
        host = socket.gethostname()   # gluster refuses localhost as a brick host
        tag = os.path.basename(self.workdir).replace(".", "-")[-20:] or "rear"
        self.volumes = {}
        for volume in GLUSTER_VOLUMES:
            name = "rear-%s-%s" % (volume, tag)
            brick = os.path.join(self.workdir, "bricks", volume)
            os.makedirs(brick, exist_ok=True)
            self.record["volumes"].append(name)
            self._save()
            _run("gluster", "--mode=script", "volume", "create", name,
                 "%s:%s" % (host, brick), "force")
            if volume == "nocache":
                for translator in PERFORMANCE_TRANSLATORS:
                    _run("gluster", "--mode=script", "volume", "set", name,
                         "performance." + translator, "off")
            _run("gluster", "--mode=script", "volume", "start", name)
            self.volumes[volume] = name
            self.mounts[volume] = [self._mount(volume, "%s-%s" % (volume, client))
                                   for client in ("a", "b")]
        return self.mounts

    def _mount(self, volume, label):
        point = self._new_mount_point(label)
        command = ["mount", "-t", "glusterfs"]
        if GLUSTER_MOUNT_OPTIONS[volume]:
            command += ["-o", GLUSTER_MOUNT_OPTIONS[volume]]
        command += ["127.0.0.1:/" + self.volumes[volume], point]
        _wait_for(lambda: _succeeds(*command), "%s to mount" % self.volumes[volume])
        return point

    def mount_client(self, label, volume="default"):
        return self._mount(volume, label)


# ---------------------------------------------------------------- CephFS


CEPH_MON_PORTS = (13300, 16789)          # msgr v2, v1
CEPH_DAEMON_PORTS = (16800, 16899)
#: The OSD keeps its data in RAM (memstore): the tests write well under this.
CEPH_MEMSTORE_BYTES = 1 << 30
CEPH_CONF = """[global]
fsid = {fsid}
mon_host = [v2:127.0.0.1:{mon_v2},v1:127.0.0.1:{mon_v1}]
public_addr = 127.0.0.1
ms_bind_port_min = {port_min}
ms_bind_port_max = {port_max}
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
keyring = {root}/keyring
admin_socket = {root}/run/$cluster-$name.asok
log_file = {root}/log/$cluster-$name.log
run_dir = {root}/run
crash_dir = {root}/run/crash
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 2
mon_data_avail_crit = 1
ms_async_op_threads = 2
[mon]
mon_data = {root}/mon/$cluster-$id
mon_cluster_log_file = {root}/log/$cluster.cluster.log
[mgr]
mgr_data = {root}/mgr/$cluster-$id
mgr_initial_modules =
[osd]
osd_data = {root}/osd/$cluster-$id
osd_objectstore = memstore
memstore_device_bytes = {memstore}
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1
[mds]
mds_data = {root}/mds/$cluster-$id
mds_cache_memory_limit = 268435456
"""


class CephCluster(Cluster):
    name = "cephfs"

    def __init__(self, workdir):
        super().__init__(workdir)
        self.conf = os.path.join(self.workdir, "ceph.conf")
        self.env = dict(os.environ, CEPH_CONF=self.conf)

    def up(self):
        self._begin()
        for port in CEPH_MON_PORTS:
            if not _port_is_free(port):
                raise RuntimeError("port %d is taken: another Ceph monitor runs here; stop "
                                   "it (or run 'python tests/netfs_harness.py down DIR')" % port)
        root = self.workdir
        for directory in ("mon/ceph-a", "mgr/ceph-x", "mds/ceph-a", "run"):
            os.makedirs(os.path.join(root, directory), exist_ok=True)
        fsid = str(uuid.uuid4())
        with open(self.conf, "w") as handle:
            handle.write(CEPH_CONF.format(fsid=fsid, root=root, mon_v2=CEPH_MON_PORTS[0],
                                          mon_v1=CEPH_MON_PORTS[1],
                                          port_min=CEPH_DAEMON_PORTS[0],
                                          port_max=CEPH_DAEMON_PORTS[1],
                                          memstore=CEPH_MEMSTORE_BYTES))
        keyring = os.path.join(root, "keyring")
        _run("ceph-authtool", "--create-keyring", keyring, "--gen-key", "-n", "mon.",
             "--cap", "mon", "allow *", env=self.env)
        monmap = os.path.join(root, "monmap")
        _run("monmaptool", "--create", "--fsid", fsid, "--addv", "a",
             "[v2:127.0.0.1:%d,v1:127.0.0.1:%d]" % CEPH_MON_PORTS, "--enable-all-features",
             "--set-min-mon-release", "pacific", monmap, env=self.env)
        _run("ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap, "--keyring", keyring,
             env=self.env)
        self._start("mon.a", ["ceph-mon", "-f", "-i", "a"], env=self.env)
        _wait_for(lambda: self._ceph_succeeds("mon", "stat"), "the Ceph monitor")
        self._start("mgr.x", ["ceph-mgr", "-f", "-i", "x"], env=self.env)
        osd_uuid = str(uuid.uuid4())
        osd = self._ceph("osd", "new", osd_uuid).strip()
        os.makedirs(os.path.join(root, "osd", "ceph-" + osd), exist_ok=True)
        _run("ceph-osd", "-i", osd, "--mkfs", "--osd-uuid", osd_uuid, env=self.env)
        self._start("osd." + osd, ["ceph-osd", "-f", "-i", osd], env=self.env)
        _wait_for(lambda: json.loads(self._ceph("osd", "stat", "-f", "json"))
                  ["num_up_osds"] == 1, "the Ceph OSD")
        self._ceph("osd", "pool", "create", "cephfs_metadata", "8", "8")
        self._ceph("osd", "pool", "create", "cephfs_data", "8", "8")
        self._ceph("fs", "new", "cephfs", "cephfs_metadata", "cephfs_data")
        self._start("mds.a", ["ceph-mds", "-f", "-i", "a"], env=self.env)
        _wait_for(lambda: "up:active" in self._ceph("mds", "stat", check=False),
                  "the Ceph MDS")
        self.mounts["default"] = [self.mount_client("a"), self.mount_client("b")]
        return self.mounts

    def _ceph(self, *arguments, check=True):
        return _run("ceph", *arguments, check=check, timeout=60, env=self.env)

    def _ceph_succeeds(self, *arguments):
        return _succeeds("timeout", "10", "ceph", *arguments, env=self.env)

    def mount_client(self, label):
        point = self._new_mount_point(label)
        self._start("client." + label, ["ceph-fuse", "-f", "--id", label,
                                        "--client_mountpoint", "/", point], env=self.env)
        _wait_for(lambda: _is_mounted(point), "ceph-fuse to mount %s" % point)
        os.stat(point)   # opens the client's MDS session
        return point

    def sessions(self):
        """The MDS's client sessions (``ceph tell mds.a client ls``)."""
        return json.loads(self._ceph("tell", "mds.a", "client", "ls"))


# ---------------------------------------------------------------- MooseFS


MFS_ADDRESS = "10.77.0.1"
MFS_PORT_BASE = 19419      # master: +0 metalogger, +1 chunkservers, +2 clients; +3 chunkserver
#: How long the master keeps a vanished client's session, and its locks:
#: MooseFS's default (a day), what users get unless they change it.
MFS_SESSION_SUSTAIN = 86400
MFS_MASTER_CFG = """WORKING_USER = root
WORKING_GROUP = root
SYSLOG_IDENT = rear-mfsmaster
DATA_PATH = {root}/master
EXPORTS_FILENAME = {root}/mfsexports.cfg
TOPOLOGY_FILENAME = {root}/mfstopology.cfg
MATOML_LISTEN_HOST = {ip}
MATOML_LISTEN_PORT = {port}
MATOCS_LISTEN_HOST = {ip}
MATOCS_LISTEN_PORT = {port_cs}
MATOCL_LISTEN_HOST = {ip}
MATOCL_LISTEN_PORT = {port_cl}
SESSION_SUSTAIN_TIME = {sustain}
"""
MFS_CHUNKSERVER_CFG = """WORKING_USER = root
WORKING_GROUP = root
SYSLOG_IDENT = rear-mfschunkserver
DATA_PATH = {root}/chunkserver
HDD_CONF_FILENAME = {root}/mfshdd.cfg
HDD_LEAVE_SPACE_DEFAULT = 256MiB
BIND_HOST = {ip}
MASTER_HOST = {ip}
MASTER_PORT = {port_cs}
CSSERV_LISTEN_HOST = {ip}
CSSERV_LISTEN_PORT = {port_chunks}
"""


class MooseCluster(Cluster):
    name = "moosefs"

    def __init__(self, workdir, session_sustain=MFS_SESSION_SUSTAIN):
        super().__init__(workdir)
        self.session_sustain = session_sustain

    def up(self):
        self._begin()
        root = self.workdir
        # A namespace of its own: its loopback carries MFS_ADDRESS, and its
        # ports cannot collide with anything else on this machine.
        self.record["netns"] = "rear-mfs-%d" % os.getpid()
        self._save()
        _run("ip", "netns", "add", self.record["netns"])
        _run(*self.in_netns, "ip", "link", "set", "lo", "up")
        _run(*self.in_netns, "ip", "addr", "add", MFS_ADDRESS + "/32", "dev", "lo")
        for directory in ("master", "chunkserver", "hdd"):
            os.makedirs(os.path.join(root, directory), exist_ok=True)
        shutil.copy("/var/lib/mfs/metadata.mfs.empty",
                    os.path.join(root, "master", "metadata.mfs"))
        ports = dict(ip=MFS_ADDRESS, root=root, port=MFS_PORT_BASE,
                     port_cs=MFS_PORT_BASE + 1, port_cl=MFS_PORT_BASE + 2,
                     port_chunks=MFS_PORT_BASE + 3, sustain=self.session_sustain)
        files = {"mfsexports.cfg": "%s / rw,alldirs,admin,maproot=0:0\n" % MFS_ADDRESS,
                 "mfstopology.cfg": "",
                 # negative: leave this much free on the filesystem underneath
                 "mfshdd.cfg": "%s/hdd -2GiB\n" % root,
                 "mfsmaster.cfg": MFS_MASTER_CFG.format(**ports),
                 "mfschunkserver.cfg": MFS_CHUNKSERVER_CFG.format(**ports)}
        for name, text in files.items():
            with open(os.path.join(root, name), "w") as handle:
                handle.write(text)
        self._start("mfsmaster", self.in_netns + [
            "mfsmaster", "-f", "-c", os.path.join(root, "mfsmaster.cfg"), "start"])
        _wait_for(lambda: self._listening(MFS_PORT_BASE + 2), "the MooseFS master")
        self._start("mfschunkserver", self.in_netns + [
            "mfschunkserver", "-f", "-c", os.path.join(root, "mfschunkserver.cfg"), "start"])
        _wait_for(lambda: self._listening(MFS_PORT_BASE + 3), "the MooseFS chunkserver")
        self.mounts["default"] = [self.mount_client("a"), self.mount_client("b")]
        # The chunkserver has registered once the filesystem reports space.
        _wait_for(lambda: os.statvfs(self.mounts["default"][0]).f_bavail > 0,
                  "the MooseFS chunkserver to register")
        return self.mounts

    @property
    def in_netns(self):
        """The command prefix that runs a program in the namespace's network."""
        return ["nsenter", "--net=/var/run/netns/" + self.record["netns"]]

    def _listening(self, port):
        command = self.in_netns + ["ss", "-Hltn", "( sport = :%d )" % port]
        return bool(_run(*command, check=False).strip())

    def mount_client(self, label):
        point = self._new_mount_point(label)
        self._start("mfsmount." + label, self.in_netns + [
            "mfsmount", "-f", "-o", "mfsmaster=%s,mfsport=%d" % (MFS_ADDRESS,
                                                                MFS_PORT_BASE + 2), point])
        _wait_for(lambda: _is_mounted(point), "mfsmount to mount %s" % point)
        return point


FILESYSTEMS = {cluster.name: cluster for cluster in (GlusterCluster, CephCluster, MooseCluster)}


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="action", required=True)
    up_parser = commands.add_parser("up", help="bring a filesystem up, print its mounts")
    up_parser.add_argument("filesystem", choices=sorted(FILESYSTEMS))
    up_parser.add_argument("workdir")
    down_parser = commands.add_parser("down", help="stop and remove what 'up' started")
    down_parser.add_argument("workdir")
    args = parser.parse_args(argv)
    if args.action == "down":
        down(args.workdir)
        return 0
    cluster = FILESYSTEMS[args.filesystem](args.workdir)
    try:
        mounts = cluster.up()
    except BaseException:
        cluster.down()
        raise
    for mode, points in mounts.items():
        print("%s: %s" % (mode, " ".join(points)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
