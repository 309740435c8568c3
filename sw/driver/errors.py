"""What can go wrong talking to the accelerator; every error says what it was doing."""

from __future__ import annotations


class DriverError(Exception):
    """Base of every driver error; its message is one line for the user."""


class PortError(DriverError):
    """The serial port cannot be opened or used."""


class LinkTimeout(DriverError):
    """The device did not answer a command in time (the message names the command)."""


class CRCError(DriverError):
    """A frame kept failing its CRC after the bounded retries."""


class OutputLost(DriverError):
    """Output frames were lost or corrupted on the way back: the run's result is incomplete."""


class DeviceError(DriverError):
    """The device refused or could not do what was asked (the message names the field)."""

    def __init__(self, message: str, *, code: int = 0, field: str = ""):
        super().__init__(message)
        self.code = code
        self.field = field


class ProtocolError(DriverError):
    """The device and the host disagree about the protocol (a bug, or the wrong device)."""
