"""Design-space exploration with FPGA cost (``python -m sw.dse``): network metaparameters and
engine parameters, each point's size, MACs, cycles, frames/s, resources and trained accuracy,
its slow steps as tasks on Dask and their results in a resumable store (:mod:`.study`); the
plots (:mod:`.plots`); the boards, yosys and RTL side (:mod:`.hardware`, the one module here
that may import ``boards``, ``hw`` and ``sim``)."""
