"""A throwaway GlusterFS volume on loopback, mounted twice: two clients.

Used by test_netfs.py; also a script for poking at it by hand (as root)::

    python gluster_harness.py up /tmp/gl        # prints the four mount points
    python gluster_harness.py down /tmp/gl      # stops and removes everything

One glusterd with its own volfile and working directory, two single-brick
volumes, each FUSE-mounted twice (two mounts stand in for two nodes):

``default``  Gluster's default client caching, what users get;
``nocache``  the performance translators off and the kernel's attribute,
             entry and negative caches at 0: changes seen at once.

Everything started is recorded in ``<workdir>/harness.json`` (pids, mount
points) as soon as it starts, and ``down`` removes exactly that, so a crashed
test run is cleaned up by the next one.  Needs root, /dev/fuse and Debian's
glusterfs-server and glusterfs-client.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

GLUSTERD_PORT = 24007
VOLUMES = ("default", "nocache")
#: Gluster's client-side caches (performance translators), turned off for
#: the ``nocache`` volume.
PERFORMANCE_TRANSLATORS = ("quick-read", "stat-prefetch", "open-behind", "io-cache",
                           "read-ahead", "readdir-ahead", "nl-cache", "write-behind")
MOUNT_OPTIONS = {"default": None,
                 "nocache": "attribute-timeout=0,entry-timeout=0,negative-timeout=0"}
VOLFILE = """volume management
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


def unavailable_reason():
    """Why a volume cannot be brought up here, or None if it can."""
    if os.geteuid() != 0:
        return "GlusterFS needs root (glusterd, mount)"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse for the GlusterFS FUSE client"
    for tool in ("glusterd", "gluster", "mount.glusterfs"):
        if shutil.which(tool) is None and not os.path.exists("/sbin/" + tool):
            return ("%s is not installed (apt-get install glusterfs-server "
                    "glusterfs-client)" % tool)
    return None


def _run(*command, check=True, timeout=120):
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=timeout)
    if check and result.returncode:
        raise RuntimeError("%s failed (exit %d): %s" % (" ".join(command), result.returncode,
                                                        result.stdout.strip()))
    return result.stdout


def _port_is_free(port):
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


class Cluster:
    """glusterd, the two volumes and their four mounts under ``workdir``."""

    def __init__(self, workdir):
        self.workdir = os.path.abspath(workdir)
        self.record_path = os.path.join(self.workdir, "harness.json")
        self.mounts = {}     # volume -> [mount a, mount b]
        self.record = {"pids": [], "mounts": [], "volumes": []}

    # -- bookkeeping: written before each step, so `down` knows what to undo

    def _save(self):
        with open(self.record_path + ".tmp", "w") as handle:
            json.dump(self.record, handle)
        os.replace(self.record_path + ".tmp", self.record_path)

    def up(self):
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        if os.path.exists(self.record_path):
            down(self.workdir)   # what a crashed run left
        if not _port_is_free(GLUSTERD_PORT):
            raise RuntimeError("port %d is taken: another glusterd runs here; stop it "
                               "(or run 'python gluster_harness.py down DIR')" % GLUSTERD_PORT)
        os.makedirs(os.path.join(self.workdir, "glusterd"), exist_ok=True)
        self._save()
        volfile = os.path.join(self.workdir, "glusterd.vol")
        with open(volfile, "w") as handle:
            handle.write(VOLFILE.format(workdir=self.workdir, port=GLUSTERD_PORT))
        pidfile = os.path.join(self.workdir, "glusterd.pid")
        _run("glusterd", "-f", volfile, "-p", pidfile,
             "-l", os.path.join(self.workdir, "glusterd.log"))
        self.record["pids"].append(int(_wait_for_file(pidfile)))
        self._save()
        _wait_for(lambda: _run("gluster", "--mode=script", "pool", "list",
                               check=False).startswith("UUID"), "glusterd to answer")
        host = socket.gethostname()   # gluster refuses localhost as a brick host
        tag = os.path.basename(self.workdir).replace(".", "-")[-20:] or "rear"
        for volume in VOLUMES:
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
            self.mounts[volume] = []
            for client in ("a", "b"):
                point = os.path.join(self.workdir, "mnt-%s-%s" % (volume, client))
                os.makedirs(point, exist_ok=True)
                self.record["mounts"].append(point)
                self._save()
                command = ["mount", "-t", "glusterfs"]
                if MOUNT_OPTIONS[volume]:
                    command += ["-o", MOUNT_OPTIONS[volume]]
                _wait_for(lambda: _try_mount(command + ["127.0.0.1:/" + name, point]),
                          "%s to mount" % name)
                self.mounts[volume].append(point)
        self._save()
        return self.mounts

    def down(self):
        down(self.workdir)


def _try_mount(command):
    return subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT).returncode == 0


def _wait_for_file(path, timeout=30):
    _wait_for(lambda: os.path.exists(path) and open(path).read().strip(), path, timeout)
    return open(path).read().strip()


def _wait_for(condition, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for %s" % what)
        time.sleep(0.2)


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


def down(workdir):
    """Undo everything ``up`` recorded under ``workdir``; never raises."""
    workdir = os.path.abspath(workdir)
    record_path = os.path.join(workdir, "harness.json")
    try:
        with open(record_path) as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        record = {"pids": [], "mounts": [], "volumes": []}
    for point in record["mounts"]:
        if os.path.ismount(point):
            if subprocess.run(["umount", point], stderr=subprocess.DEVNULL).returncode:
                subprocess.run(["umount", "-l", point], stderr=subprocess.DEVNULL)
    for volume in record["volumes"]:
        subprocess.run(["gluster", "--mode=script", "volume", "stop", volume, "force"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        subprocess.run(["gluster", "--mode=script", "volume", "delete", volume],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    # glusterd itself, then anything still serving our bricks or mounts
    # (a brick process outlives a glusterd killed mid-test).
    pids = list(record["pids"]) + _processes_mentioning(workdir)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + 10
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(0.1)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("workdir")
    args = parser.parse_args(argv)
    if args.action == "down":
        down(args.workdir)
        return 0
    cluster = Cluster(args.workdir)
    try:
        mounts = cluster.up()
    except BaseException:
        cluster.down()
        raise
    for volume, points in mounts.items():
        print("%s: %s" % (volume, " ".join(points)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
