"""The flow's maths.

Invertibility, exact per-pixel log-determinants, the NLL at identity, FrEIA.
"""
import math

import pytest
import torch

from flowclas_ros.model.flow import ActNorm, AffineCoupling, Flow, FlowConfig
from flowclas_ros.model.losses import gaussian_nll_map


def _perturbed_flow(channels=6, steps=3, subnet="residual", hidden=0):
    """Build a flow that is far from the identity.

    It has a data-initialised ActNorm and random coupling outputs.
    """
    flow = Flow(channels, FlowConfig(steps=steps, subnet=subnet, hidden=hidden, seed=3)).double()
    flow.initialize(torch.randn(4, channels, 5, 7, dtype=torch.float64) * 3 + 1)
    with torch.no_grad():
        for step in flow.steps:
            for p in step.coupling.subnet.parameters():
                p.add_(torch.randn_like(p) * 0.3)
            step.actnorm.log_scale.add_(torch.randn_like(step.actnorm.log_scale) * 0.2)
    return flow.eval()


@pytest.mark.parametrize("subnet", ["residual", "simple", "conv"])
def test_inverse_recovers_input(subnet):
    flow = _perturbed_flow(subnet=subnet)
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    z, _ = flow(x)
    assert not torch.allclose(z, x, atol=1e-2)  # the test is meaningless on an identity flow
    torch.testing.assert_close(flow.inverse(z), x, rtol=0, atol=1e-9)


def test_odd_channels_and_hidden_width():
    flow = _perturbed_flow(channels=5, hidden=3)
    x = torch.randn(1, 5, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(flow.inverse(flow(x)[0]), x, rtol=0, atol=1e-9)


@pytest.mark.parametrize("subnet", ["residual", "conv"])
def test_per_pixel_logdet_sums_to_brute_force_jacobian(subnet):
    """sum_p logdet_p == log|det dz/dx| of the whole map, although 3x3 subnets mix positions."""
    c, h, w = 4, 3, 3
    flow = _perturbed_flow(channels=c, steps=2, subnet=subnet)
    x = torch.randn(1, c, h, w, dtype=torch.float64)
    _, logdet = flow(x)
    assert logdet.shape == (1, h, w)
    jac = torch.autograd.functional.jacobian(lambda t: flow(t.view(1, c, h, w))[0].reshape(-1),
                                             x.reshape(-1))
    sign, logabsdet = torch.linalg.slogdet(jac)
    assert sign != 0
    torch.testing.assert_close(logdet.sum(), logabsdet, rtol=0, atol=1e-8)


def test_per_pixel_logdet_matches_per_module_terms():
    """Per pixel: the couplings' sum_c s_c(p) plus the ActNorms' sum_c log|a_c|."""
    flow = _perturbed_flow(channels=6, steps=2)
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    expected = torch.zeros(2, 4, 5, dtype=torch.float64)
    h = x
    for step in flow.steps:
        norm, perm, coupling = step.actnorm, step.permute, step.coupling
        expected += norm.log_scale.sum()
        h = (h + norm.bias) * norm.log_scale.exp()
        h = h[:, perm.perm]
        x1, x2 = h[:, : coupling.split], h[:, coupling.split:]
        s_raw, t = coupling.subnet(x1).chunk(2, dim=1)
        s = 2.0 * torch.tanh(s_raw)
        expected += s.sum(1)
        h = torch.cat([x1, x2 * s.exp() + t], 1)
    z, logdet = flow(x)
    torch.testing.assert_close(z, h)
    torch.testing.assert_close(logdet, expected)


def test_coupling_clamp_bounds_log_scale():
    coupling = AffineCoupling(4, 2, clamp=2.0).double()
    with torch.no_grad():
        for p in coupling.subnet.parameters():
            p.fill_(50.0)
    _, logdet = coupling(torch.randn(1, 4, 2, 2, dtype=torch.float64))
    assert logdet.abs().max() <= 2.0 * 2 + 1e-9  # 2 channels in x2, each |s| < 2


def test_nll_at_identity_is_analytic():
    """Check that the NLL of a fresh flow is the analytic one.

    A fresh flow is the identity (zero-initialised couplings, uninitialised ActNorm, and the
    permutation does not change a standard normal's density).
    """
    flow = Flow(8, FlowConfig(steps=4)).eval()
    x = torch.randn(2, 8, 3, 5)
    z, logdet = flow(x)
    torch.testing.assert_close(logdet, torch.zeros_like(logdet))
    mu, log_sigma = torch.zeros(8), torch.zeros(8)
    nll = gaussian_nll_map(z, logdet, mu, log_sigma)
    expected = 0.5 * math.log(2 * math.pi) + 0.5 * (x ** 2).mean(dim=1)
    torch.testing.assert_close(nll, expected)
    # the identity up to the channel order the fixed permutations impose
    torch.testing.assert_close(z.sort(dim=1).values, x.sort(dim=1).values)
    # and with a non-standard Gaussian: log N(z; mu, sigma) by hand
    mu, log_sigma = torch.randn(8), torch.randn(8) * 0.3
    nll = gaussian_nll_map(z, logdet, mu, log_sigma)
    m, s = mu.view(1, 8, 1, 1), log_sigma.exp().view(1, 8, 1, 1)
    by_hand = (0.5 * math.log(2 * math.pi) + torch.log(s) + 0.5 * ((z - m) / s) ** 2).mean(1)
    torch.testing.assert_close(nll, by_hand)


def test_actnorm_data_init_standardises_first_batch():
    norm = ActNorm(3).train()
    x = torch.randn(8, 3, 6, 6) * torch.tensor([2.0, 0.5, 4.0]).view(1, 3, 1, 1) + 3
    y, _ = norm(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4, rtol=0)
    before = norm.log_scale.detach().clone()
    norm(x * 10)  # second batch: no re-initialisation
    torch.testing.assert_close(norm.log_scale.detach(), before)
    assert int(norm.state_dict()["initialized"]) == 1


def test_matches_freia_blocks_with_same_weights():
    """Check that our chain and FrEIA's, with the same weights, match.

    Our (ActNorm, Permutation, AffineCoupling) chain and FrEIA's (ActNorm, PermuteRandom,
    AffineCouplingOneSided with TANH clamp) give the same output and total log-determinant.
    """
    Ff = pytest.importorskip("FrEIA.framework")
    Fm = pytest.importorskip("FrEIA.modules")
    c, h, w = 6, 4, 5
    ours = _perturbed_flow(channels=c, steps=2).float()
    couplings = [step.coupling for step in ours.steps]
    perms = [step.permute for step in ours.steps]
    norms = [step.actnorm for step in ours.steps]

    def subnet_factory():
        it = iter(couplings)
        return lambda c_in, c_out: next(it).subnet

    make_subnet = subnet_factory()
    inn = Ff.SequenceINN(c, h, w)
    for _ in range(2):
        inn.append(Fm.ActNorm)
        inn.append(Fm.PermuteRandom, seed=0)
        inn.append(Fm.AffineCouplingOneSided, subnet_constructor=make_subnet, clamp=2.0,
                   clamp_activation="TANH")
    blocks = list(inn.module_list)
    with torch.no_grad():
        for i in range(2):
            fa, fp = blocks[3 * i], blocks[3 * i + 1]
            # FrEIA: x * exp(scale) + bias; ours: (x + b) * exp(s)
            fa.scale.copy_(norms[i].log_scale)
            fa.bias.copy_(norms[i].bias * norms[i].log_scale.exp())
            fa.init_on_next_batch = False
            fp.perm.copy_(perms[i].perm)
            fp.perm_inv.copy_(perms[i].inv_perm)
    x = torch.randn(2, c, h, w)
    z_freia, jac_freia = inn(x)
    z_ours, logdet = ours(x)
    torch.testing.assert_close(z_ours, z_freia, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logdet.sum(dim=(1, 2)), jac_freia, atol=1e-4, rtol=1e-5)


def test_conv_subnet_alternates_its_kernels():
    flow = Flow(6, FlowConfig(steps=4, subnet="conv", hidden=5, kernels=[3, 1]))
    kernels = [step.coupling.subnet.body[0].kernel_size[0] for step in flow.steps]
    assert kernels == [3, 1, 3, 1]
    assert all(step.coupling.subnet.out.kernel_size[0] == k
               for step, k in zip(flow.steps, kernels))
