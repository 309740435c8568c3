"""Host driver: streams quantized Fire layers to the accelerator over its serial link.

``Accelerator.open(port, baud)`` for a board, ``Accelerator.simulated()`` for the simulated
board; ``python -m sw.driver`` is the command line.
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
