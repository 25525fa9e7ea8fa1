"""Shared pytest configuration: the torture suite's mode and summary line."""

import os
import sys

import pytest


def pytest_addoption(parser):
    parser.addoption("--long", action="store_true", default=False,
                     help="run the torture suite in long mode (thousands of trials); "
                     "REAR_TORTURE=long does the same")


@pytest.fixture(scope="session")
def long_mode(request):
    return request.config.getoption("--long") or os.environ.get("REAR_TORTURE") == "long"


def pytest_terminal_summary(terminalreporter):
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
