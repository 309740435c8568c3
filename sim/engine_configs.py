"""Engine configurations the testbenches run, and the Fire shapes each covers."""

from __future__ import annotations

from boards import get_board
from spec.params import EngineParams

CONFIGS: dict[str, EngineParams] = {
    # the Arty A7-35T default: 16 x 5 lanes, int8, bypass
    "arty_a7": get_board("arty_a7").engine,
    # minimal: 4-bit, one multiplier, no bypass, buffers small enough to tile
    "small4": EngineParams(bits=4, ic_lanes=1, oc_lanes=1, max_h=8, max_w=8, max_cin=16,
                           max_squeeze=8, max_e1=8, max_e3=8, weight_depth=220,
                           squeeze_depth=256, bypass=False),
    # the paper's "more than 8 bits": 16-bit activations and weights, 2 x 3 lanes
    "wide16": EngineParams(bits=16, ic_lanes=2, oc_lanes=3, max_h=8, max_w=8, max_cin=32,
                           max_squeeze=8, max_e1=16, max_e3=16, weight_depth=160,
                           squeeze_depth=160, bypass=True),
}

#: (Cin, S, E1, E3) of every Fire module of SqueezeNet v1.0 and v1.1.
SQUEEZENET_FIRE_SHAPES = [(64, 16, 64, 64), (96, 16, 64, 64), (128, 16, 64, 64),
                          (128, 32, 128, 128), (256, 32, 128, 128), (256, 48, 192, 192),
                          (384, 48, 192, 192), (384, 64, 256, 256), (512, 64, 256, 256)]


def fire_shapes(params: EngineParams) -> list[tuple[int, int, int, int]]:
    """SqueezeNet's Fire channel shapes where they fit, else shapes scaled to the maxima."""
    fitting = [s for s in SQUEEZENET_FIRE_SHAPES
               if s[0] <= params.max_cin and s[1] <= params.max_squeeze
               and s[2] <= params.max_e1 and s[3] <= params.max_e3]
    if fitting:
        return fitting
    # same proportions as SqueezeNet (SR = 1/8, pct3x3 = 1/2), smaller
    cin, s, e = params.max_cin, params.max_squeeze, min(params.max_e1, params.max_e3)
    return [(cin // 2, max(1, s // 4), e // 2, e // 2), (cin, max(1, s // 2), e, e),
            (cin, s, e, e), (max(1, cin // 3), 3 if s >= 3 else s, 3, e // 2 + 1)]
