"""Shared pytest configuration: the ``base`` fixture every suite uses, the
torture suite's long mode, and the ``tally`` the torture and
network-filesystem suites count into for their summary lines."""

import os

import pytest

from tests.support import Tally

_TALLY = pytest.StashKey()


@pytest.fixture
def base(tmp_path):
    """An empty base directory, removed with tmp_path."""
    path = tmp_path / "base"
    path.mkdir()
    yield str(path)


def pytest_addoption(parser):
    parser.addoption("--long", action="store_true", default=False,
                     help="run the torture suite in long mode (thousands of trials); "
                     "REAR_TORTURE=long does the same")


def pytest_configure(config):
    config.stash[_TALLY] = Tally()


@pytest.fixture(scope="session")
def long_mode(request):
    return request.config.getoption("--long") or os.environ.get("REAR_TORTURE") == "long"


@pytest.fixture(scope="session")
def tally(request):
    """The run's Tally: what the suites count and measure for their summary lines."""
    return request.config.stash[_TALLY]


def pytest_terminal_summary(terminalreporter, config):
    for line in config.stash[_TALLY].summary_lines():
        terminalreporter.write_line(line)
