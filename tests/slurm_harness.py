"""A throwaway single-node SLURM (munged, slurmctld, slurmd) on this machine.

Used by test_schedulers.py; also a script for poking at it by hand (as root)::

    python tests/slurm_harness.py up /tmp/slurm      # prints the partition when idle
    python tests/slurm_harness.py down /tmp/slurm    # stops exactly what 'up' started

Every daemon started is recorded in ``<workdir>/harness.json`` (pid and its
start time, so that a reused pid is never hit) as soon as it runs, and
``down`` stops exactly those, cancels the jobs and puts /etc/slurm/slurm.conf
back as it was.  ProctrackType=proctrack/linuxproc, as on many small
clusters: a task that ignores SIGTERM outlives its job.  Needs root and
Debian's slurm-wlm and munge (slurm-wlm 22.05: up in about 5 s).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

SLURM_CONF = "/etc/slurm/slurm.conf"
#: A slurm.conf that was there before 'up', kept aside until 'down'.
SAVED_CONF = SLURM_CONF + ".before-rear-tests"
MUNGE_PID = "/run/munge/munged.pid"


def unavailable_reason():
    """Why SLURM cannot be brought up here, or None if it can."""
    if os.geteuid() != 0:
        return "a SLURM of our own needs root (slurmctld, slurmd, munged)"
    for tool in ("sbatch", "slurmctld", "slurmd", "munged", "scontrol"):
        if shutil.which(tool) is None and not os.path.exists("/usr/sbin/" + tool):
            return "%s is not installed (apt-get install slurm-wlm munge)" % tool
    return None


def _config(workdir):
    host = socket.gethostname().split(".")[0]
    return """ClusterName=reartests
SlurmctldHost={host}
SlurmUser=root
NodeName={host} CPUs={cpus} RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmctldPidFile={workdir}/slurmctld.pid
SlurmdPidFile={workdir}/slurmd.pid
StateSaveLocation={workdir}/state
SlurmdSpoolDir={workdir}/spool
SlurmctldLogFile={workdir}/slurmctld.log
SlurmdLogFile={workdir}/slurmd.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=3600
""".format(host=host, cpus=os.cpu_count() or 1, workdir=workdir)


def _start_time(pid):
    try:
        with open("/proc/%d/stat" % pid) as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _record(workdir, state, name, pid_file):
    for _attempt in range(100):
        try:
            pid = int(open(pid_file).read().strip())
        except (OSError, ValueError):
            time.sleep(0.1)
            continue
        state["daemons"].append({"name": name, "pid": pid, "start": _start_time(pid)})
        _save(workdir, state)
        return
    raise RuntimeError("%s did not start; see %s" % (name, workdir))


def _save(workdir, state):
    with open(os.path.join(workdir, "harness.json"), "w") as handle:
        json.dump(state, handle)


def up(workdir):
    """Start munged, slurmctld and slurmd; wait until the node is idle."""
    down(workdir)     # whatever a crashed run left
    for sub in ("state", "spool"):
        os.makedirs(os.path.join(workdir, sub), exist_ok=True)
    state = {"daemons": [], "saved_conf": False}
    _save(workdir, state)
    with open(os.path.join(workdir, "slurm.conf"), "w") as handle:
        handle.write(_config(workdir))
    os.makedirs(os.path.dirname(SLURM_CONF), exist_ok=True)
    if os.path.lexists(SLURM_CONF) and not os.path.islink(SLURM_CONF):
        os.replace(SLURM_CONF, SAVED_CONF)
        state["saved_conf"] = True
    if os.path.islink(SLURM_CONF):
        os.unlink(SLURM_CONF)
    os.symlink(os.path.join(workdir, "slurm.conf"), SLURM_CONF)
    _save(workdir, state)
    _start_munge(workdir, state)
    subprocess.run(["slurmctld", "-c"], check=True)
    _record(workdir, state, "slurmctld", os.path.join(workdir, "slurmctld.pid"))
    subprocess.run(["slurmd"], check=True)
    _record(workdir, state, "slurmd", os.path.join(workdir, "slurmd.pid"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
        if "idle" in result.stdout:
            return subprocess.run(["sinfo", "-h"], capture_output=True, text=True).stdout
        time.sleep(0.3)
    raise RuntimeError("the SLURM node never became idle; see %s" % workdir)


def _start_munge(workdir, state):
    if not os.path.exists("/etc/munge/munge.key") or not os.path.getsize("/etc/munge/munge.key"):
        subprocess.run(["mungekey", "--create"], check=True, capture_output=True)
    os.makedirs("/run/munge", exist_ok=True)
    subprocess.run(["chown", "-R", "munge:munge", "/run/munge", "/etc/munge"], check=False)
    if _daemon_running("munged"):
        return        # someone else's munged: used, never stopped by us
    with _suppress_missing():
        os.unlink(MUNGE_PID)
    subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True)
    _record(workdir, state, "munged", MUNGE_PID)


class _suppress_missing:
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        return exc_type is not None and issubclass(exc_type, FileNotFoundError)


def _daemon_running(name):
    return subprocess.run(["pgrep", "-x", name], capture_output=True).returncode == 0


def down(workdir):
    """Cancel every job, stop exactly the recorded daemons, restore slurm.conf."""
    path = os.path.join(workdir, "harness.json")
    try:
        state = json.load(open(path))
    except (OSError, ValueError):
        state = None
    if state is not None:
        subprocess.run(["scancel", "--user=root"], capture_output=True)
        for daemon in reversed(state["daemons"]):
            _stop(daemon)
    if os.path.islink(SLURM_CONF) and os.readlink(SLURM_CONF).startswith(workdir):
        os.unlink(SLURM_CONF)
    if os.path.exists(SAVED_CONF) and not os.path.lexists(SLURM_CONF):
        os.replace(SAVED_CONF, SLURM_CONF)
    shutil.rmtree(workdir, ignore_errors=True)


def _stop(daemon):
    pid = daemon["pid"]
    if _start_time(pid) != daemon["start"]:
        return      # gone, or the pid is someone else's now
    os.kill(pid, 15)
    for _attempt in range(50):
        if _start_time(pid) is None:
            return
        time.sleep(0.1)
    os.kill(pid, 9)


def job_state(job):
    """(state, exit code) of a job as slurmctld reports it: ('COMPLETED', '0:0')."""
    result = subprocess.run(["scontrol", "show", "job", str(job)], capture_output=True,
                            text=True)
    fields = dict(item.split("=", 1) for item in result.stdout.split() if "=" in item)
    return fields.get("JobState"), fields.get("ExitCode")


def wait_for(job, timeout=300):
    """Wait until ``job`` (every task of an array) has ended; its state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = subprocess.run(["squeue", "-h", "-j", str(job)], capture_output=True,
                                text=True)
        if result.returncode == 0 and not result.stdout.strip():
            return job_state(job)
        time.sleep(0.5)
    raise RuntimeError("job %s did not end in %d s" % (job, timeout))


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("up", "down"):
        sys.exit("usage: python tests/slurm_harness.py up|down WORKDIR")
    if sys.argv[1] == "up":
        print(up(os.path.abspath(sys.argv[2])), end="")
    else:
        down(os.path.abspath(sys.argv[2]))
