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
    if netfs is None or not any(netfs.COUNTS.values()):
        return
    counts = netfs.COUNTS
    shared = sys.modules["test_rear"].COUNTS    # check_archives counts failures there
    terminalreporter.write_line(
        "netfs: GlusterFS, 2 clients; runs with default caching: %d, with caches off: %d; "
        "%d writer kills, %d scavenger kills, %d files acknowledged, %d exact reads "
        "during the chaos, %d fix checks, %d lost, %d corrupt"
        % (counts["runs (default)"], counts["runs (nocache)"], counts["writer kills"],
           counts["scavenger kills"], counts["files"], counts["reads"], counts["fix checks"],
           shared["lost"], shared["corrupt"]))


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
