"""The trigger on small synthetic probability curves with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from quakescan.detector.trigger import StationTrigger, TriggerParams, trigger_onoff

CLASSES = ("noise", "earthquake", "tremor")


def probs(event, label=1):
    """Class probabilities with event probability ``event`` going to class ``label``."""
    e = np.asarray(event, dtype=np.float32)
    p = np.zeros((len(e), 3), np.float32)
    p[:, 0] = 1 - e
    p[:, label] = e
    return p


def trig(**kw):
    params = TriggerParams(**{"on": 0.9, "off": 0.5, "merge_gap_s": 0.0, **kw})
    return StationTrigger(
        "XX.STA.00",
        "HH",
        params=params,
        step_s=1.0,
        window_s=10.0,
        onset_offset_s=2.0,
        class_names=CLASSES,
        model="m",
        model_version="1",
    )


def test_on_off_hysteresis():
    s = np.array([0.1, 0.95, 0.7, 0.6, 0.4, 0.92, 0.3, 0.8, 0.2])
    assert trigger_onoff(s, 0.9, 0.5) == [(1, 3), (5, 5)]
    assert trigger_onoff(s, 0.99, 0.5) == []
    assert trigger_onoff(np.array([0.95, 0.96]), 0.9, 0.5) == [(0, 1)]


def test_detection_times_label_and_peak():
    t = trig()
    k = np.arange(100, 110)
    e = [0.1, 0.2, 0.93, 0.97, 0.8, 0.6, 0.3, 0.1, 0.1, 0.1]
    p = probs(e)
    p[3] = [0.03, 0.27, 0.70]  # the peak window says tremor
    dets = t.feed(k, p) + t.flush()
    assert len(dets) == 1
    d = dets[0]
    assert d.start.timestamp == 102.0  # first window at or above "on"
    assert d.end.timestamp == 105.0 + 10.0  # last window at or above "off", plus the window
    assert d.peak_time.timestamp == 103.0 + 2.0  # peak window + onset offset
    assert d.peak_probability == pytest.approx(0.97)
    assert d.label == "tremor"
    assert (d.station, d.channel_prefix, d.model, d.model_version) == ("XX.STA.00", "HH", "m", "1")


def test_merge_gap_joins_close_triggers_only():
    e = [0.95, 0.95, 0.1, 0.1, 0.95, 0.1, 0.1, 0.1, 0.1, 0.95]
    k = np.arange(len(e))
    t = trig(merge_gap_s=0)
    assert len(t.feed(k, probs(e)) + t.flush()) == 3
    t = trig(merge_gap_s=3)
    dets = t.feed(k, probs(e)) + t.flush()
    # windows 0-1 and 4 are 3 steps apart: merged; 9 is 5 steps after 4: separate
    assert [(d.start.timestamp, d.end.timestamp) for d in dets] == [(0.0, 14.0), (9.0, 19.0)]


def test_min_duration_drops_short_triggers():
    e = [0.95, 0.1, 0.1, 0.95, 0.95, 0.95, 0.1]
    t = trig(min_duration_s=3)
    dets = t.feed(np.arange(len(e)), probs(e)) + t.flush()
    assert [d.start.timestamp for d in dets] == [3.0]


def test_gap_in_windows_ends_a_trigger():
    k = np.array([0, 1, 2, 10, 11])
    e = [0.95, 0.95, 0.95, 0.95, 0.1]
    t = trig()
    dets = t.feed(k, probs(e)) + t.flush()
    assert [(d.start.timestamp, d.end.timestamp) for d in dets] == [(0.0, 12.0), (10.0, 20.0)]


@pytest.mark.parametrize("seed", range(5))
def test_pieces_give_the_same_detections_as_one_pass(seed):
    rng = np.random.default_rng(seed)
    n = 3000
    e = np.clip(np.convolve(rng.random(n) ** 8, np.ones(6), "same"), 0, 1)
    k = np.arange(n) + 10_000
    keep = rng.random(n) > 0.01  # a few missing windows (gaps)
    k, e = k[keep], e[keep]
    p = probs(e)
    one = trig(merge_gap_s=4, min_duration_s=2)
    whole = one.feed(k, p) + one.flush()
    cuts = np.sort(rng.choice(np.arange(1, len(k)), size=25, replace=False))
    many = trig(merge_gap_s=4, min_duration_s=2)
    parts = []
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(k)], strict=True):
        parts += many.feed(k[a:b], p[a:b])
    parts += many.flush()
    assert len(whole) > 5
    assert [(d.id, d.end, d.peak_time, d.peak_probability) for d in whole] == [
        (d.id, d.end, d.peak_time, d.peak_probability) for d in parts
    ]


def test_out_of_order_windows_are_refused():
    t = trig()
    t.feed(np.array([5, 6]), probs([0.1, 0.1]))
    with pytest.raises(ValueError, match="time order"):
        t.feed(np.array([6, 7]), probs([0.1, 0.1]))


def test_ids_are_stable():
    a = trig().feed(np.arange(5), probs([0.1, 0.95, 0.1, 0.1, 0.1]))
    b = trig().feed(np.arange(5), probs([0.1, 0.99, 0.1, 0.1, 0.1]))
    assert a[0].id == b[0].id  # same station, start and model: same detection


def test_bad_thresholds_are_rejected():
    with pytest.raises(ValueError, match="on-threshold"):
        TriggerParams(on=1.5)
    with pytest.raises(ValueError, match="off-threshold"):
        TriggerParams(on=0.5, off=0.7)
