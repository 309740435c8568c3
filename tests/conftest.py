"""pytest options shared by the hardware tests, and the property tests' settings."""

import os

from hypothesis import HealthCheck, settings

# Property tests are checked by what they assert, not by how fast the machine draws their
# inputs: on a loaded 2-core machine (a bitstream build beside `pytest -n 2`) Hypothesis'
# wall-clock health check failed a test whose every example passed. No deadline either,
# for the same reason (some tests set one of their own: theirs holds).
settings.register_profile("project", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("project")


def pytest_addoption(parser):
    parser.addoption("--sim", default=os.environ.get("SIM", "verilator"),
                     choices=["verilator", "icarus"],
                     help="HDL simulator for the cocotb tests (default: verilator)")
