"""Structural checks of elaborated gateware, shared by the unit tests of the pipelines."""

from __future__ import annotations

from amaranth.back import rtlil, verilog


def registers_with_reset(component, ports) -> set[str]:
    """Names of the registers of ``component`` that its reset clears.

    docs/engine.md: datapath registers have no reset, only valid and control bits do (a reset
    net reaching thousands of flip-flops was itself a long path). In the RTLIL Amaranth
    writes, a register with a reset takes its D input from a process that switches on
    ``rst``.
    """
    text = rtlil.convert(component, ports=ports)
    reset_wires, registers = set(), []
    lines = iter(text.splitlines())
    for line in lines:
        words = line.split()
        if words[:1] == ["process"]:
            depth, assigned, resets = 1, set(), False
            for inner in lines:
                w = inner.split()
                if w[:1] == ["switch"]:
                    depth += 1
                    resets |= w[1:2] == ["\\rst"]
                elif w[:1] == ["end"]:
                    depth -= 1
                    if not depth:
                        break
                elif w[:1] == ["assign"]:
                    assigned.add(w[1])
            if resets:
                reset_wires |= assigned
        elif words[:2] == ["cell", "$dff"]:
            d = q = None
            for inner in lines:
                w = inner.split()
                if w[:2] == ["connect", "\\D"]:
                    d = {t for t in w[2:] if t[0] in "$\\"}
                elif w[:2] == ["connect", "\\Q"]:
                    q = w[2].lstrip("\\")
                elif w[:1] == ["end"]:
                    break
            registers.append((d, q))
    return {q for d, q in registers if d & reset_wires}


def count_instances(component, platform, ports, cell: str) -> int:
    """How many ``cell`` primitives the Verilog of ``component`` for ``platform`` holds."""
    return verilog.convert(component, platform=platform, ports=ports).count(f"{cell} #(")


def stream_ports(*streams) -> list:
    """The signals of always-ready streams (their ``ready`` is a constant, not a port)."""
    return [s for stream in streams for s in (stream.valid, stream.payload.as_value())]
