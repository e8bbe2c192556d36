"""ESPNetv2 (Cityscapes).

Shapes, padding, the backbone contract, the published weights' layout, strict loading, the
softmax-entropy baseline and, with the real weights, real segmentation.
"""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flowclas_ros.data.frames import Sample
from flowclas_ros.model import BackboneConfig, FlowConfig, ModelConfig, build_backbone
from flowclas_ros.model.espnetv2 import (
    ESPNetv2Backbone,
    ESPNetv2Seg,
    entropy_scorer,
    softmax_entropy,
)

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS_NAME = "espnetv2-cityscapes/espnetv2_s_2.0_city_1024x512.pth"
# What ../shared/weights/README.md documents for the published file.
N_TENSORS, N_PARAMS = 526, 789_242
TOP_LEVEL = {"base_net", "bu_dec_l1", "bu_dec_l2", "bu_dec_l3", "bu_dec_l4", "merge_enc_dec_l2",
             "merge_enc_dec_l3", "merge_enc_dec_l4", "bu_br_l2", "bu_br_l3", "bu_br_l4"}


def weights_root() -> Path:
    """../shared/weights beside the project, or $FLOWCLAS_WEIGHTS."""
    return Path(os.environ.get("FLOWCLAS_WEIGHTS", ROOT.parent / "shared" / "weights"))


@pytest.fixture
def weights_file() -> Path:
    path = weights_root() / WEIGHTS_NAME
    if not path.is_file():
        pytest.skip(f"ESPNetv2 Cityscapes weights not found at {path} "
                    f"(set FLOWCLAS_WEIGHTS to the folder holding {WEIGHTS_NAME})")
    return path


@pytest.fixture(scope="module")
def net() -> ESPNetv2Seg:
    torch.manual_seed(0)
    return ESPNetv2Seg().eval()


@pytest.mark.parametrize("size", [(32, 48), (37, 61), (16, 16), (50, 34)])
def test_logits_at_input_resolution_for_any_size(net, size):
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = net(x)
    assert out.shape == (2, 20, *size) and torch.isfinite(out).all()


def test_non_multiples_are_zero_padded_and_cropped(net):
    x = torch.randn(1, 3, 37, 61)
    padded = F.pad(x, (0, 64 - 61, 0, 48 - 37))
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(padded)[..., :37, :61])


def test_encoder_levels_are_exact_strides(net):
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        feats = net.base_net(x)
    assert [tuple(f.shape[1:]) for f in feats] == [
        (32, 24, 40), (128, 12, 20), (256, 6, 10), (512, 3, 5)]
    with torch.no_grad():
        assert len(net.base_net(x, levels=3)) == 3


def test_state_dict_has_the_documented_layout(net):
    sd = net.state_dict()
    assert len(sd) == N_TENSORS
    assert sum(p.numel() for p in net.parameters()) == N_PARAMS
    assert {k.split(".")[0] for k in sd} == TOP_LEVEL
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["base_net.level1.conv.weight"] == (32, 3, 3, 3)
    assert shapes["base_net.level2_0.inp_reinf.1.conv.weight"] == (128, 3, 1, 1)
    assert shapes["base_net.level3_0.act.weight"] == (256,)
    assert shapes["base_net.level4.6.conv_1x1_exp.conv.weight"] == (512, 128, 1, 1)
    assert "base_net.level3.3.proj_1x1.conv.weight" not in shapes  # 3 blocks at level3, 7 at 4
    assert shapes["bu_dec_l4.merge_layer.3.weight"] == (20, 10, 1, 1)
    assert shapes["merge_enc_dec_l2.expansion_layer.cbr.0.weight"] == (64, 4, 3, 3)


def test_state_dict_matches_the_weights_file(net, weights_file):
    from flowclas_ros.model.weights import load_weights_only

    sd = load_weights_only(weights_file)
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in sd.items()} == ours


def _save_variant(net, path, drop=None, add=None, reshape=None) -> Path:
    sd = dict(net.state_dict())
    if drop:
        del sd[drop]
    if add:
        sd[add] = torch.zeros(3)
    if reshape:
        sd[reshape] = torch.zeros(1, 1, 1, 1)
    torch.save(sd, path)
    return path


def test_load_is_strict_and_names_every_problem(net, tmp_path):
    ok = _save_variant(net, tmp_path / "ok.pth")
    ESPNetv2Seg().load_cityscapes(ok)
    with pytest.raises(ValueError, match=r"missing tensor bu_br_l3\.1\.weight"):
        ESPNetv2Seg().load_cityscapes(_save_variant(net, tmp_path / "a.pth",
                                                    drop="bu_br_l3.1.weight"))
    with pytest.raises(ValueError, match=r"unexpected tensor base_net\.level5\.0\.x"):
        ESPNetv2Seg().load_cityscapes(_save_variant(net, tmp_path / "b.pth",
                                                    add="base_net.level5.0.x"))
    with pytest.raises(ValueError, match=r"base_net\.level1\.conv\.weight: shape \(1, 1, 1, 1\)"):
        ESPNetv2Seg().load_cityscapes(_save_variant(net, tmp_path / "c.pth",
                                                    reshape="base_net.level1.conv.weight"))
    with pytest.raises(FileNotFoundError):
        ESPNetv2Seg().load_cityscapes(tmp_path / "absent.pth")


@pytest.mark.parametrize("stages, channels, stride, pad", [
    ([3], 256, 8, 8), ([4], 512, 16, 16), ([3, 4], 768, 8, 16), ([2, 3], 384, 4, 8)])
def test_backbone_contract(stages, channels, stride, pad):
    bb = build_backbone(BackboneConfig(name="espnetv2", stages=stages))
    assert isinstance(bb, ESPNetv2Backbone)
    assert (bb.channels, bb.stride, bb.pad_multiple) == (channels, stride, pad)
    assert tuple(bb.mean) == (0.485, 0.456, 0.406) and tuple(bb.std) == (0.229, 0.224, 0.225)
    h, w = 2 * pad, 3 * pad
    out = bb(torch.randn(2, 3, h, w))
    assert out.shape == (2, channels, h // stride, w // stride)


def test_backbone_stages_concatenate_the_levels():
    torch.manual_seed(0)
    both = ESPNetv2Backbone([3, 4])
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        out = both(x)
        l3 = both.net.base_net(x)[2]
    torch.testing.assert_close(out[:, :256], l3)
    with pytest.raises(ValueError, match="levels 1..4"):
        ESPNetv2Backbone([5])


def test_backbone_is_frozen():
    bb = ESPNetv2Backbone([4])
    assert not any(p.requires_grad for p in bb.parameters())
    bb.train()
    assert not any(m.training for m in bb.modules())
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    before = {k: v.clone() for k, v in bb.state_dict().items() if "running" in k}
    bb(x)
    after = bb.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # no BN statistics update


def test_road_probability_on_the_feature_grid():
    bb = ESPNetv2Backbone([3])
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        road = bb.road_probability(x)
        assert road.shape == (2, 1, 5, 7)
        assert ((road >= 0) & (road <= 1)).all()
        full = bb.net(x).softmax(1)[:, :1]
        torch.testing.assert_close(road, F.avg_pool2d(full, 8))
        assert bb.road_probability(x, size=(10, 14)).shape == (2, 1, 10, 14)


def test_flowclas_runs_on_the_espnetv2_backbone():
    from flowclas_ros.model import FlowCLAS

    cfg = ModelConfig(backbone=BackboneConfig(name="espnetv2", stages=[4]),
                      flow=FlowConfig(steps=2), proj_dim=8)
    model = FlowCLAS(cfg).eval()
    with torch.no_grad():
        score = model(torch.rand(1, 3, 37, 50))
    assert score.shape == (1, 37, 50) and torch.isfinite(score).all()


def test_softmax_entropy_is_normalised():
    logits = torch.zeros(1, 20, 2, 3)
    logits[0, 5, 0, 0] = 100.0  # one certain pixel, the rest uniform
    ent = softmax_entropy(logits)
    assert ent.shape == (1, 2, 3)
    assert ent[0, 0, 0] < 1e-6
    torch.testing.assert_close(ent[0, 1], torch.ones(3))
    rnd = softmax_entropy(torch.randn(2, 20, 4, 4) * 3)
    assert ((rnd >= 0) & (rnd <= 1)).all()


def test_entropy_scorer_returns_a_map_at_frame_resolution(net):
    rng = np.random.default_rng(0)
    sample = Sample(image=rng.integers(0, 256, (30, 45, 3), dtype=np.uint8),
                    label=np.zeros((30, 45), np.uint8), name="x")
    for size in (None, (32, 64)):
        s = entropy_scorer(net, "cpu", input_size=size)(sample)
        assert s.shape == (30, 45) and s.dtype == np.float32
        assert np.isfinite(s).all() and s.min() >= 0 and s.max() <= 1


@pytest.mark.real_data
def test_real_weights_segment_cityscapes(shared_data, weights_file):
    from PIL import Image

    model = ESPNetv2Seg().load_cityscapes(weights_file).eval()
    root = shared_data / "cityscapes-sample"
    frames = sorted((root / "leftImg8bit").rglob("*_leftImg8bit.jpg"))[:2]
    if len(frames) < 2:
        pytest.skip(f"Cityscapes sample frames not found under {root}")
    mean = torch.tensor(model.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.std).view(1, 3, 1, 1)
    for frame in frames:
        rel = frame.relative_to(root / "leftImg8bit")
        gt_path = root / "gtFine" / rel.parent / frame.name.replace("_leftImg8bit.jpg",
                                                                     "_gtFine_labelTrainIds.png")
        img = Image.open(frame).convert("RGB").resize((1024, 512), Image.BILINEAR)
        gt = np.asarray(Image.open(gt_path).resize((1024, 512), Image.NEAREST))
        x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            pred = model((x - mean) / std).argmax(1)[0].numpy()
        valid = gt != 255
        acc = float((pred[valid] == gt[valid]).mean())
        assert acc > 0.85, f"{frame.name}: pixel accuracy {acc:.3f}"
