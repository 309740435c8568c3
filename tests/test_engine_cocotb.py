"""The Fire engine's generated Verilog under cocotb, for several engine configurations."""

import pytest

from sim.cocotb_runner import run_cocotb
from sim.engine_configs import CONFIGS
from sim.engine_harness import engine_verilog


@pytest.mark.parametrize("config", list(CONFIGS))
def test_engine(config, request):
    run_cocotb(name=f"engine_{config}", verilog=engine_verilog(CONFIGS[config]),
               toplevel="fire_engine", test_module="sim.tb_engine",
               sim=request.config.getoption("--sim"), extra_env={"ENGINE_CONFIG": config})
