"""Host driver: streams quantized Fire layers to the accelerator over its serial link.

``Accelerator.open(port, baud)`` opens a device on a serial port: a board, or the simulated
board's pty (``sim.board.simulated_accelerator()`` starts one and opens it; the driver never
imports the simulator). ``python -m sw.driver`` is the command line.
"""

from .accelerator import Accelerator, FireResult
from .errors import (
                     CRCError,
                     DeviceError,
                     DriverError,
                     LinkTimeout,
                     OutputLost,
                     PortError,
                     ProtocolError,
)

__all__ = ["Accelerator", "FireResult", "DriverError", "PortError", "LinkTimeout", "CRCError",
           "OutputLost", "DeviceError", "ProtocolError"]
