"""Training at the camera's resolution (issue 18).

Per-set long-side scaling and crops, small pastes on the feature grid, the fused backbone, the
road prior in the exported graph, selection at the deployed resolution, old configs unchanged,
and the ablation tool end to end on a tiny generated protocol. Tiny backbones and generated data
(tmp_path); real data where marked.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from flowclas_ros.labels import ANOMALY, INLIER, VOID
from flowclas_ros.model import BackboneConfig, FlowCLAS, FlowConfig, ModelConfig
from flowclas_ros.model.config import RoadPriorConfig
from flowclas_ros.training.config import TrainConfig, load_config
from flowclas_ros.training.features import grid_labels
from flowclas_ros.training.inputs import build_inputs
from flowclas_ros.training.samples import variant_rng

ROOT = Path(__file__).resolve().parents[1]


def _folder(root, n, size, seed, road=True, hood=0):
    """Write a 'folder' inlier set of n frames (H, W).

    The frames have a sky-ish top, a grey road in the lower half, VOID in the bottom ``hood``
    rows.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        img = np.zeros((h, w, 3), np.uint8)
        img[: h // 2] = (120, 150, 200)
        img[h // 2:] = (95, 95, 100) if road else (40, 120, 40)
        img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
        lab = np.zeros((h, w), np.uint8)
        if hood:
            lab[h - hood:] = VOID
            img[h - hood:] = 250
        Image.fromarray(img).save(root / "images" / f"f{i:02d}.png")
        Image.fromarray(lab).save(root / "labels" / f"f{i:02d}.png")
    return root


def _outliers(root, n=4):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[0:40, 0:40]
    disc = (yy - 20) ** 2 + (xx - 20) ** 2 < 15 ** 2
    for k in range(n):
        img = np.zeros((40, 40, 3), np.uint8)
        img[..., k % 3] = 230
        Image.fromarray(img).save(root / "images" / f"o{k}.png")
        Image.fromarray((disc * 255).astype(np.uint8)).save(root / "masks" / f"o{k}.png")
    return root


def _config(tmp_path, **data):
    wide = _folder(tmp_path / "wide", 6, (100, 400), 0, hood=12)
    small = _folder(tmp_path / "small", 6, (90, 120), 1)
    d = {"dataset": "folder", "root": str(wide), "long_side": 200,
         "extra": [{"dataset": "folder", "root": str(small)}],
         "crop": [48, 64], "scale_range": [0.9, 1.1],
         "outliers": str(_outliers(tmp_path / "outliers")), "outlier_filter": "none",
         "outlier_val_fraction": 0.25, "paste": {"mode": "composite"},
         "composite": {"height_px": [6, 12], "height_ratio": [0.1, 0.5], "tries": 40},
         "label_mode": "area", "label_anomaly_fraction": 0.125, **data}
    return TrainConfig.from_dict({
        "model": {"backbone": {"name": "tiny"}, "flow": {"steps": 2, "hidden": 8,
                                                          "subnet": "simple"}, "proj_dim": 8},
        "data": d, "cache": {"dir": str(tmp_path / "cache"), "variants": 2},
        "train": {"epochs": 1, "batch_size": 4, "progress": False, "max_views": 32}})


# --- per-set long side, crops, equal batches -----------------------------------------------------

def test_long_side_per_set_then_crops_give_equal_batches(tmp_path):
    cfg = _config(tmp_path)
    cfg.data.extra[0].long_side = 60  # its own: 90x120 -> 45x60
    inputs = build_inputs(cfg, lambda m: None)
    ds = inputs.dataset
    assert ds[0].image.shape == (50, 200, 3) and ds[0].label.shape == (50, 200)  # 100x400 halved
    assert (ds[0].label[-6:] == VOID).all()  # the VOID band scaled with it
    assert ds[6].image.shape == (45, 60, 3)
    cfg.data.extra[0].long_side = None  # inherits data.long_side 200: never enlarged
    assert build_inputs(cfg, lambda m: None).dataset[6].image.shape == (90, 120, 3)
    pairs = [inputs.pairs(i, variant_rng(0, i, v)) for i in range(12) for v in range(2)]
    assert {p.image.shape for p in pairs} == {(48, 64, 3)}
    assert {p.aux_image.shape for p in pairs} == {(48, 64, 3)}
    batch = torch.utils.data.default_collate([p._asdict() for p in pairs[:8]])
    assert batch["image"].shape == (8, 48, 64, 3)


def test_long_side_and_label_fraction_change_the_cache_key_old_keys_stay(tmp_path):
    from flowclas_ros.training.inputs import cache_spec

    cfg = _config(tmp_path)
    model = FlowCLAS(cfg.model)
    spec = cache_spec(cfg, model, 12, False)
    assert spec["long_side"] == 200 and spec["label_anomaly_fraction"] == 0.125
    assert "composite" in spec and "fuse" not in spec["backbone"]
    cfg.data.long_side, cfg.data.label_anomaly_fraction, cfg.data.composite = None, 0.5, None
    spec = cache_spec(cfg, model, 12, False)
    assert not {"long_side", "label_anomaly_fraction", "composite",
                "parts_weights_files"} & set(spec)


# --- small pastes on the feature grid ------------------------------------------------------------

def test_small_object_cells_are_outliers_with_the_fraction_rule():
    lab = torch.zeros(1, 64, 64, dtype=torch.uint8)
    lab[0, 20:29, 36:45] = ANOMALY  # 9 x 9 px inside cell (1, 2): a third of it
    lab[0, 42:54, 10:22] = ANOMALY  # 12 x 12 px across cells (2..3, 0..1): 14 % of each
    half = grid_labels(lab, (4, 4), 16, "area")
    eighth = grid_labels(lab, (4, 4), 16, "area", 0.125)
    assert not (half == ANOMALY).any()  # the demo recipe's rule trains neither ...
    assert (half == VOID).sum() == 5  # ... and leaves out every cell they touch
    assert (eighth == ANOMALY).sum() == 5 and (eighth == INLIER).sum() == 11
    assert eighth[0, 1, 2] == ANOMALY and (eighth[0, 2:, :2] == ANOMALY).all()


def test_small_composited_pastes_reach_the_grid_as_outliers(tmp_path):
    cfg = _config(tmp_path, composite_prob=1.0)
    pairs = build_inputs(cfg, lambda m: None).pairs
    hits = {0.5: 0, 0.125: 0}
    n = 0
    for i in range(12):
        for v in range(3):
            p = pairs(i, variant_rng(0, i, v))
            lab = torch.from_numpy(p.label)[None]
            if not (lab == ANOMALY).any():
                continue
            n += 1
            # the pasted objects are small (6-12 px tall) and stand on the road (lower half)
            ys = np.nonzero(p.label == ANOMALY)[0]
            assert ys.max() - ys.min() < 2 * 12 + 2
            for t in hits:
                hits[t] += bool((grid_labels(lab, (6, 8), 8, "area", t) == ANOMALY).any())
    assert n >= 24
    assert hits[0.125] >= 0.8 * n > hits[0.5]


def test_ground_is_estimated_above_the_void_band(tmp_path):
    from flowclas_ros.training.samples import ground_of

    _folder(tmp_path / "f", 1, (120, 160), 0, hood=20)
    img = np.asarray(Image.open(tmp_path / "f/images/f00.png"))
    lab = np.asarray(Image.open(tmp_path / "f/labels/f00.png"))
    g = ground_of(img, lab)
    assert not g.mask[100:].any()  # nothing on the hood
    assert g.mask[70:95].mean() > 0.9 and not g.mask[:50].any()  # the grey road above it


# --- the fused backbone --------------------------------------------------------------------------

def test_fused_backbone_is_its_parts_features_concatenated():
    parts = [BackboneConfig(name="efficientnet_lite0", stages=[3]),
             BackboneConfig(name="espnetv2", stages=[3]), BackboneConfig(name="tiny")]
    fused = FlowCLAS(ModelConfig(backbone=BackboneConfig(name="fused", fuse=parts),
                                 flow=FlowConfig(steps=2))).eval()
    assert fused.mean.flatten().tolist() == [0, 0, 0] and fused.std.flatten().tolist() == [1, 1, 1]
    assert fused.stride == 8 and fused.backbone.pad_multiple == 16
    x = torch.rand(2, 3, 64, 96)
    refs = []
    for i, p in enumerate(parts):
        ref = FlowCLAS(ModelConfig(backbone=p, flow=FlowConfig(steps=2))).eval()
        ref.backbone.load_state_dict(fused.backbone.parts[i].state_dict())
        f = ref.features(x)  # normalised its own way, zero-padded after that
        refs.append(F.interpolate(f, size=(8, 12), mode="bilinear", align_corners=False)
                    if f.shape[-2:] != (8, 12) else f)
    assert fused.channels == sum(r.shape[1] for r in refs)
    torch.testing.assert_close(fused.features(x), torch.cat(refs, 1), atol=0, rtol=0)
    assert fused(torch.rand(1, 3, 50, 70)).shape == (1, 50, 70)  # padded and cropped back
    with pytest.raises(ValueError, match="normalises per part"):
        FlowCLAS(ModelConfig(backbone=BackboneConfig(name="fused", fuse=parts[:1]),
                             mean=[0.5] * 3, std=[0.5] * 3))


def test_fused_config_round_trips_and_is_rebuilt_without_its_sources(tmp_path):
    cfg = load_config(None, ["model.backbone.name=fused",
                             "model.backbone.fuse=[{name: tiny}, {name: espnetv2, stages: [3], "
                             "weights: ~/nowhere.pth}]"])
    part = cfg.model.backbone.fuse[1]
    assert part.name == "espnetv2" and not part.weights.startswith("~")  # expanded
    d = cfg.model.to_dict()
    assert ModelConfig.from_dict(d) == cfg.model
    with pytest.raises(FileNotFoundError):
        FlowCLAS(cfg.model)  # its part's weights are read ...
    cfg.model.backbone.pretrained = False  # ... unless rebuilt from a bundle
    assert FlowCLAS(cfg.model).channels == 16 + 256
    with pytest.raises(ValueError, match="fused"):
        load_config(None, ["model.backbone.name=fused"])


# --- the road prior ------------------------------------------------------------------------------

def _prior_model(weight=1.5) -> FlowCLAS:
    torch.manual_seed(0)
    model = FlowCLAS(ModelConfig(backbone=BackboneConfig(name="tiny"), flow=FlowConfig(steps=2),
                                 road_prior=RoadPriorConfig(weight=weight, dilate=3)))
    model.initialize(model.features(torch.rand(2, 3, 48, 64)))
    with torch.no_grad():
        for p in list(model.flow.parameters()) + [model.mu, model.log_sigma]:
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def test_road_prior_adds_its_weight_times_road_to_the_score():
    model = _prior_model(1.5)
    x = torch.rand(1, 3, 48, 64)
    feats = model.backbone(model.normalize_and_pad(x))
    assert feats.shape[1] == model.channels + 1 and model.features(x).shape[1] == model.channels
    road = feats[:, -1]
    assert ((road >= 0) & (road <= 1)).all()
    z, logdet = model.latent(feats[:, :-1])
    plain = model.score_map(z, logdet)
    z, logdet = model.latent(feats)
    torch.testing.assert_close(model.score_map(z, logdet), plain + 1.5 * (road - 0.5))
    with pytest.raises(ValueError, match="nll"):
        FlowCLAS(ModelConfig(backbone=BackboneConfig(name="tiny"), score="latent",
                             road_prior=RoadPriorConfig(weight=1.0)))


def test_the_exportable_decoder_is_espnetv2s_own():
    from flowclas_ros.model.espnetv2 import ESPNetv2Seg
    from flowclas_ros.model.road_prior import adaptive_avg_pool, decode

    x = torch.rand(2, 5, 23, 37)
    for size in ((5, 5), (12, 30), (35, 56), (23, 37)):  # shrink, grow, non-integer factors
        torch.testing.assert_close(adaptive_avg_pool(x, size), F.adaptive_avg_pool2d(x, size))
    net = ESPNetv2Seg().eval()
    with torch.no_grad():
        feats = net.base_net(torch.randn(1, 3, 64, 128))
        torch.testing.assert_close(decode(net, feats), net.decode(feats), atol=1e-5, rtol=1e-5)


def test_road_prior_exports_to_onnx_and_onnxruntime_matches_torch(tmp_path):
    import onnxruntime as ort

    from flowclas_ros.bundle.torch_model import build_torch_model
    from flowclas_ros.export.bundle import write_bundle

    model = _prior_model()
    bundle = write_bundle(model, tmp_path / "b", input_size=(48, 64), threshold=0.0,
                          score_range=(-5.0, 5.0), resolution={"long_side": 64})
    ver = bundle.manifest["onnx"]["verification"]
    assert ver["finite"] and ver["relative_to_score_range"] < 1e-4
    assert bundle.manifest["model"]["config"]["road_prior"]["weight"] == 1.5
    sess = ort.InferenceSession(str(bundle.onnx_path), providers=["CPUExecutionProvider"])
    for size in ((40, 72), (64, 48)):  # dynamic H, W
        x = torch.rand(1, 3, *size)
        out = sess.run(None, {"image": x.numpy()})[0]
        with torch.no_grad():
            ref = model(x).numpy()
        np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)
    rebuilt = build_torch_model(bundle)  # the road network's weights came with the bundle
    x = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


# --- selection at the deployed resolution; old configs -------------------------------------------

def test_selection_scores_at_the_deployed_resolution(tmp_path, monkeypatch):
    from flowclas_ros.bundle.preprocess import Resolution
    from flowclas_ros.training import selection
    from flowclas_ros.training.distributed import DistInfo

    (tmp_path / "p").mkdir()
    (tmp_path / "p/protocol.json").write_text(json.dumps({
        "format": "flowclas_ros.validation_protocol", "version": 2,
        "parts": {p: {} for p in ("kitti_pasted", "idd_pasted", "camvid_pasted", "kitti_clean",
                                  "obstacles_kitti", "hires_clean")}}))
    seen = {}

    def fake(model, protocol, input_size, **kw):
        seen.update(input_size=input_size, parts=kw["parts"])
        parts = {p: {"auprc": 0.5, "fpr95": 0.5, "auroc": 0.5,
                     **({"road_auprc": 0.4} if p.startswith("obstacles") else {})}
                 for p in kw["parts"] if p not in ("kitti_clean", "hires_clean")}
        return {"score": 0.5, "parts": parts}

    monkeypatch.setattr(selection, "evaluate_model_on_protocol", fake)
    old = load_config(ROOT / "config/train_demo_lite2_camvid.yaml",
                      [f"eval.protocol={tmp_path / 'p'}"])
    m = selection.CheckpointSelection(old, DistInfo(), print).score(None, tmp_path / "p", False)
    assert seen == {"input_size": (360, 480),
                    "parts": ("kitti_pasted", "idd_pasted", "camvid_pasted", "kitti_clean")}
    assert set(m["parts"]["kitti_pasted"]) == {"auprc", "fpr95", "auroc"}
    new = load_config(ROOT / "config/train_small_obstacles.yaml",
                      [f"eval.protocol={tmp_path / 'p'}"])
    m = selection.CheckpointSelection(new, DistInfo(), print).score(None, tmp_path / "p", False)
    assert seen["input_size"] == Resolution(long_side=1024)
    assert seen["parts"] == ("kitti_pasted", "idd_pasted", "camvid_pasted", "kitti_clean",
                             "obstacles_kitti", "hires_clean")  # the two it lacks are skipped
    assert m["parts"]["obstacles_kitti"]["road_auprc"] == 0.4


LEGACY_KEYS = {
    "data": {"dataset", "root", "split", "limit", "extra", "bag", "image_size", "scale_range",
             "crop", "photometric", "label_mode", "hflip", "vflip", "outliers", "outlier_filter",
             "outlier_split", "outlier_granularity", "held_out_classes", "outlier_holdout",
             "outlier_val_fraction", "outlier_split_seed", "paste", "num_workers"},
    "eval": {"protocol", "protocol_data", "input_size", "fpr", "val_dir", "every",
             "build_if_missing", "build_splits", "build_limit", "build_seed", "limit"},
    "model": {"backbone", "flow", "proj_dim", "score", "mean", "std"},
    "backbone": {"name", "stages", "weights", "pretrained", "channels"}}


@pytest.mark.parametrize("name", ["train_demo_lite2_camvid", "train_prototype_lite0_camvid",
                                  "train_allo", "train_cityscapes_dinov2_vitl14"])
def test_old_configs_load_and_write_as_before(name):
    cfg = load_config(ROOT / "config" / f"{name}.yaml")
    d = cfg.to_dict()
    assert set(d["data"]) == LEGACY_KEYS["data"] and set(d["eval"]) == LEGACY_KEYS["eval"]
    assert set(d["model"]) == LEGACY_KEYS["model"]
    assert set(d["model"]["backbone"]) == LEGACY_KEYS["backbone"]
    assert cfg.data.long_side is None and cfg.data.composite is None
    assert cfg.data.label_anomaly_fraction == 0.5 and cfg.eval.long_side is None
    assert TrainConfig.from_dict(yaml.safe_load(yaml.safe_dump(d))).to_dict() == d


def test_the_small_obstacles_configs_load():
    cfg = load_config(ROOT / "config/train_small_obstacles.yaml")
    assert cfg.data.long_side == cfg.eval.long_side == 1024
    assert cfg.data.composite.height_px == (6.0, 160.0)
    assert cfg.data.label_anomaly_fraction == 0.125
    spec = yaml.safe_load((ROOT / "config/ablation_small_obstacles.yaml").read_text())
    names = [c["name"] for c in spec["candidates"]]
    assert len(names) == len(set(names))
    for c in spec["candidates"]:
        if "bundle" in c:
            continue
        if "from" in c:
            assert c["from"] in names[:names.index(c["name"])]
            assert all(o.startswith("model.") for o in c.get("overrides", []))
            continue
        cfg = load_config(ROOT / "config" / f"{spec['base']}.yaml",
                          spec.get("overrides", []) + c.get("overrides", []))
        assert cfg.eval.long_side, c["name"]  # every candidate states its deployed resolution


# --- the ablation tool, end to end on a tiny generated protocol ----------------------------------

PROTOCOL_PARTS = ("kitti_pasted", "idd_pasted", "camvid_pasted", "kitti_clean", "obstacles_kitti",
                  "obstacles_nuscenes", "obstacles_cityscapes", "hires_clean")


def _protocol(root, frames=2, size=(40, 72)):
    """Write a protocol folder in the built layout.

    It has every part's images/ + labels/, the small-obstacle parts' roads/ and manifest.json,
    protocol.json.
    """
    rng = np.random.default_rng(7)
    h, w = size
    for part in PROTOCOL_PARTS:
        d = root / part
        for sub in ("images", "labels", "roads"):
            (d / sub).mkdir(parents=True)
        rows = []
        for i in range(frames):
            img = np.full((h, w, 3), 100, np.uint8)
            img[: h // 2] = (120, 150, 200)
            img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
            lab = np.zeros((h, w), np.uint8)
            objects = []
            if part != "hires_clean" and part != "kitti_clean":
                y, x = int(rng.integers(h // 2, h - 10)), int(rng.integers(0, w - 10))
                img[y:y + 8, x:x + 8] = (230, 40, 40)
                lab[y:y + 8, x:x + 8] = ANOMALY
                objects.append({"box": [y, x, 8, 8], "pixels": 64})
            road = np.zeros((h, w), np.uint8)
            road[h // 2:] = 255
            Image.fromarray(img).save(d / "images" / f"f{i}.png")
            Image.fromarray(lab).save(d / "labels" / f"f{i}.png")
            Image.fromarray(road).save(d / "roads" / f"f{i}.png")
            rows.append({"name": f"f{i}", "objects": objects})
        (d / "manifest.json").write_text(json.dumps({"rows": rows}))
    (root / "protocol.json").write_text(json.dumps({
        "format": "flowclas_ros.validation_protocol", "version": 2,
        "parts": {p: {"frames": frames} for p in PROTOCOL_PARTS}}))
    return root


@pytest.mark.slow
def test_ablation_trains_exports_scores_and_times_each_candidate(tmp_path, tiny_bundle):
    from flowclas_ros.bundle.reader import load_bundle
    from flowclas_ros.tools import ablation

    protocol = _protocol(tmp_path / "protocol")
    cfg = _config(tmp_path).to_dict()
    cfg["eval"].update(long_side=64)
    cfg["train"].update(epochs=1)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "cands.yaml").write_text(yaml.safe_dump({
        "base": str(tmp_path / "base.yaml"), "overrides": ["train.progress=false"],
        "candidates": [
            {"name": "tiny_bundle", "bundle": str(tiny_bundle)},
            {"name": "a", "overrides": []},
            {"name": "a_prior", "from": "a", "overrides": ["model.road_prior.weight=1.0"]},
            {"name": "a_at_48", "from": "a", "long_side": 48}]}))
    out = tmp_path / "out"
    argv = ["--candidates", str(tmp_path / "cands.yaml"), "--protocol", str(protocol),
            "--out", str(out), "--latency-frames", "2"]
    assert ablation.main(argv) == 0
    rows = {r["name"]: r for r in json.loads((out / "results.json").read_text())}
    assert rows["tiny_bundle"]["deployed"] == "48x64 (squeezed)"
    assert rows["a"]["deployed"] == "long side 64"
    assert rows["a_at_48"]["deployed"] == "long side 48"
    for r in rows.values():
        assert r["score"] is not None and 0 <= r["score_obstacles"] <= 1
        assert r["latency"]["iters"] == 2 and r["latency"]["frame"] == "1920x1080"
        assert r["bundle_mb"] > 0 and "obstacles_kitti" in r["parts"]
    assert rows["a"]["steps"] == 3 and rows["a"]["cache_gib"] is not None
    b = load_bundle(out / "a_prior" / "bundle")
    assert b.resolution.long_side == 64 and b.manifest["threshold"]["fpr"] == 0.05
    assert b.manifest["model"]["config"]["road_prior"]["weight"] == 1.0
    assert "Cityscapes" in (out / "a_prior" / "bundle" / "MODEL_CARD.md").read_text()
    table = (out / "table.md").read_text()
    assert all(n in table for n in rows) and "recall small" in table
    stamp = (out / "a" / "protocol.json").stat().st_mtime_ns
    assert ablation.main(argv + ["--only", "a"]) == 0  # a finished candidate is reused
    assert (out / "a" / "protocol.json").stat().st_mtime_ns == stamp
