from __future__ import annotations

import math

import pytest
import torch

from detgen.config import FlowConfig, HistogramConfig
from detgen.models import GroupedModel, build_family
from detgen.models.flows import ConditionalFlow
from detgen.models.histogram import HistogramSampling


@pytest.mark.parametrize("transform", ["rqs", "affine"])
@pytest.mark.parametrize("n_targets", [1, 3])
def test_flow_sampler_inverts_the_flow(transform: str, n_targets: int) -> None:
    torch.manual_seed(0)
    flow = ConditionalFlow(n_targets=n_targets, n_conditions=2,
                           config=FlowConfig(transform=transform, blocks=3, hidden=[16, 16]))
    c = torch.randn(64, 2)
    z = torch.randn(64, n_targets)
    generator = flow.generator()
    x = generator(z, c)
    assert torch.allclose(flow.flow.transform(c)(x), z, atol=1e-4)
    assert torch.equal(generator(z, c), x)  # deterministic given the noise


def test_flow_density_matches_change_of_variables() -> None:
    torch.manual_seed(1)
    flow = ConditionalFlow(n_targets=1, n_conditions=2, config=FlowConfig(blocks=2, hidden=[8]))
    c = torch.randn(16, 2)
    x = torch.randn(16, 1, dtype=torch.float32, requires_grad=True)
    z = flow.flow.transform(c)(x)
    (dz_dx,) = torch.autograd.grad(z.sum(), x)
    expected = -0.5 * z.squeeze(1) ** 2 - 0.5 * math.log(2 * math.pi) + dz_dx.abs().log().squeeze(1)
    assert torch.allclose(flow.log_prob(x.detach(), c), expected.detach(), atol=1e-4)


def test_every_flow_parameter_gets_a_gradient() -> None:
    flow = ConditionalFlow(n_targets=1, n_conditions=3, config=FlowConfig(blocks=2, hidden=[8, 8]))
    flow.loss(torch.randn(32, 1), torch.randn(32, 3)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in flow.parameters())


def test_grouped_members_are_independent() -> None:
    torch.manual_seed(0)
    members = {g: build_family(FlowConfig(blocks=1, hidden=[8]), n_targets=1, n_conditions=2) for g in ("a", "b")}
    model = GroupedModel(members)
    c = torch.cat([torch.zeros(10, 1), torch.randn(10, 2)], 1)  # every row is group 'a' (code 0)
    model.loss(torch.randn(10, 1), c).backward()
    assert all(p.grad is not None for p in members["a"].parameters())
    assert all(p.grad is None for p in members["b"].parameters())
    # the grouped loss is the row-weighted mean of the members' losses
    c = torch.cat([torch.tensor([[0.0]] * 3 + [[1.0]] * 5), torch.randn(8, 2)], 1)
    x = torch.randn(8, 1)
    expected = (members["a"].loss(x[:3], c[:3, 1:]) * 3 + members["b"].loss(x[3:], c[3:, 1:]) * 5) / 8
    assert torch.allclose(model.loss(x, c), expected)


def test_grouped_generator_routes_rows() -> None:
    members = {g: build_family(FlowConfig(blocks=1, hidden=[8]), n_targets=1, n_conditions=2) for g in ("a", "b")}
    model = GroupedModel(members)
    codes = torch.tensor([[1.0], [0.0], [1.0]])
    rest = torch.randn(3, 2)
    z = torch.randn(3, 1)
    out = model.generator()(z, torch.cat([codes, rest], 1))
    assert torch.allclose(out[1], members["a"].generator()(z[1:2], rest[1:2])[0])
    assert torch.allclose(out[[0, 2]], members["b"].generator()(z[[0, 2]], rest[[0, 2]]))


@pytest.mark.parametrize("knots", [0, 40])
def test_histogram_reproduces_a_known_conditional_distribution(knots: int) -> None:
    torch.manual_seed(0)
    n = 100_000
    c = torch.rand(n, 1) * 4 - 2
    cell_of = torch.bucketize(c[:, 0], torch.linspace(-2, 2, 9)[1:-1])
    y = (cell_of.float() * 0.5 + 0.3 * torch.randn(n)).unsqueeze(1)  # piecewise-constant mean: exact for cells
    model = HistogramSampling(n_targets=1, n_conditions=1, config=HistogramConfig(condition_bins=8, mean_curve_knots=knots))
    info = model.fit(y, c)
    assert info["histogram_cells_fallback"] == 0
    sample = model.generator()(torch.randn(n, 1), c)
    for cell in range(8):
        rows = cell_of == cell
        assert float(sample[rows].mean()) == pytest.approx(cell * 0.5, abs=0.02)
        # a smooth mean curve cannot follow the steps exactly, so it widens the cells a little
        assert float(sample[rows].std()) == pytest.approx(0.3, rel=0.05 if knots == 0 else 0.12)


def test_histogram_mean_curve_follows_a_steep_smooth_mean() -> None:
    """The conventional method's point: mean from a smooth curve, so coarse cells do not smear a steep slope."""
    torch.manual_seed(1)
    n = 200_000
    c = torch.rand(n, 1) * 4 - 2
    y = 2.0 * c + 0.1 * torch.randn(n, 1)  # steep compared with the width
    coarse = HistogramConfig(condition_bins=4)
    with_curve = HistogramSampling(n_targets=1, n_conditions=1, config=coarse)
    raw = HistogramSampling(n_targets=1, n_conditions=1, config=HistogramConfig(condition_bins=4, mean_curve_knots=0))
    with_curve.fit(y, c)
    raw.fit(y, c)
    z = torch.randn(n, 1)
    residual_curve = with_curve.generator()(z, c) - 2.0 * c
    residual_raw = raw.generator()(z, c) - 2.0 * c
    assert float(residual_curve.std()) == pytest.approx(0.1, rel=0.1)
    assert float(residual_raw.std()) > 0.5


def test_spline_stack_generator_equals_zukos_inverse() -> None:
    from detgen.models.flows import FlowGenerator, FrozenSplineSampler, SplineStackGenerator

    torch.manual_seed(3)
    flow = ConditionalFlow(n_targets=1, n_conditions=4, config=FlowConfig(blocks=4, hidden=[16, 16], bins=5, bound=4.0))
    with torch.no_grad():
        for p in flow.parameters():  # move away from the near-identity initialisation
            p.add_(0.5 * torch.randn_like(p))
    assert isinstance(flow.generator(), FrozenSplineSampler)
    c = torch.randn(5000, 4)
    z = torch.randn(5000, 1) * 5  # includes values outside the spline domain (identity there)
    assert float(z.abs().max()) > 4.0
    reference = FlowGenerator(flow.flow)(z, c).detach()
    with torch.no_grad():
        stack = SplineStackGenerator(flow.flow, bins=5, bound=4.0)(z, c)
    with torch.inference_mode():
        frozen = flow.generator()(z, c)
    assert torch.allclose(stack, reference, atol=1e-5, rtol=1e-5)
    # float32 rounding of the normalisation, amplified by these deliberately steep splines: < 1e-3
    assert torch.allclose(frozen, reference, atol=1e-3, rtol=1e-3)
    assert float((frozen - reference).abs().median()) < 1e-6


def test_fast_log_prob_equals_zukos_with_the_same_gradients() -> None:
    torch.manual_seed(4)
    flow = ConditionalFlow(n_targets=1, n_conditions=3, config=FlowConfig(blocks=3, hidden=[16, 16], bins=6))
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.4 * torch.randn_like(p))
    x, c = torch.randn(3000, 1) * 2.5, torch.randn(3000, 3)  # some targets outside the spline domain
    fast = flow.log_prob(x, c)
    reference = flow.flow(c).log_prob(x)
    assert torch.allclose(fast, reference, atol=1e-4)
    grads_fast = torch.autograd.grad(fast.mean(), list(flow.parameters()))
    grads_ref = torch.autograd.grad(reference.mean(), list(flow.parameters()))
    for a, b in zip(grads_fast, grads_ref):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert set(flow.state_dict()) == {k for k in flow.state_dict() if k.startswith("flow.")}  # one set of weights
