"""The scheduler examples, run for real: a single-node SLURM (slurm_harness.py)
and Open MPI's mpirun, from a plain copy of the repository with rear not
installed in the Python the jobs use.

Needs root, Debian's slurm-wlm, munge, openmpi-bin and python3-mpi4py (for
/usr/bin/python3); skips, saying why, without them.  test_ecosystem.py keeps
stubbed versions (a fake sbatch, a fake mpi4py) for machines without them.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import time
import zipfile

import pytest

from tests import slurm_harness
from tests.support import HERE

SYSTEM_PYTHON = "/usr/bin/python3"
#: What the jobs see: the system's tools first, so that python3 is one that
#: has no rear installed (pip installed it into the tests' own Python).
JOB_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"
SHIPPED = ["rear.py", "examples"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = slurm_harness.unavailable_reason()
    if reason:
        pytest.skip(reason)
    workdir = str(tmp_path_factory.mktemp("slurm"))
    try:
        slurm_harness.up(workdir)
    except (RuntimeError, subprocess.CalledProcessError) as err:
        slurm_harness.down(workdir)
        pytest.fail("could not bring SLURM up: %s" % err)
    yield workdir
    slurm_harness.down(workdir)


@pytest.fixture
def shipped(tmp_path):
    """A plain copy of the repository's files users get, and the proof that
    the jobs' python3 cannot import rear from anywhere but what they ship."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip("no %s" % SYSTEM_PYTHON)
    if subprocess.run([SYSTEM_PYTHON, "-c", "import rear"], cwd="/",
                      capture_output=True).returncode == 0:
        pytest.skip("%s has rear installed: the examples' own way of finding it would "
                    "not be tested" % SYSTEM_PYTHON)
    copy = tmp_path / "repo"
    copy.mkdir()
    for name in SHIPPED:
        source = os.path.join(HERE, name)
        if os.path.isdir(source):
            shutil.copytree(source, str(copy / name))
        else:
            shutil.copy(source, str(copy / name))
    return str(copy)


def job_env(**extra):
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PYTHON", "REAR_", "SLURM_"))}
    env.update(PATH=JOB_PATH, **extra)
    return env


def archive_names(path):
    with zipfile.ZipFile(path) as handle:
        assert handle.testzip() is None
        return handle.namelist()


def inbox_temp_zips(base):
    inbox = os.path.join(base, "inbox")
    return [name for name in os.listdir(inbox) if name.endswith(".zip")]


# ---------------------------------------------------------------- SLURM


def test_the_slurm_example_runs_as_shipped(slurm, shipped, tmp_path):
    base = str(tmp_path / "run")
    submit_dir = tmp_path / "submit"
    submit_dir.mkdir()
    result = subprocess.run(["bash", os.path.join(shipped, "examples", "slurm", "submit.sh")],
                            env=job_env(REAR_BASE=base, TASKS="4"), cwd=str(submit_dir),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    array_job, scavenge_job = re.findall(r"job (\d+)", result.stdout)
    assert slurm_harness.wait_for(scavenge_job) == ("COMPLETED", "0:0"), \
        open(os.path.join(base, ".job", "slurm-%s.out" % scavenge_job)).read()
    assert len(archive_names(os.path.join(base, "results.zip"))) == 400
    assert len(archive_names(os.path.join(base, "logs.zip"))) == 4
    assert inbox_temp_zips(base) == []
    # the scheduler's own small files: none in the submit directory, one per job
    assert os.listdir(str(submit_dir)) == []
    assert sorted(name for name in os.listdir(os.path.join(base, ".job"))
                  if name.startswith("slurm-")) == sorted(
                      ["slurm-%s.out" % array_job, "slurm-%s.out" % scavenge_job])


RESUBMIT_TASK = """
import os, sys, time
import rear      # vendored next to this script by submit.sh
task = int(os.environ["SLURM_ARRAY_TASK_ID"])
first = not os.environ.get("REAR_RESUBMITTED")
restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
with rear.rear_fs():
    for step in range(10):
        with rear.rear_open("results.zip/task-%04d/step-%03d.txt" % (task, step), "w") as out:
            out.write("task %d, step %d\\n" % (task, step))
    if first and task == 1:
        sys.exit("task 1 fails on its first run")
    if first and task == 2:
        time.sleep(3600)                        # killed at its time limit
    if task == 3 and restart == 0:
        with rear.rear_open("logs.zip/task-0003.log", "w") as log:
            log.write("task 3, first run\\n")
        open(os.path.join(os.environ["ACK_DIR"], "requeue-3"), "w").close()
        time.sleep(3600)                        # requeued meanwhile
    with rear.rear_open("logs.zip/task-%04d.log" % task, "w") as log:
        log.write("task %d finished, restart %d\\n" % (task, restart))
"""


def test_the_slurm_example_resubmits_exactly_the_tasks_that_left_no_log_once(
        slurm, shipped, tmp_path):
    """Of five tasks, 1 fails and 2 is killed at its time limit on their
    first run; 3 is requeued with 'scontrol requeue' after writing its log.
    The scavenger job resubmits 1 and 2 (from 'rear missing --array'), a
    second scavenger finds every log, and 'rear ls --versions' tells task
    3's two runs apart."""
    base = str(tmp_path / "run")
    acks = tmp_path / "acks"
    acks.mkdir()
    task = tmp_path / "task.py"
    task.write_text(RESUBMIT_TASK)
    env = job_env(REAR_BASE=base, TASKS="5", TASK=str(task), ACK_DIR=str(acks),
                  SBATCH_TIMELIMIT="1")                 # minutes, for every job
    result = subprocess.run(["bash", os.path.join(shipped, "examples", "slurm", "submit.sh")],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    array_job, scavenge_job = re.findall(r"job (\d+)", result.stdout)
    deadline = time.monotonic() + 120
    while not (acks / "requeue-3").exists():
        assert time.monotonic() < deadline, "task 3 never wrote its first log"
        time.sleep(0.2)
    task_3 = "%s_3" % array_job
    subprocess.run(["scontrol", "requeue", task_3], check=True)
    # A requeued job waits about two minutes (BeginTime); start it now.
    while subprocess.run(["scontrol", "update", "JobId=" + task_3, "StartTime=now"],
                         capture_output=True).returncode:
        assert time.monotonic() < deadline + 60, "task 3 was never pending again"
        time.sleep(0.5)
    job_dir = os.path.join(base, ".job")
    state = slurm_harness.wait_for(scavenge_job, timeout=400)
    output = open(os.path.join(job_dir, "slurm-%s.out" % scavenge_job)).read()
    assert state == ("COMPLETED", "0:0"), (state, output)
    resubmitted = re.search(r"resubmitted tasks (\S+): job (\d+), scavenger: job (\d+)",
                            output)
    assert resubmitted and resubmitted.group(1) == "1-2", output
    state = slurm_harness.wait_for(resubmitted.group(3), timeout=400)
    output = open(os.path.join(job_dir, "slurm-%s.out" % resubmitted.group(3))).read()
    assert state == ("COMPLETED", "0:0") and "every task left its log" in output, output
    rear_py = os.path.join(job_dir, "rear.py")
    versions = subprocess.run([SYSTEM_PYTHON, rear_py, "ls", "--versions", "--json", base,
                               "logs.zip", "--prefix", "task-0003"],
                              capture_output=True, text=True, check=True).stdout
    copies = [json.loads(line) for line in versions.splitlines()]
    assert [copy["stored_as"] for copy in copies] == ["task-0003.log", "task-0003.log.~1~"]
    assert "slurm_restart" not in copies[0]["provenance"]
    assert copies[1]["provenance"]["slurm_restart"] == "1"
    assert {copy["provenance"]["slurm_array_task"] for copy in copies} == {"3"}
    assert sorted(archive_names(os.path.join(base, "logs.zip"))) == sorted(
        ["task-%04d.log" % number for number in range(5)] + ["task-0003.log.~1~"])
    assert len(archive_names(os.path.join(base, "results.zip"))) == 50    # reruns: duplicates
    assert inbox_temp_zips(base) == []
    missing = subprocess.run([SYSTEM_PYTHON, rear_py, "missing", base, "logs.zip", "--expect",
                              "task-{0000..0004}.log"], capture_output=True, text=True)
    assert missing.returncode == 0 and missing.stdout == ""


HARSH_TASK = """
import os, signal, sys, time
import rear      # vendored next to this script
task = int(os.environ["SLURM_ARRAY_TASK_ID"])
log = open(os.path.join(os.environ["ACK_DIR"], "task-%d" % task), "a")

def work(count, pause):
    with rear.rear_fs(rotation_span=3600):
        for n in range(count):
            name = "harsh.zip/task-%d/%05d" % (task, n)
            with rear.rear_open(name, "w") as out:
                out.write(name)
            log.write(name + "\\n")          # acknowledged, told outside BASE
            log.flush()
            time.sleep(pause)

if task == 3:
    # Ignores SIGTERM and runs on in a session of its own: with
    # proctrack/linuxproc it outlives its job, holding its temp zip.
    if os.fork():
        sys.exit(0)
    os.setsid()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open(os.path.join(os.environ["ACK_DIR"], "stray.pid"), "w").write(str(os.getpid()))
    work(100000, 0.05)
elif task in (1, 2):
    work(100000, 0.01)      # 1: killed at its time limit; 2: cancelled
else:
    work(300, 0)
"""


def test_a_harsh_array_ends_with_the_truth_and_loses_nothing(slurm, shipped, tmp_path):
    base = str(tmp_path / "run")
    acks = tmp_path / "acks"
    acks.mkdir()
    job_dir = os.path.join(base, ".job")
    os.makedirs(job_dir)
    shutil.copy(os.path.join(shipped, "rear.py"), job_dir)
    with open(os.path.join(job_dir, "task.py"), "w") as handle:
        handle.write(HARSH_TASK)
    env = job_env(REAR_BASE=base, ACK_DIR=str(acks))
    sbatch = ["sbatch", "--parsable", "--export=ALL", "--output=%s/slurm-%%A.out" % job_dir]
    array = subprocess.run(sbatch + ["--array=0-3", "--time=1", "--wrap",
                                     "python3 %s/task.py" % job_dir],
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    scavenger = subprocess.run(sbatch + ["--dependency=afterany:%s" % array, "--wrap",
                                         "python3 %s/rear.py scavenge --flush %s"
                                         % (job_dir, base)],
                               env=env, capture_output=True, text=True, check=True)
    scavenger = scavenger.stdout.strip()
    time.sleep(5)
    subprocess.run(["scancel", "%s_2" % array], check=True)
    state = slurm_harness.wait_for(scavenger, timeout=240)
    output = open(os.path.join(job_dir, "slurm-%s.out" % scavenger)).read()
    stray = int(open(str(acks / "stray.pid")).read())
    try:
        # The stray task still writes: the scavenger says so, and fails.
        assert state == ("FAILED", "3:0"), (state, output)
        assert re.search(r"a live writer holds it \(pid %d on \S+, still running\)" % stray,
                         output), output
    finally:
        os.kill(stray, signal.SIGKILL)
    flushed = subprocess.run([SYSTEM_PYTHON, os.path.join(job_dir, "rear.py"), "scavenge",
                              "--flush", base], capture_output=True, text=True)
    assert flushed.returncode == 0, flushed.stderr
    acknowledged = set()
    for name in os.listdir(str(acks)):
        if name.startswith("task-"):
            acknowledged.update(open(str(acks / name)).read().split())
    archived = archive_names(os.path.join(base, "harsh.zip"))
    assert len(archived) == len(set(archived))
    assert {"harsh.zip/" + name for name in archived} >= acknowledged
    assert len(acknowledged) > 300 and inbox_temp_zips(base) == []


def test_scavenge_watch_as_a_job_step_ends_cleanly_on_scancel(slurm, shipped, tmp_path):
    base = str(tmp_path / "run")
    job_dir = os.path.join(base, ".job")
    os.makedirs(job_dir)
    shutil.copy(os.path.join(shipped, "rear.py"), job_dir)
    subprocess.run([SYSTEM_PYTHON, "-c", "import rear\nwith rear.rear_fs(%r) as fs:\n"
                    "    fs.write_bytes('w.zip/x', b'x')" % base], cwd=job_dir, check=True)
    output = os.path.join(job_dir, "watch.out")
    job = subprocess.run(["sbatch", "--parsable", "--export=ALL", "--output=" + output,
                          "--wrap", "python3 %s/rear.py scavenge --watch 0.5 %s"
                          % (job_dir, base)],
                         env=job_env(), capture_output=True, text=True, check=True)
    job = job.stdout.strip()
    deadline = time.monotonic() + 60
    while "moved 1 files" not in (open(output).read() if os.path.exists(output) else ""):
        assert time.monotonic() < deadline, "the watch never reported its pass"
        time.sleep(0.2)
    subprocess.run(["scancel", job], check=True)
    slurm_harness.wait_for(job)
    text = open(output).read()
    assert text.splitlines()[-1].startswith("stopped; in all: moved 1 files"), text
    assert "Traceback" not in text


def test_a_job_step_of_scavengers_each_given_its_part_archives_everything_once(
        slurm, shipped, tmp_path):
    base = str(tmp_path / "run")
    job_dir = os.path.join(base, ".job")
    os.makedirs(job_dir)
    shutil.copy(os.path.join(shipped, "rear.py"), job_dir)
    subprocess.run([SYSTEM_PYTHON, "-c", "import rear\nfor number in range(30):\n"
                    "    with rear.rear_fs(%r) as fs:\n"
                    "        for file in range(20):\n"
                    "            fs.write_bytes('p.zip/%%d/%%d' %% (number, file), b'x')"
                    % base], cwd=job_dir, check=True)
    output = os.path.join(job_dir, "parts-%j.out")
    # What docs/schedulers.md shows: SLURM_PROCID and SLURM_NTASKS are
    # each task's own, so they are expanded in the task, not in the batch.
    step = ("srun bash -c 'exec python3 %s/rear.py scavenge --flush "
            "--part $((SLURM_PROCID + 1))/$SLURM_NTASKS %s'" % (job_dir, base))
    job = subprocess.run(["sbatch", "--parsable", "--export=ALL", "--ntasks=2",
                          "--output=" + output, "--wrap", step],
                         env=job_env(), capture_output=True, text=True, check=True)
    job = job.stdout.strip()
    state = slurm_harness.wait_for(job, timeout=240)
    text = open(output.replace("%j", job)).read()
    assert state == ("COMPLETED", "0:0"), (state, text)
    moved = [int(line.split()[1]) for line in text.splitlines() if line.startswith("moved ")]
    assert len(moved) == 2 and sum(moved) == 600, text
    archived = archive_names(os.path.join(base, "p.zip"))
    assert sorted(archived) == sorted("%d/%d" % (number, file)
                                      for number in range(30) for file in range(20))
    assert inbox_temp_zips(base) == []


# ---------------------------------------------------------------- Open MPI


def mpirun(ranks, *args, **kwargs):
    if shutil.which("mpirun") is None:
        pytest.skip("mpirun is not installed (apt-get install openmpi-bin python3-mpi4py)")
    if subprocess.run([SYSTEM_PYTHON, "-c", "import mpi4py"], capture_output=True).returncode:
        pytest.skip("%s has no mpi4py (apt-get install python3-mpi4py)" % SYSTEM_PYTHON)
    env = job_env(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return subprocess.Popen(["mpirun", "--oversubscribe", "-np", str(ranks), SYSTEM_PYTHON]
                            + list(args), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.parametrize("ranks", [4, 8])
def test_the_mpi_example_runs_as_shipped(shipped, tmp_path, ranks):
    base = str(tmp_path / "run")
    run = mpirun(ranks, os.path.join(shipped, "examples", "mpi_ranks.py"), base)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    assert "rank 0 moved %d files" % (1000 * ranks) in out
    assert len(archive_names(os.path.join(base, "ranks.zip"))) == 1000 * ranks
    assert inbox_temp_zips(base) == []


def test_a_killed_rank_aborts_the_run_and_one_flush_recovers_everything(shipped, tmp_path):
    base = str(tmp_path / "run")
    run = mpirun(4, os.path.join(shipped, "examples", "mpi_ranks.py"), base, "10000000")
    deadline = time.monotonic() + 60
    while len(inbox_temp_zips(base) if os.path.isdir(os.path.join(base, "inbox")) else []) < 4:
        assert time.monotonic() < deadline, "the ranks never started writing"
        time.sleep(0.1)
    time.sleep(1)
    ranks = subprocess.run(["pgrep", "-f", "mpi_ranks.py %s" % base], capture_output=True,
                           text=True).stdout.split()
    os.kill(int(ranks[-1]), signal.SIGKILL)
    run.communicate(timeout=60)
    assert run.returncode != 0                     # mpirun aborted every rank
    assert len(inbox_temp_zips(base)) >= 4         # and nobody collected
    flushed = subprocess.run([SYSTEM_PYTHON, os.path.join(shipped, "rear.py"), "scavenge",
                              "--flush", base], capture_output=True, text=True, timeout=300)
    assert flushed.returncode == 0, flushed.stderr
    assert inbox_temp_zips(base) == []
    steps = {}
    for name in archive_names(os.path.join(base, "ranks.zip")):
        rank, step = re.match(r"rank-(\d+)/step-(\d+)\.txt$", name).groups()
        steps.setdefault(int(rank), []).append(int(step))
    assert sorted(steps) == [0, 1, 2, 3]
    for rank, done in steps.items():               # each rank: a whole prefix, no gap
        assert sorted(done) == list(range(len(done))), rank
