"""What gateware, driver, simulator harnesses and tools share, as data and pure Python.

``params`` (engine parameters, their checks, the configuration and parameter layouts),
``protocol`` (the wire protocol: frames, commands, identity, counters), ``quant`` (the integer
arithmetic), ``layers`` (a quantized layer's parameters), ``tiling`` (planning a layer's runs
and packing their streams) and ``cost`` (what a layer costs on an engine). It imports nothing
else of the project, and no Amaranth: the driver and the tools read it without the HDL.
"""
