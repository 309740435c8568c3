"""Engine parameters: impossible combinations fail at elaboration, naming the parameter."""

import pytest

from spec.params import (
    ConfigError,
    EngineParams,
    ParamError,
    config_bits,
    config_fields,
    pack_config,
)
from spec.tiling import FirePlan, PlanError, Shape


@pytest.mark.parametrize("changes,name", [
    (dict(ic_lanes=3), "ic_lanes"),
    (dict(oc_lanes=0), "oc_lanes"),
    (dict(bits=1), "bits"),
    (dict(bits=17), "bits"),
    (dict(max_h=0), "max_h"),
    (dict(weight_depth=100), "weight_depth"),
    (dict(squeeze_depth=100), "squeeze_depth"),
])
def test_impossible_parameters_name_themselves(changes, name):
    with pytest.raises(ParamError, match=rf"^{name}=.*: "):
        EngineParams().replace(**changes)


def test_unknown_parameter():
    with pytest.raises(ParamError, match="unknown engine parameter 'lanes'"):
        EngineParams().replace(lanes=4)


def test_accumulator_width_covers_the_worst_case():
    p = EngineParams()
    worst = 255 * 127 * p.max_terms + 2**31
    assert worst < 2 ** (p.acc_bits - 1)
    assert p.lanes == 80


def test_config_packing_checks_field_widths():
    p = EngineParams()
    word = pack_config(p, h=55, w=55, cin=64, s=16, e1=64, e3=64, z_in=-128)
    assert 0 < word < 2 ** config_bits(p)
    assert [f.name for f in config_fields(p)][:3] == ["h", "w", "cin"]
    with pytest.raises(ValueError, match="z_in=200"):
        pack_config(p, z_in=200)
    with pytest.raises(ValueError, match="unknown config field 'height'"):
        pack_config(p, height=3)


def test_error_codes_name_fields():
    assert ConfigError.H.field == "h" and "max_h" in ConfigError.H.message
    assert ConfigError.NO_SQUEEZE_MAP.message


def test_plan_refuses_layers_beyond_the_maxima():
    p = EngineParams()
    with pytest.raises(PlanError, match="cin=600 exceeds the engine's maximum 512"):
        FirePlan(p, Shape(13, 13, 600, 64, 256, 256))
    with pytest.raises(PlanError, match="bypass needs cin == e1 \\+ e3"):
        FirePlan(p, Shape(13, 13, 64, 16, 64, 64), bypass=True)


def test_plan_tiles_cover_every_channel_once():
    p = EngineParams()
    plan = FirePlan(p, Shape(13, 13, 512, 64, 256, 256))
    assert len(plan.tiles) == 3
    assert plan.tiles[0].squeeze and plan.tiles[0].retain
    assert not any(t.squeeze for t in plan.tiles[1:])
    channels = sorted(c for t in plan.tiles for c in t.concat_channels(256))
    assert channels == list(range(512))
    for t in plan.tiles:
        rows = (plan.squeeze_rows if t.squeeze else 0) + plan.rows(len(t.e1), len(t.e3))
        assert rows <= p.weight_depth
