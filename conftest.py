"""Shared pytest configuration: the ``base`` fixture and ``fill`` helper every
suite uses, the torture suite's mode, and the summary lines of the torture
and network-filesystem suites."""

import os
import sys

import pytest

import rear


@pytest.fixture
def base(tmp_path):
    """An empty base directory, removed with tmp_path."""
    path = tmp_path / "base"
    path.mkdir()
    yield str(path)


def fill(base, files, **fs_options):
    """Write ``files`` ({archive path: bytes}) through one rear_fs on ``base``."""
    with rear.rear_fs(base, **fs_options) as fs:
        for name, data in files.items():
            fs.write_bytes(name, data)


def pytest_addoption(parser):
    parser.addoption("--long", action="store_true", default=False,
                     help="run the torture suite in long mode (thousands of trials); "
                     "REAR_TORTURE=long does the same")


@pytest.fixture(scope="session")
def long_mode(request):
    return request.config.getoption("--long") or os.environ.get("REAR_TORTURE") == "long"


def pytest_terminal_summary(terminalreporter):
    _torture_summary(terminalreporter)
    _netfs_summary(terminalreporter)


def _netfs_summary(terminalreporter):
    netfs = sys.modules.get("test_netfs")
    if netfs is None:
        return
    for filesystem, label in netfs.LABELS.items():
        counts = {}
        for (name, _mode), counter in netfs.COUNTS.items():
            if name == filesystem:
                for key, value in counter.items():
                    counts[key] = counts.get(key, 0) + value
        if any(counts.values()):
            terminalreporter.write_line(netfs.summary_line(filesystem, label, counts))


def _torture_summary(terminalreporter):
    torture = sys.modules.get("test_torture")
    if torture is None:
        return
    counts = torture.COUNTS
    if not any(counts[key] for key in counts if key not in ("lost", "corrupt")):
        return
    terminalreporter.write_line(
        "torture: %d writer kills, %d scavenger kills, %d crash states, %d injected "
        "errors, %d hostile inputs, %d fuzzed zips, %d lost, %d corrupt"
        % tuple(counts[key] for key in ("writer kills", "scavenger kills", "crash states",
                                        "injected errors", "hostile inputs", "fuzzed zips",
                                        "lost", "corrupt")))
