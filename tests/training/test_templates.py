"""Reading, validating, cleaning and splitting real HDF5 templates."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest

from quakescan.training.augment import AugmentConfig, augment_batch
from quakescan.training.templates import (
    TemplatesError,
    eval_crop_starts,
    random_crop_starts,
    read_templates,
    split_templates,
    station_from_source,
    write_templates,
)


@pytest.fixture(scope="module")
def small(data_dir):
    return read_templates(data_dir / "templates_small.h5")


def _copy(src, dst, mutate=None):
    with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
        for k, v in f.attrs.items():
            g.attrs[k] = v
        for name in f:
            g.create_dataset(name, data=f[name][()])
        if mutate:
            mutate(g)
    return dst


def test_reads_real_templates(small):
    assert small.counts() == {"noise": 90, "earthquake": 60}
    assert small.windows.shape == (150, 3, 1000)
    assert small.windows.dtype == np.float32
    assert small.sampling_rate_hz == 100.0 and small.component_order == "ENZ"
    assert len(small.sha256) == 64
    # Onsets known for earthquakes only, inside the window (0.5-2.5 s before P).
    ev = small.labels == 1
    assert (small.onset_sample[ev] >= 50).all() and (small.onset_sample[ev] <= 250).all()
    assert (small.onset_sample[~ev] == -1).all()


def test_station_ids_parsed_from_real_source_names(small):
    assert station_from_source("ncal:BG.ACR.20120825T051459.mseed") == "BG.ACR"
    assert station_from_source("ncal_pre_event:NC.BBG.20071020T014251.mseed:1") == "NC.BBG"
    assert station_from_source("stead:109C.TA_20060723155859_EV") == "TA.109C"
    assert all(small.station), "every window of the real file maps to a station"


def test_nan_and_all_zero_windows_are_dropped_and_counted(data_dir, tmp_path):
    def mutate(g):
        eq = g["earthquakes"][()]
        eq[0, 1, 10] = np.nan
        eq[1] = 0.0
        eq[2, 2, 5] = np.inf
        del g["earthquakes"]
        g.create_dataset("earthquakes", data=eq)

    path = _copy(data_dir / "templates_small.h5", tmp_path / "bad.h5", mutate)
    t = read_templates(path)
    assert t.dropped == {"non_finite": 2, "all_zero": 1}
    assert t.counts() == {"noise": 90, "earthquake": 57}
    assert np.isfinite(t.windows).all()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda g: g.__delitem__("noise"), "dataset 'noise' is missing"),
        (
            lambda g: (
                g.__delitem__("noise"),
                g.create_dataset("noise", data=np.zeros((5, 2, 1000), "f4")),
            ),
            "expected (N, 3, samples)",
        ),
        (
            lambda g: (
                g.__delitem__("noise"),
                g.create_dataset("noise", data=np.zeros((5, 3000), "f4")),
            ),
            "expected 3 dimensions",
        ),
        (
            lambda g: (
                g.__delitem__("noise"),
                g.create_dataset("noise", data=np.zeros((5, 3, 900), "f4")),
            ),
            "different window lengths",
        ),
        (
            lambda g: (
                g.__delitem__("noise"),
                g.create_dataset("noise", data=np.array([[["a"] * 10] * 3] * 2, "S1")),
            ),
            "expected float",
        ),
        (
            lambda g: g.create_dataset("clusters", data=np.zeros(3, "i4")),
            "one cluster per earthquake",
        ),
        (lambda g: g.attrs.__setitem__("component_order", "XYZ"), "component_order"),
        (lambda g: g.attrs.__setitem__("sampling_rate", -1.0), "sampling_rate"),
    ],
)
def test_malformed_files_name_the_problem(data_dir, tmp_path, mutate, message):
    path = _copy(data_dir / "templates_small.h5", tmp_path / "bad.h5", mutate)
    with pytest.raises(TemplatesError) as exc:
        read_templates(path)
    assert message in str(exc.value)
    assert "bad.h5" in str(exc.value)


def test_not_hdf5_and_missing_file(tmp_path):
    p = tmp_path / "x.h5"
    p.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(TemplatesError, match="not a readable HDF5"):
        read_templates(p)
    with pytest.raises(FileNotFoundError):
        read_templates(tmp_path / "missing.h5")


def test_clusters_become_classes(data_dir, tmp_path):
    def mutate(g):
        g.create_dataset("clusters", data=np.arange(60, dtype="i4") % 3)

    t = read_templates(_copy(data_dir / "templates_small.h5", tmp_path / "c.h5", mutate))
    assert t.class_names == ["noise", "cluster0", "cluster1", "cluster2"]
    assert t.counts() == {"noise": 90, "cluster0": 20, "cluster1": 20, "cluster2": 20}


def test_defaults_when_attributes_absent(data_dir, tmp_path):
    def mutate(g):
        for k in list(g.attrs):
            del g.attrs[k]

    t = read_templates(_copy(data_dir / "templates_small.h5", tmp_path / "seed.h5", mutate))
    assert t.sampling_rate_hz == 100.0 and t.component_order == "ENZ"


def test_station_split_is_seeded_stratified_and_disjoint(small):
    a = split_templates(small, seed=3)
    b = split_templates(small, seed=3)
    c = split_templates(small, seed=4)
    assert a.by == "station"
    assert all(np.array_equal(getattr(a, s), getattr(b, s)) for s in ("train", "val", "test"))
    assert not all(np.array_equal(getattr(a, s), getattr(c, s)) for s in ("train", "val", "test"))
    allidx = np.concatenate([a.train, a.val, a.test])
    assert sorted(allidx) == list(range(len(small)))
    st = {s: set(small.station[getattr(a, s)]) for s in ("train", "val", "test")}
    assert (
        not (st["train"] & st["test"])
        and not (st["train"] & st["val"])
        and not (st["val"] & st["test"])
    )
    for part in (a.val, a.test):  # both classes in every held-out split, near the target share
        counts = np.bincount(small.labels[part], minlength=2)
        assert (counts > 0).all()
        assert 0.08 < len(part) / len(small) < 0.25


def test_context_windows_crop_with_onset_in_range(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 2000)).astype(np.float32)
    p = write_templates(
        tmp_path / "ctx.h5",
        {
            "earthquakes": {
                "windows": w[:2],
                "p_sample": [800, 800],
                "source": ["a", "b"],
                "station": ["X.A", "X.B"],
            },
            "noise": {"windows": w[2:], "source": ["c", "d"], "station": ["X.A", "X.B"]},
        },
        sampling_rate_hz=100.0,
        component_order="ENZ",
    )
    t = read_templates(p)
    ev = np.flatnonzero(t.labels == 1)
    noise = np.flatnonzero(t.labels == 0)
    starts = random_crop_starts(t, np.repeat(ev, 100), 1000, (0.3, 6.0), rng)
    onset_in_window = 800 - starts
    assert onset_in_window.min() >= 30 and onset_in_window.max() <= 600
    assert onset_in_window.max() - onset_in_window.min() > 400, "a real spread of time shifts"
    noise_starts = random_crop_starts(t, np.repeat(noise, 100), 1000, (0.3, 6.0), rng)
    assert noise_starts.min() >= 0 and noise_starts.max() <= 1000 and len(set(noise_starts)) > 50
    pairs = eval_crop_starts(t, 1000, (1.0, 2.5))
    assert (ev[0], 700) in pairs and (ev[0], 550) in pairs
    assert {(noise[0], 0), (noise[0], 500), (noise[0], 1000)} <= set(pairs)  # start, middle, end
    with pytest.raises(TemplatesError, match="shorter than the model window"):
        eval_crop_starts(t, 3000, (1.0,))


def test_augmentation_keeps_labels_meaningful(small):
    rng = np.random.default_rng(0)
    idx = np.r_[np.flatnonzero(small.labels == 0)[:40], np.flatnonzero(small.labels == 1)[:40]]
    x, y = small.windows[idx], small.labels[idx]
    cfg = AugmentConfig(vertical_only_p=0.5, drop_channel_p=0.5, mix_p=1.0)
    out = augment_batch(
        x,
        y,
        small.windows[small.labels == 0][:10],
        cfg,
        rng,
        sampling_rate_hz=100.0,
        vertical_index=2,
        shift=True,
    )
    assert out.shape == x.shape and out is not x
    live = np.abs(out).max(axis=2) > 0
    assert live.any(axis=1).all(), "no window loses all its channels"
    assert live[:, 2].mean() > 0.6, "the vertical survives in most windows"
    # Channel zeroing hits both classes alike (no 'zero channels means noise' shortcut).
    zeroed = ~live[:, 0]
    assert zeroed[y == 0].mean() > 0.2 and zeroed[y == 1].mean() > 0.2
    assert not np.array_equal(out, x)
    # Disabled augmentation returns the input untouched.
    same = augment_batch(
        x,
        y,
        x,
        AugmentConfig(enabled=False),
        rng,
        sampling_rate_hz=100.0,
        vertical_index=2,
        shift=True,
    )
    assert same is x


def _only(**kw):
    """An AugmentConfig with everything off but what is named."""
    base = dict(
        mix_p=0.0,
        noisy_horizontals_p=0.0,
        swap_horizontals_p=0.0,
        scale_range=(1.0, 1.0),
        polarity_flip_p=0.0,
        vertical_only_p=0.0,
        balance_vertical_only=False,
        drop_channel_p=0.0,
    )
    return AugmentConfig(**{**base, **kw})


def test_glitch_augmentation_adds_transients_to_noise_windows_only(small):
    """Spikes, steps and decaying pulses go into real noise windows (labelled noise), never
    into event windows, at the asked amplitude relative to the window's own noise."""
    rng = np.random.default_rng(3)
    idx = np.r_[np.flatnonzero(small.labels == 0)[:30], np.flatnonzero(small.labels == 1)[:30]]
    x, y = small.windows[idx].astype(np.float32), small.labels[idx]
    off = dict(
        shift=False, sampling_rate_hz=100.0, vertical_index=2
    )  # everything else switched off, so the differences are the glitches
    for kind in ("spike", "step", "pulse"):
        cfg = _only(glitch_p=1.0, glitch_amp=(50.0, 50.0), glitch_kinds=(kind,))
        out = augment_batch(x, y, x[:0], cfg, rng, **off)
        d = (out - x).astype(np.float64)
        assert not d[y == 1].any(), "event windows are left alone"
        changed = np.abs(d[y == 0]).max(axis=(1, 2))
        assert (changed > 0).all(), f"every noise window got a {kind}"
        rms = np.sqrt((np.diff(x[y == 0].astype(np.float64), axis=-1) ** 2).mean(axis=(1, 2)))
        np.testing.assert_allclose(changed, 50.0 * rms, rtol=1e-3)
        touched = np.count_nonzero(np.abs(d[y == 0]).max(axis=2) > 0, axis=1)
        assert set(touched) <= {1, 3}  # one channel, or all three
        if kind == "spike":
            assert (np.count_nonzero(d[y == 0], axis=2) <= 1).all()
    # glitch_classes="all": both classes alike (no "a glitch means noise" shortcut).
    cfg = _only(glitch_p=1.0, glitch_classes="all")
    d = augment_batch(x, y, x[:0], cfg, rng, **off) - x
    assert (np.abs(d).max(axis=(1, 2)) > 0).all()
    with pytest.raises(ValueError, match="glitch_kinds"):
        AugmentConfig(glitch_kinds=("earthquake",))
    with pytest.raises(ValueError, match="glitch_classes"):
        AugmentConfig(glitch_classes="events")


def test_burst_glitches_are_short_oscillations_in_noise_windows(small):
    """The 'burst' kind: one to four short wavelets (machinery, footsteps, traffic), in real
    noise windows only unless glitch_classes='all'."""
    rng = np.random.default_rng(4)
    idx = np.r_[np.flatnonzero(small.labels == 0)[:30], np.flatnonzero(small.labels == 1)[:30]]
    x, y = small.windows[idx].astype(np.float32), small.labels[idx]
    off = dict(shift=False, sampling_rate_hz=100.0, vertical_index=2)
    cfg = _only(glitch_p=1.0, glitch_amp=(20.0, 20.0), glitch_kinds=("burst",))
    d = (augment_batch(x, y, x[:0], cfg, rng, **off) - x).astype(np.float64)
    assert not d[y == 1].any(), "event windows are left alone"
    noise = d[y == 0]
    assert (np.abs(noise).max(axis=(1, 2)) > 0).all()
    for w in noise:
        ch = w[np.abs(w).max(axis=1) > 0][0]
        # Oscillatory (both signs, many zero crossings) and short: most of its energy lies
        # in under 40 % of the 10 s window, even with four bursts.
        assert ch.max() > 0 > ch.min()
        assert np.count_nonzero(np.diff(np.sign(ch[np.abs(ch) > 1e-3 * np.abs(ch).max()]))) > 4
        e = np.sort(ch**2)[::-1]
        assert np.searchsorted(np.cumsum(e) / e.sum(), 0.95) < 0.4 * len(ch)
    cfg = _only(glitch_p=1.0, glitch_kinds=("burst",), glitch_classes="all")
    d = augment_batch(x, y, x[:0], cfg, rng, **off) - x
    assert (np.abs(d).max(axis=(1, 2)) > 0).all(), "both classes alike"


def test_dead_channel_augmentation_keeps_one_live_channel_in_both_classes(small):
    """dead_channel_p: one or two live channels become white noise (a dead sensor's
    digitiser noise), in both classes alike; at least one live channel keeps its data, and
    vertical-only windows (one live channel) are left alone."""
    rng = np.random.default_rng(5)
    idx = np.r_[np.flatnonzero(small.labels == 0)[:40], np.flatnonzero(small.labels == 1)[:40]]
    x, y = small.windows[idx].astype(np.float32), small.labels[idx]
    x[:5, :2] = 0.0  # five vertical-only windows
    out = augment_batch(
        x,
        y,
        x[:0],
        _only(dead_channel_p=1.0),
        rng,
        shift=False,
        sampling_rate_hz=100.0,
        vertical_index=2,
    )
    kept = (out == x).all(axis=2)  # [n, c] channels left as they were
    assert kept[:5].all(), "vertical-only windows have nothing to spare"
    three = np.flatnonzero((np.abs(x).max(axis=2) > 0).all(axis=1))  # three live channels
    assert len(three) > 20
    n_dead = 3 - kept[three].sum(axis=1)
    assert set(n_dead) == {1, 2}, "one or two channels, never all three"
    assert (n_dead[y[three] == 0] > 0).all() and (n_dead[y[three] == 1] > 0).all()
    i, ch = next((i, c) for i in three for c in range(3) if not kept[i, c])
    np.testing.assert_allclose(out[i, ch].std(), x[i, ch].std(), rtol=0.15)
    # White: no memory from one sample to the next, unlike real ground motion.
    r = np.corrcoef(out[i, ch, :-1], out[i, ch, 1:])[0, 1]
    assert abs(r) < 0.15


# `quakescan` with torch blocked: an import of torch raises ImportError, as where it is
# not installed (the runtime image, an operator's laptop).
_NO_TORCH = (
    "import sys; sys.modules['torch'] = None; "
    "from quakescan.serving.cli import main; sys.argv[0] = 'quakescan'; main()"
)


def _quakescan_without_torch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _NO_TORCH, *args], capture_output=True, text=True, timeout=300
    )


def test_templates_commands_run_without_torch(data_dir):
    res = _quakescan_without_torch("templates", "info", str(data_dir / "templates_small.h5"))
    assert res.returncode == 0, res.stderr
    assert "classes          {'noise': 90, 'earthquake': 60}" in res.stdout
    assert "window           1000 samples (10 s)" in res.stdout
    res = _quakescan_without_torch("templates", "build", "--help")
    assert res.returncode == 0, res.stderr
    # The block is real: a command that needs torch says so.
    res = _quakescan_without_torch(
        "train",
        "convnetquake",
        "--templates",
        str(data_dir / "templates_small.h5"),
        "--out",
        "unused",
    )
    assert res.returncode != 0 and "torch" in res.stderr
