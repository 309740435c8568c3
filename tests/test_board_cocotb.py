"""The board top (UART PHY + link + engine) under cocotb, UART at the bit level."""

from functools import cache

import pytest
from amaranth.back import verilog

from hw.top import UartTop
from sim.cocotb_runner import run_cocotb
from sim.engine_configs import CONFIGS

CLOCK_HZ, BAUD = 96_000_000, 12_000_000
#: idle cycles before a frame cut short is dropped: 25 byte times, far below the board's 1 ms,
#: so that the truncation tests take seconds
RX_IDLE = 2000


@cache
def uart_top_verilog(config: str) -> str:
    return verilog.convert(UartTop(CONFIGS[config], clock_hz=CLOCK_HZ, baud=BAUD,
                                   rx_idle=RX_IDLE), name="uart_top")


@pytest.mark.parametrize("config", ["arty_a7", "small4"])
def test_board_top(config, request):
    run_cocotb(name=f"board_{config}", verilog=uart_top_verilog(config), toplevel="uart_top",
               test_module="sim.tb_board", sim=request.config.getoption("--sim"),
               extra_env={"BOARD_CONFIG": config, "BOARD_CLOCK_HZ": str(CLOCK_HZ),
                          "BOARD_BAUD": str(BAUD), "BOARD_RX_IDLE": str(RX_IDLE)})
