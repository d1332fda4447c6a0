"""Training on real templates: learns, checkpoints, resumes exactly, evaluates, exports."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from quakescan.detector.model import OnnxModel
from quakescan.detector.spec import SPEC_KEY, SpecError
from quakescan.serving.cli import cli
from quakescan.training.evaluate import evaluate
from quakescan.training.export import export
from quakescan.training.train import TrainConfig, train


def _cfg(data_dir, out, epochs, **kw):
    return TrainConfig(
        templates=str(data_dir / "templates_small.h5"),
        out=str(out),
        epochs=epochs,
        repeats=4,
        threads=2,
        patience=100,
        **kw,
    )


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = train(_cfg(data_dir, out, 6), progress=False)
    return out, result


def test_training_beats_chance_on_held_out_stations(run):
    out, result = run
    assert result["split"].by == "station"
    ev = evaluate(out / "best.pt")
    m = ev.metrics
    assert m["n_event"] > 0 and m["n_noise"] > 0
    # Chance is 0.5 ROC-AUC; held-out windows come from stations never trained on.
    assert m["roc_auc"] > 0.85, m
    assert m["accuracy"] > 0.75, m


def test_run_directory_holds_what_a_model_builder_needs(run):
    out, result = run
    for name in (
        "best.pt",
        "last.pt",
        "history.json",
        "split.json",
        "config.json",
        "learning_curve.png",
    ):
        assert (out / name).exists(), name
    hist = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in hist] == list(range(1, 7))
    assert {
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "val_recall",
        "val_fpr",
    } <= hist[0].keys()
    ck = torch.load(out / "last.pt", weights_only=False)
    assert {"model", "optimizer", "epoch", "config", "split"} <= ck.keys()
    assert ck["config"]["model"]["architecture"] == "convnetquake"
    assert (out / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_gives_the_same_model_as_an_uninterrupted_run(data_dir, tmp_path):
    train(_cfg(data_dir, tmp_path / "straight", 3), progress=False)
    train(_cfg(data_dir, tmp_path / "resumed", 3), progress=False, stop_after=2)  # interrupted
    train(_cfg(data_dir, tmp_path / "resumed", 3), resume=True, progress=False)
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)
    assert b["epoch"] == 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["history"][-1]["val_loss"] == b["history"][-1]["val_loss"]


def test_resume_without_checkpoint_is_a_clear_error(data_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(_cfg(data_dir, tmp_path / "none", 1), resume=True, progress=False)


def test_early_stopping_stops_when_validation_loss_stalls(data_dir, tmp_path):
    cfg = _cfg(data_dir, tmp_path / "es", 40)
    cfg.patience = 2
    cfg.lr = 0.05  # too large on purpose: validation loss will not keep improving
    result = train(cfg, progress=False)
    assert result["stopped_early"]
    assert len(result["history"]) < 40


def test_window_longer_than_templates_is_rejected(data_dir, tmp_path):
    cfg = _cfg(data_dir, tmp_path / "x", 1)
    cfg.model.window_samples = 2000
    with pytest.raises(ValueError, match="shorter than the model's"):
        train(cfg, progress=False)


def test_export_is_self_contained_and_matches_pytorch(run, data_dir, tmp_path):
    out, _ = run
    r = export(out, tmp_path / "m.onnx", name="cnq-test", version="7", trained_on="templates_small")
    assert r.max_abs_diff < 1e-4 and r.n_parity_windows > 20
    m = onnx.load(str(r.path))
    onnx.checker.check_model(m, full_check=True)
    assert any(p.key == SPEC_KEY for p in m.metadata_props)
    sess = OnnxModel(r.path, device="cpu")
    s = sess.spec
    assert (s.name, s.version, s.channel_order, s.window_samples) == ("cnq-test", "7", "ENZ", 1000)
    assert s.class_names == ("noise", "earthquake")
    assert s.preparation.bandpass_hz == (2.0, 25.0)
    assert s.training["templates_sha256"] and "test" in s.metrics
    assert 0.5 <= s.trigger.on < 1 and s.trigger.off < s.trigger.on
    # The default threshold is the highest that keeps validation recall at the 0.95 target.
    assert s.metrics["val"]["recall"] >= 0.95 or s.trigger.on == 0.5
    assert "validation recall >= 0.95" in s.metrics["threshold_rule"]
    # The onset estimate of a detection is calibrated on validation events, inside the window.
    assert 0.3 <= s.onset_offset_s <= 9.5
    # Dynamic batch axis, raw windows in, probabilities out, on real windows.
    from quakescan.training.templates import read_templates

    t = read_templates(data_dir / "templates_small.h5")
    for n in (1, 7, 300):
        p = sess.predict(t.windows[np.arange(n) % len(t)])
        assert p.shape == (n, 2) and np.allclose(p.sum(1), 1, atol=1e-5)
    # All-zero channels (vertical-only station) give finite probabilities.
    x = t.windows[:4].copy()
    x[:, :2] = 0
    assert np.isfinite(sess.predict(x)).all()


def test_evaluate_and_export_commands(run, tmp_path):
    out, _ = run
    runner = CliRunner()
    res = runner.invoke(
        cli, ["export", str(out), "--out", str(tmp_path / "c.onnx"), "--name", "cli-model"]
    )
    assert res.exit_code == 0, res.output
    assert "onnx.checker passed" in res.output and "parity" in res.output
    res = runner.invoke(
        cli,
        [
            "evaluate",
            str(tmp_path / "c.onnx"),
            "--run",
            str(out),
            "--json",
            str(tmp_path / "e.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "ROC-AUC" in res.output and "confusion matrix" in res.output
    d = json.loads((tmp_path / "e.json").read_text())
    assert {"precision", "recall", "f1", "accuracy", "roc_auc", "false_positive_rate"} <= d[
        "metrics"
    ].keys()
    assert len(d["confusion_matrix"]) == 2
    # The ONNX evaluation on the run's test split equals the checkpoint's at the same threshold.
    thr = d["metrics"]["threshold"]
    ck = evaluate(out / "best.pt", threshold=thr)
    assert ck.metrics["tp"] == d["metrics"]["tp"] and ck.metrics["fp"] == d["metrics"]["fp"]


def test_spec_is_required_and_validated(run, tmp_path):
    out, _ = run
    r = export(out, tmp_path / "ok.onnx")
    m = onnx.load(str(r.path))
    del m.metadata_props[:]
    onnx.save(m, str(tmp_path / "nospec.onnx"))
    with pytest.raises(SpecError, match="no 'quakescan.spec' metadata"):
        OnnxModel(tmp_path / "nospec.onnx", device="cpu")
    spec = json.loads(r.spec.to_json())
    for mutate, message in [
        (lambda d: d.pop("channel_order"), "missing required field(s): channel_order"),
        (
            lambda d: d.__setitem__("class_names", ["earthquake", "noise"]),
            "must start with 'noise'",
        ),
        (lambda d: d.__setitem__("window_samples", 999), "input shape"),
        (lambda d: d.__setitem__("format_version", 99), "format_version 99"),
        (lambda d: d.__setitem__("channel_order", "XYZ"), "channel_order"),
        (lambda d: d["trigger"].__setitem__("on", 1.5), "trigger.on"),
    ]:
        d = json.loads(json.dumps(spec))
        mutate(d)
        m2 = onnx.load(str(r.path))
        for p in m2.metadata_props:
            if p.key == SPEC_KEY:
                p.value = json.dumps(d)
        onnx.save(m2, str(tmp_path / "bad.onnx"))
        with pytest.raises(SpecError) as exc:
            OnnxModel(tmp_path / "bad.onnx", device="cpu")
        assert message in str(exc.value), (message, str(exc.value))
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x01garbage")
    with pytest.raises(SpecError, match="cannot load"):
        OnnxModel(tmp_path / "garbage.onnx", device="cpu")
    with pytest.raises(FileNotFoundError, match="neither a file nor a shipped model"):
        OnnxModel(tmp_path / "missing.onnx", device="cpu")


def test_train_command_end_to_end(data_dir, tmp_path):
    res = CliRunner().invoke(
        cli,
        [
            "train",
            "convnetquake",
            "--templates",
            str(data_dir / "templates_small.h5"),
            "--out",
            str(tmp_path / "r"),
            "--epochs",
            "2",
            "--threads",
            "2",
            "--seed",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "trained 2 epochs" in res.output
    assert (tmp_path / "r" / "best.pt").exists()


def test_slow_earthquake_model_trains_and_exports(data_dir, tmp_path):
    cfg = _cfg(data_dir, tmp_path / "slow", 2)
    cfg.model.architecture = "slow-earthquake"
    cfg.repeats = 1
    train(cfg, progress=False)
    r = export(
        tmp_path / "slow", tmp_path / "slow.onnx", trained_on="earthquakes vs noise, not tremor"
    )
    assert r.max_abs_diff < 1e-4
    s = OnnxModel(r.path, device="cpu").spec
    assert s.architecture == "slow-earthquake" and s.trained_on.startswith("earthquakes")


def test_export_rebuilds_an_older_model_file(data_dir, tmp_path):
    """A model file exported by quakescan 0.1 (depthwise FIR) is rebuilt as this version's
    graph: same spec, same probabilities on real windows, no depthwise convolution left."""
    import onnxruntime as ort

    from quakescan.training.templates import read_templates

    old = data_dir / "convnetquake_quakescan0.1.onnx"
    new = tmp_path / "rebuilt.onnx"
    res = CliRunner().invoke(
        cli,
        [
            "export",
            str(old),
            "--out",
            str(new),
            "--templates",
            str(data_dir / "templates_small.h5"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "max |diff|" in res.output
    a, b = onnx.load(str(old)), onnx.load(str(new))
    assert {p.key: p.value for p in a.metadata_props} == {p.key: p.value for p in b.metadata_props}
    groups = [
        attr.i
        for n in b.graph.node
        if n.op_type == "Conv"
        for attr in n.attribute
        if attr.name == "group"
    ]
    assert all(g == 1 for g in groups)
    x = np.asarray(read_templates(data_dir / "templates_small.h5").windows, dtype=np.float32)
    pa, pb = (
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"windows": x})[
            0
        ]
        for p in (old, new)
    )
    assert np.abs(pa - pb).max() < 1e-4
    assert ((pa[:, 1] > 0.5) == (pb[:, 1] > 0.5)).all()
    # Without real windows to check against, it refuses, naming what is missing.
    res = CliRunner().invoke(cli, ["export", str(old), "--out", str(tmp_path / "x.onnx")])
    assert res.exit_code != 0 and "--templates" in res.output


def test_weight_averaging_resumes_exactly_and_shares_a_split_across_seeds(run, data_dir, tmp_path):
    """ema_decay: checkpoints hold the averaged weights (what export uses) and the raw ones
    (what training continues from); an interrupted run resumes to the same model. split_seed
    lets runs with other training seeds be compared on the same held-out stations."""
    kw = dict(ema_decay=0.9, seed=5, split_seed=0)
    train(_cfg(data_dir, tmp_path / "straight", 3, **kw), progress=False)
    train(_cfg(data_dir, tmp_path / "resumed", 3, **kw), progress=False, stop_after=2)
    train(_cfg(data_dir, tmp_path / "resumed", 3, **kw), resume=True, progress=False)
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)
    for key in ("model", "raw_model"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    assert a["ema_n_averaged"] == b["ema_n_averaged"] > 0
    assert any(not torch.equal(a["model"][k], a["raw_model"][k]) for k in a["model"])
    # The exported network is the averaged one.
    r = export(tmp_path / "straight", tmp_path / "ema.onnx")
    assert r.max_abs_diff < 1e-4
    # Training seed 5 with split_seed 0 holds out the same stations as the seed-0 run.
    out, _ = run
    assert json.loads((tmp_path / "straight" / "split.json").read_text()) == json.loads(
        (out / "split.json").read_text()
    )
    with pytest.raises(ValueError, match="ema_decay"):
        train(_cfg(data_dir, tmp_path / "bad", 1, ema_decay=1.0), progress=False)


def test_runs_of_several_seeds_export_as_one_ensemble_graph(run, data_dir, tmp_path):
    """Several checkpoints with one split -> one ONNX file whose probabilities are the mean
    of the members'; its spec names the members; the PyTorch model can be rebuilt from it;
    members with another split are refused, naming the file."""
    from quakescan.training.export import net_from_onnx
    from quakescan.training.templates import read_templates

    out, _ = run
    second = tmp_path / "seed7"
    train(_cfg(data_dir, second, 2, seed=7, split_seed=0), progress=False)
    one_a = export(out, tmp_path / "a.onnx")
    one_b = export(second, tmp_path / "b.onnx")
    ens = export([out, second], tmp_path / "ens.onnx", target_fpr=0.01)
    assert ens.max_abs_diff < 1e-4
    members = ens.spec.training["ensemble_members"]
    assert [m["seed"] for m in members] == [0, 7]
    t = read_templates(data_dir / "templates_small.h5")
    x = t.windows[:64, :, :1000]
    pa, pb, pe = (OnnxModel(r.path, device="cpu").predict(x) for r in (one_a, one_b, ens))
    np.testing.assert_allclose(pe, (pa + pb) / 2, atol=1e-5)
    assert not np.allclose(pa, pb, atol=1e-3), "the members are different networks"
    # The threshold rule: validation false-positive rate at most 1 %, as low as that allows.
    assert "false-positive rate <= 0.01" in ens.spec.metrics["threshold_rule"]
    assert ens.spec.metrics["val"]["false_positive_rate"] <= 0.01
    # The benchmark's PyTorch twin is rebuilt from the file alone.
    net, how = net_from_onnx(ens.path)
    assert how == "by name"
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.from_numpy(x)).numpy(), pe, atol=1e-4)
    # A member that held out other stations is refused.
    other = tmp_path / "seed3"
    train(_cfg(data_dir, other, 1, seed=3), progress=False)
    with pytest.raises(ValueError, match="seed3.*same split_seed"):
        export([out, other], tmp_path / "bad.onnx")
    res = CliRunner().invoke(
        cli,
        [
            "export",
            str(out),
            str(second),
            "--out",
            str(tmp_path / "c.onnx"),
            "--target-fpr",
            "0.01",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "ensemble of 2 members" in res.output


def test_threshold_for_fpr_on_known_scores():
    """export --target-fpr's rule: the lowest 4-decimal threshold whose false-positive rate
    on noise windows stays at or below the target, also after the spec's rounding."""
    from quakescan.training.export import threshold_for_fpr

    # Noise windows with event probabilities 0.1, 0.8, 0.6, and one event window.
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.05, 0.95]])
    y = np.array([0, 0, 0, 1])
    assert threshold_for_fpr(probs, y, 0.0) == pytest.approx(0.8001)  # no noise window above
    assert threshold_for_fpr(probs, y, 0.34) == pytest.approx(0.6001)  # one of three allowed
    assert threshold_for_fpr(probs, y, 1.0) == 0.5  # every noise window allowed: the floor
    assert threshold_for_fpr(probs[3:], y[3:], 0.01) == 0.5  # no noise windows at all
    # A noise score that rounds down at 4 decimals: the threshold still lies above it.
    t = threshold_for_fpr(np.array([[0.19996, 0.80004]]), np.array([0]), 0.0)
    assert round(t, 4) == pytest.approx(0.8001) and round(t, 4) > 0.80004
    # 0.29 * 100 is 28.999... in floating point: still 29 false positives allowed, not 28.
    scores = np.linspace(0.01, 0.99, 100)
    t = threshold_for_fpr(np.stack([1 - scores, scores], 1), np.zeros(100, int), 0.29)
    assert np.mean(scores >= t) == pytest.approx(0.29)
