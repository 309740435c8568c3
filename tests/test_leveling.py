"""The DDR3 read-leveling search (sw.driver.leveling) against a model of the PHY's tap
windows: each byte lane reads correctly only at one bitslip and within a window of IDELAY
taps whose edges sit in varied places; decoy windows at other bitslips are narrower."""

import pytest

from sw.driver.leveling import LaneLevel, level_reads, longest_run

DELAYS, BITSLIPS = 32, 8


class TapWindowModel:
    """A PHY whose lane ``m`` reads correctly at bitslip ``b`` for the taps in
    ``windows[m][b]`` (a (first, last) range, or absent), and counts every action."""

    def __init__(self, windows):
        self.windows = windows
        self.delay = {m: 0 for m in windows}
        self.bitslip = {m: 0 for m in windows}
        self.reads = 0

    def reset_delay(self, m):
        self.delay[m] = 0

    def inc_delay(self, m):
        self.delay[m] = (self.delay[m] + 1) % DELAYS  # the IDELAY wraps like the PHY's

    def reset_bitslip(self, m):
        self.bitslip[m] = 0

    def inc_bitslip(self, m):
        self.bitslip[m] = (self.bitslip[m] + 1) % BITSLIPS

    def errors(self, m):
        self.reads += 1
        window = self.windows[m].get(self.bitslip[m])
        return 0 if window and window[0] <= self.delay[m] <= window[1] else 3


@pytest.mark.parametrize("lane0, lane1", [
    ({3: (10, 21)}, {5: (0, 7)}),                     # a window from tap 0
    ({0: (24, 31)}, {7: (12, 12)}),                   # to the last tap; a single tap
    ({2: (4, 9), 3: (14, 30)}, {1: (0, 31)}),         # a decoy at another bitslip; all taps
    ({6: (5, 9), 1: (20, 29)}, {4: (2, 3), 5: (10, 25)}),
])
def test_search_finds_the_widest_window_and_sets_its_centre(lane0, lane1):
    model = TapWindowModel({0: lane0, 1: lane1})
    result = level_reads(model, modules=2, delays=DELAYS, bitslips=BITSLIPS)
    for lane, windows in zip(result, (lane0, lane1), strict=True):
        bitslip, (first, last) = max(windows.items(), key=lambda kv: kv[1][1] - kv[1][0])
        assert (lane.bitslip, lane.start, lane.end) == (bitslip, first, last)
        assert lane.delay == (first + last) // 2
        # the PHY is left where the search said, and that tap reads correctly
        assert (model.bitslip[lane.module], model.delay[lane.module]) == (bitslip, lane.delay)
        assert model.errors(lane.module) == 0
    assert model.reads == 2 * BITSLIPS * DELAYS + 2  # every tap of every bitslip, once


def test_a_lane_that_never_reads_correctly_is_reported():
    model = TapWindowModel({0: {2: (3, 8)}, 1: {}})
    lanes = level_reads(model, modules=2, delays=DELAYS, bitslips=BITSLIPS)
    assert lanes[0].ok and lanes[0].delay == 5
    assert lanes[1] == LaneLevel(1, None, None, None, None) and not lanes[1].ok
    assert (model.bitslip[1], model.delay[1]) == (0, 0)


@pytest.mark.parametrize("working, run", [
    ([], None), ([False] * 4, None), ([True], (0, 0)), ([True, True, False, True], (0, 1)),
    ([False, True, False, True, True, True], (3, 5)), ([True, False, True], (0, 0)),
])
def test_longest_run(working, run):
    assert longest_run(working) == run
