"""pytest options shared by the hardware tests."""

import os


def pytest_addoption(parser):
    parser.addoption("--sim", default=os.environ.get("SIM", "verilator"),
                     choices=["verilator", "icarus"],
                     help="HDL simulator for the cocotb tests (default: verilator)")
