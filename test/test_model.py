"""The FlowCLAS model: scores at input resolution, score variants, checkpoints."""
import pytest
import torch

from flowclas_ros.model import BackboneConfig, FlowCLAS, FlowConfig, ModelConfig
from flowclas_ros.model.checkpoint import (
    load_checkpoint,
    load_model,
    model_payload,
    save_checkpoint,
)


def tiny_model(score="nll", steps=2) -> FlowCLAS:
    return FlowCLAS(ModelConfig(backbone=BackboneConfig(name="tiny"),
                                flow=FlowConfig(steps=steps), score=score))


def _train_a_little(model: FlowCLAS) -> FlowCLAS:
    """Move the flow and the Gaussian away from their initial values."""
    model.initialize(model.features(torch.rand(2, 3, 32, 32)))
    with torch.no_grad():
        for p in list(model.flow.parameters()) + [model.mu, model.log_sigma]:
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def test_score_at_input_resolution_with_padding_removed():
    model = _train_a_little(tiny_model())
    img = torch.rand(2, 3, 37, 53)  # not multiples of the stride 8
    score = model(img)
    assert score.shape == (2, 37, 53) and score.dtype == torch.float32
    assert torch.isfinite(score).all()
    # the padded image (padding of the normalised zero) scores the same on the original pixels
    padded = torch.zeros(2, 3, 40, 56) + model.mean  # zero after normalisation
    padded[..., :37, :53] = img
    torch.testing.assert_close(model(padded)[..., :37, :53], score, atol=1e-5, rtol=1e-5)


def test_score_variants():
    nll_model = _train_a_little(tiny_model("nll"))
    latent_model = tiny_model("latent")
    latent_model.load_state_dict(nll_model.state_dict())
    feats = nll_model.features(torch.rand(1, 3, 32, 48))
    z, logdet = nll_model.latent(feats)
    nll = nll_model.score_map(z, logdet)
    latent = latent_model.eval().score_map(z, logdet)
    c = nll_model.channels
    # nll = latent + 0.5 log(2 pi) - logdet / C: the variants differ by the log-determinant
    torch.testing.assert_close(nll - latent,
                               0.5 * torch.log(torch.tensor(2 * torch.pi)) - logdet / c)
    with pytest.raises(ValueError, match="score"):
        tiny_model("bogus")


def test_embeddings_are_unit_vectors():
    model = tiny_model()
    z, _ = model.latent(model.features(torch.rand(1, 3, 24, 24)))
    emb = model.embed(z)
    assert emb.shape == (1, 128, 3, 3)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(1, 3, 3))


def test_gradients_reach_trainable_parts_only():
    model = tiny_model()
    model.train()
    z, logdet = model.latent(model.features(torch.rand(1, 3, 24, 24)))
    (model.nll_map(z, logdet).mean() + model.embed(z).sum()).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.mu.grad is not None and model.norm.weight.grad is not None


def test_checkpoint_round_trip(tmp_path):
    model = _train_a_little(tiny_model())
    path = tmp_path / "ck" / "model.pt"
    save_checkpoint(path, {**model_payload(model), "step": 7})
    assert load_checkpoint(path)["step"] == 7
    assert not any(k.startswith("backbone.") for k in load_checkpoint(path)["model"])
    loaded = load_model(path)
    img = torch.rand(1, 3, 40, 40)
    torch.testing.assert_close(loaded(img), model(img))
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary left behind


def test_checkpoint_refuses_foreign_files(tmp_path):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a flowclas_ros checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.pt")
    save_checkpoint(tmp_path / "future.pt", {"model": {}})
    data = torch.load(tmp_path / "future.pt", weights_only=True)
    data["version"] = 99
    torch.save(data, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="upgrade"):
        load_checkpoint(tmp_path / "future.pt")


def test_config_round_trip_and_unknown_keys():
    cfg = ModelConfig(backbone=BackboneConfig(name="tiny", channels=8), flow=FlowConfig(steps=3))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({"bogus": 1})
