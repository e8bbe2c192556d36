"""The evaluate CLI end to end on a tiny 'folder' dataset: --scores (npy, 16-bit PNG), --model."""
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flowclas_ros import jsonio
from flowclas_ros.evaluation import evaluate as ev
from flowclas_ros.evaluation.components import ComponentMetrics
from flowclas_ros.evaluation.metrics import ExactPixelMetrics, pixel_metrics
from flowclas_ros.tools import evaluate as evaluate_cli

NAMES = ["a", "b", "seq/c", "seq/d"]  # nested names: score maps live in matching subfolders
H, W = 72, 96


@pytest.fixture
def folder_set(tmp_path):
    """ROOT/images/<name>.png + ROOT/labels/<name>.png (0/1/255), and per-frame scores."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    scores = {}
    for i, name in enumerate(NAMES):
        img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        lab = np.zeros((H, W), np.uint8)
        y, x = 10 + 5 * i, 20 + 8 * i
        lab[y:y + 24, x:x + 30] = 1  # 720 px object
        lab[:6] = 255
        for sub, arr in (("images", img), ("labels", lab)):
            p = root / sub / f"{name}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(p)
        s = rng.random((H, W)) * 0.5 + 0.4 * (lab == 1)
        s[50:70, 2:28] += 0.3 + 0.1 * i  # a false-positive blob (PPV < 1 once it joins)
        s[lab == 255] = np.nan  # void may hold anything
        scores[name] = s.astype(np.float32)
    return root, scores


def _labels(root):
    return {n: np.array(Image.open(root / "labels" / f"{n}.png")) for n in NAMES}


def _expected(root, scores, track=None):
    labs = _labels(root)
    exact = ExactPixelMetrics()
    for n in NAMES:
        exact.update(scores[n], labs[n])
    r = exact.result()
    out = dict(r.metrics())
    if track:
        comp = ComponentMetrics(r.best_f1_threshold, track)
        for n in NAMES:
            comp.update(scores[n], labs[n])
        out.update(comp.compute())
    return out


def _write_npy(dir_, scores):
    for n, s in scores.items():
        p = dir_ / f"{n}.npy"
        p.parent.mkdir(parents=True, exist_ok=True)
        np.save(p, s)


def _read(out):
    return json.loads((out / "metrics.json").read_text())


def test_scores_npy_end_to_end(folder_set, tmp_path, capsys):
    root, scores = folder_set
    _write_npy(tmp_path / "scores", scores)
    out = tmp_path / "out"
    rc = evaluate_cli.main(["--dataset", "folder", "--root", str(root),
                            "--scores", str(tmp_path / "scores"),
                            "--out", str(out), "--components", "obstacle", "--quiet"])
    assert rc == 0
    m = _read(out)
    want = _expected(root, scores, "obstacle")
    for k in ("auprc", "fpr95", "auroc", "siou", "ppv", "mean_f1"):
        assert m[k] == pytest.approx(want[k], abs=1e-12), k
        assert 0.0 <= m[k] <= 1.0
    assert m["n_images"] == 4 and m["n_pixels"] == 4 * (H - 6) * W and m["mode"] == "exact"
    assert m["dataset"] == "folder" and m["elapsed_s"] >= 0 and m["peak_rss_mb"] > 0
    assert m["n_gt_components"] == 4
    assert (out / "curves.png").stat().st_size > 0 and (out / "examples.png").stat().st_size > 0
    assert "auprc" in capsys.readouterr().out


def test_scores_png16_and_streaming(folder_set, tmp_path):
    root, scores = folder_set
    q = {}
    for n, s in scores.items():
        v = np.round(np.nan_to_num(s, nan=0.0).clip(0, 1) * 65535).astype(np.uint16)
        p = tmp_path / "png" / f"{n}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(v).save(p)
        q[n] = v.astype(np.float32) / 65535
    assert Image.open(tmp_path / "png" / "a.png").mode.startswith("I")
    out = tmp_path / "out"
    evaluate_cli.main(["--dataset", "folder", "--root", str(root),
                       "--scores", str(tmp_path / "png"),
                       "--out", str(out), "--components", "anomaly", "--quiet"])
    m, want = _read(out), _expected(root, q, "anomaly")
    for k in ("auprc", "fpr95", "auroc", "siou", "ppv", "mean_f1"):
        assert m[k] == pytest.approx(want[k], abs=1e-12), k
    # streaming with default bins: within 1e-4 of the exact numbers on the same maps
    evaluate_cli.main(["--dataset", "folder", "--root", str(root),
                       "--scores", str(tmp_path / "png"),
                       "--out", str(tmp_path / "st"), "--streaming", "--components", "none",
                       "--quiet", "--no-plots"])
    st = _read(tmp_path / "st")
    assert st["mode"] == "streaming" and "siou" not in st
    for k in ("auprc", "fpr95", "auroc"):
        assert st[k] == pytest.approx(want[k], abs=1e-4)
    assert not (tmp_path / "st" / "curves.png").exists()


def test_missing_and_missized_maps_are_clear_errors(folder_set, tmp_path, capsys):
    root, scores = folder_set
    d = tmp_path / "scores"
    _write_npy(d, {n: s for n, s in scores.items() if n != "seq/c"})
    args = ["--dataset", "folder", "--root", str(root), "--scores", str(d), "--out",
            str(tmp_path / "o"), "--quiet"]
    with pytest.raises(SystemExit) as e:
        evaluate_cli.main(args)
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "seq/c" in err and "no score map" in err
    np.save(d / "seq" / "c.npy", scores["seq/c"][:-1])
    with pytest.raises(SystemExit):
        evaluate_cli.main(args)
    err = capsys.readouterr().err
    assert "seq/c" in err and "(71, 96)" in err and "(72, 96)" in err
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_limit_and_library_function(folder_set):
    root, scores = folder_set
    ds = ev.load_dataset("folder", root, "test")
    labs = _labels(root)
    # an iterable of maps in dataset order, limited to the first two frames
    got = ev.evaluate_scores((scores[n] for n in ds.names), ds, limit=2)
    want = pixel_metrics([scores[n] for n in ds.names[:2]], [labs[n] for n in ds.names[:2]])
    assert {k: got[k] for k in want} == pytest.approx(want) and got["n_images"] == 2
    with pytest.raises(ev.EvaluationError, match="ended after 1"):
        ev.evaluate_scores(iter([scores[ds.names[0]]]), ds)


def _tiny_checkpoint(path):
    from flowclas_ros.model.backbones import BackboneConfig
    from flowclas_ros.model.checkpoint import model_payload, save_checkpoint
    from flowclas_ros.model.flow import FlowConfig
    from flowclas_ros.model.flowclas import FlowCLAS, ModelConfig

    model = FlowCLAS(ModelConfig(backbone=BackboneConfig(name="tiny"), flow=FlowConfig(steps=2)))
    save_checkpoint(path, model_payload(model))
    return model


def test_model_checkpoint_end_to_end(folder_set, tmp_path):
    import torch

    root, _ = folder_set
    model = _tiny_checkpoint(tmp_path / "ckpt.pt").eval()
    out = tmp_path / "out"
    rc = evaluate_cli.main(["--dataset", "folder", "--root", str(root),
                            "--model", str(tmp_path / "ckpt.pt"),
                            "--out", str(out), "--quiet", "--save-scores",
                            "--components", "obstacle"])
    assert rc == 0
    m = _read(out)
    ds = ev.load_dataset("folder", root)
    maps = {}
    with torch.no_grad():
        for smp in ds:
            x = torch.from_numpy(smp.image).permute(2, 0, 1)[None].float() / 255
            maps[smp.name] = model(x)[0].numpy()
    want = _expected(root, maps, "obstacle")
    for k in ("auprc", "fpr95", "auroc", "siou", "ppv", "mean_f1"):
        assert m[k] == pytest.approx(want[k], abs=1e-6), k
    assert m["source"].endswith("ckpt.pt") and m["n_images"] == 4
    saved = np.load(out / "scores" / "seq" / "c.npy")
    np.testing.assert_allclose(saved, maps["seq/c"], rtol=1e-5, atol=1e-5)
    # the library entry point agrees and leaves the module's mode as it was
    model.train()
    lib = ev.evaluate_model(model, ds)
    assert lib["auprc"] == pytest.approx(m["auprc"], abs=1e-6) and model.training


class _FakeBackend:
    """Stands in for a runtime Backend (contract: infer(...).heatmap (H, W) float32)."""

    def __init__(self, maps):
        self.maps, self.closed, self.calls = maps, False, []

    def infer(self, image, *, heatmap=True, mask=True, overlay=True, **_):
        self.calls.append((heatmap, mask, overlay))
        key = next(k for k, v in self.maps.items() if v[1] is image or np.array_equal(v[1], image))
        return types.SimpleNamespace(heatmap=self.maps[key][0], mask=None, overlay=None)

    def close(self):
        self.closed = True


def test_bundle_directory_goes_through_the_runtime(folder_set, tmp_path, monkeypatch):
    root, scores = folder_set
    ds = ev.load_dataset("folder", root)
    maps = {smp.name: (scores[smp.name], smp.image) for smp in ds}
    backend = _FakeBackend(maps)
    seen = {}

    def create_backend(path, backend="auto", device="auto", **kw):
        seen.update(path=Path(path), backend=backend, device=device)
        return fake

    fake = backend
    monkeypatch.setitem(sys.modules, "flowclas_ros.runtime",
                        types.SimpleNamespace(create_backend=create_backend))
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    out = tmp_path / "out"
    evaluate_cli.main(["--dataset", "folder", "--root", str(root), "--model", str(bundle),
                       "--out", str(out),
                       "--quiet", "--components", "none", "--no-plots", "--device", "cpu"])
    assert seen == {"path": bundle, "backend": "auto", "device": "cpu"}
    assert backend.closed and all(c == (True, False, False) for c in backend.calls)
    want = _expected(root, scores)
    assert _read(out)["auprc"] == pytest.approx(want["auprc"], abs=1e-12)
    assert ev.evaluate_model(_FakeBackend(maps), ds)["auroc"] == pytest.approx(want["auroc"])


def test_auto_track_and_json_nulls():
    assert ev.default_track("smiyc_obstacle") == "obstacle"
    assert ev.default_track("road_anomaly") == "anomaly"
    assert jsonio.to_json({"a": float("nan"), "b": [np.float32(0.5), float("inf")]}) == \
        {"a": None, "b": [0.5, None]}


def test_no_anomaly_pixels_gives_nan_metrics_and_skips_components():
    frames = [types.SimpleNamespace(image=np.zeros((8, 8, 3), np.uint8),
                                    label=np.zeros((8, 8), np.uint8), name=f"f{i}")
              for i in range(2)]
    maps = [np.random.default_rng(i).random((8, 8)).astype(np.float32) for i in range(2)]
    with pytest.warns(UserWarning, match="no anomaly pixels"):
        m = ev.evaluate_scores(maps, frames, components="anomaly")
    assert np.isnan(m["auprc"]) and "siou" not in m and m["n_anomaly_pixels"] == 0
    assert jsonio.to_json(m)["auprc"] is None
