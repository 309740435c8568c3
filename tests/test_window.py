"""Amaranth-simulator tests of the window packer (``hw.window``) against
``spec.windows.pack_windows``: random images (the extremes included) of odd and even sizes,
3x3 and 7x7 windows, strides 1 and 2, one to four channels, windows that fill the lanes
exactly and ones padded with the zero point, several images one after another in one
simulation, random gaps on the input and backpressure on the output, and configurations it
must refuse without taking input."""

from __future__ import annotations

import numpy as np
import pytest
from test_pool import from_beats, random_map, run_jobs, to_beats

from hw.window import WindowError, WindowPacker
from spec.quant import QuantSpec
from spec.windows import pack_windows

WP = dict(bits=8, lanes=8, banks=4, max_h=12, max_w=12, max_cin=4, max_k=7, capacity=256)
FIELDS = ("h", "w", "cin", "k", "stride", "pad", "z")


def raw_beats(rng, x, lanes, bits):
    """The image as the host writes it: HWC values contiguous, the last beat's extra lanes
    junk (the packer must not use them)."""
    flat = np.asarray(x).reshape(-1)
    tail = (-len(flat)) % lanes
    spec = QuantSpec(bits)
    flat = np.concatenate([flat, rng.integers(spec.act_min, spec.act_max + 1, tail)])
    return to_beats(flat.reshape(-1, lanes), bits, lanes)


def window_jobs(rng, p, cases):
    spec = QuantSpec(p["bits"])
    jobs, expect = [], []
    for h, w, cin, k, stride in cases:
        x = random_map(rng, h, w, cin, spec)
        z = int(rng.integers(spec.act_min, spec.act_max + 1))
        cfg = dict(h=h, w=w, cin=cin, k=k, stride=stride, pad=0, z=z)
        jobs.append((cfg, raw_beats(rng, x, p["lanes"], p["bits"])))
        expect.append(pack_windows(x, k, stride, 0, z, p["lanes"]))
    return jobs, expect


def check(p, jobs, outputs, expect):
    for (cfg, _), got, want in zip(jobs, outputs, expect, strict=True):
        np.testing.assert_array_equal(from_beats(got, p["bits"], p["lanes"], want.shape), want,
                                      f"image {cfg}")


def run(dut, jobs, rng, **kw):
    return run_jobs(dut, jobs, lambda c: c, rng,
                    out_beats=lambda c: dut.output_beats(c["h"], c["w"], c["cin"], c["k"],
                                                         c["stride"]), **kw)


@pytest.mark.parametrize("seed,gaps,stalls", [(1, 0.3, 0.3), (2, 0.0, 0.8), (3, 0.7, 0.0)])
def test_packs_windows_as_the_spec_image_after_image(seed, gaps, stalls):
    """conv1 of v1.1 (3x3/2, 3 channels: 27 values, padded) and of v1.0 (7x7/2: 147) in
    small, a window filling the lanes exactly (2x2x4), stride 1, one channel, a single
    output pixel, an image whose last rows and columns no window uses."""
    rng = np.random.default_rng(seed)
    cases = [(9, 9, 3, 3, 2), (11, 9, 3, 7, 2), (6, 5, 4, 2, 2), (5, 6, 2, 3, 1),
             (4, 4, 1, 1, 1), (7, 7, 3, 7, 2), (8, 8, 3, 3, 2), (12, 7, 3, 3, 2)]
    jobs, expect = window_jobs(rng, WP, cases)
    dut = WindowPacker(**WP)
    errors, outputs, _ = run(dut, jobs, rng, gaps=gaps, stalls=stalls, limit=20000)
    assert errors == [WindowError.OK] * len(jobs)
    check(WP, jobs, outputs, expect)


def test_refuses_what_it_cannot_pack_and_runs_on():
    rng = np.random.default_rng(4)
    good, expect = window_jobs(rng, WP, [(7, 7, 3, 3, 2), (9, 8, 3, 7, 2)])
    base = dict(h=7, w=7, cin=3, k=3, stride=2, pad=0, z=0)
    bad = [(dict(base, k=0), WindowError.K), (dict(base, stride=0), WindowError.STRIDE),
           (dict(base, stride=3), WindowError.STRIDE), (dict(base, pad=1), WindowError.PAD),
           (dict(base, cin=0), WindowError.CIN), (dict(base, cin=5), WindowError.CIN),
           (dict(base, h=2), WindowError.H), (dict(base, h=13), WindowError.H),
           (dict(base, w=2), WindowError.W), (dict(base, w=13), WindowError.W),
           (dict(base, h=12, w=12, cin=4, k=7), WindowError.ROW)]
    jobs = [good[0]] + [(cfg, None) for cfg, _ in bad] + [good[1]]
    dut = WindowPacker(**WP)
    errors, outputs, _ = run(dut, jobs, rng, gaps=0.2, stalls=0.2, limit=20000)
    assert errors == [WindowError.OK] + [e for _, e in bad] + [WindowError.OK]
    check(WP, [jobs[0], jobs[-1]], [outputs[0], outputs[-1]], expect)


def test_default_lanes_and_throughput():
    """16 lanes, 4 banks: v1.1's conv1 (2 beats a pixel) and v1.0's (10) in small, at full
    rate: a packed beat every few cycles, well inside the engine's ~13 cycles a beat."""
    p = dict(bits=8, lanes=16, banks=4, max_h=32, max_w=32, max_cin=3, max_k=7,
             capacity=1024)
    rng = np.random.default_rng(5)
    jobs, expect = window_jobs(rng, p, [(15, 17, 3, 3, 2), (19, 13, 3, 7, 2)])
    dut = WindowPacker(**p)
    errors, outputs, spans = run(dut, jobs, rng, gaps=0.0, stalls=0.0, limit=20000)
    assert errors == [WindowError.OK] * 2
    check(p, jobs, outputs, expect)
    for (cfg, _), span, got in zip(jobs, spans, outputs, strict=True):
        assert span / len(got) < 8, (cfg, span, len(got))
