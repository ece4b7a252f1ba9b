"""The photon CNF's pieces (fixed-scale targets, final tanh, affine-MAF sampler) and the distilled IAF student."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from detgen.config import FlowConfig, FlowStudentConfig, config_from_dict, load_config
from detgen.dataset import split_table
from detgen.errors import ConfigError
from detgen.io import write_table
from detgen.models.flows import AffineMAFSampler, ConditionalFlow, TanhBijection
from detgen.models.student import FlowStudent, IAFSampler
from detgen.preprocessing import Preprocessor
from detgen.runs import load_run
from detgen.training import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TARGETS = ["d_et1", "d_eta1", "d_phi1", "d_et2", "d_eta2", "d_phi2"]
SCALES = [20.0, 0.01, 0.005, 20.0, 0.01, 0.005]


def toy_photons(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Correlated Gaussian responses whose widths grow with ET, |eta| and mu; d_et1 beyond +-20 GeV in the tail."""
    rng = np.random.default_rng(seed)
    table = {"et1": 20 + rng.exponential(40, n), "et2": 20 + rng.exponential(25, n),
             "eta1": rng.uniform(-2.5, 2.5, n), "eta2": rng.uniform(-2.5, 2.5, n), "mu": rng.uniform(0, 40, n)}
    z = rng.standard_normal((n, 6))
    z[:, 3:] = 0.5 * z[:, :3] + math.sqrt(0.75) * z[:, 3:]
    for j, name in enumerate(TARGETS):
        et, eta = (table["et1"], table["eta1"]) if j < 3 else (table["et2"], table["eta2"])
        width = SCALES[j] * 0.1 * (1 + 0.01 * (et - 20)) * (1 + 0.2 * eta**2) * (1 + table["mu"] / 80)
        table[name] = width * z[:, j]
    return table


def tiny_cnf_config(epochs: int = 1) -> dict:
    raw = json.loads(json.dumps(load_config(CONFIGS / "photons_cnf.yaml").to_dict()))
    raw["model"].update(blocks=2, hidden=[16, 16])
    raw["training"].update(epochs=epochs, batch_size=256, metric_rows=2000)
    return raw


# ------------------------------------------------------------------------------------------ tanh and scale
def test_tanh_bijection_inverts_and_its_log_det_matches_autograd() -> None:
    u = torch.linspace(-12, 12, 97, dtype=torch.float64)
    y = TanhBijection.forward(u)
    assert torch.all(y.abs() <= 1)
    inside = y.abs() < 1 - 1e-12
    assert torch.allclose(TanhBijection.inverse(y[inside]), u[inside], atol=1e-6)
    u_grad = u.clone().requires_grad_(True)
    (dy_du,) = torch.autograd.grad(TanhBijection.forward(u_grad).sum(), u_grad)
    finite = dy_du > 0
    assert torch.allclose(TanhBijection.log_abs_det(u)[finite], dy_du[finite].log(), atol=1e-8)
    assert torch.isfinite(TanhBijection.log_abs_det(torch.tensor([-200.0, 200.0]))).all()  # stable far out


def test_fixed_scale_transform_divides_and_round_trips() -> None:
    table = {"c": np.linspace(1, 2, 50), "d": np.linspace(-30, 30, 50)}
    pre = Preprocessor.fit(table, conditions=["c"], targets=["d"], transforms={"d": "scale:20"})
    x = torch.tensor(table["d"], dtype=torch.float32).unsqueeze(1)
    assert torch.allclose(pre.encode_targets(x), x / 20)
    assert torch.allclose(pre.decode_targets(pre.encode_targets(x)), x)
    assert Preprocessor.from_json(json.loads(json.dumps(pre.to_json()))).target_specs == pre.target_specs


@pytest.mark.parametrize("spec", ["scale:-1", "scale:0", "scale:abc", "scale:"])
def test_bad_fixed_scale_is_a_config_error(spec: str) -> None:
    raw = tiny_cnf_config()
    raw["data"]["transforms"]["d_et1"] = spec
    with pytest.raises(ConfigError, match="data.transforms.d_et1"):
        config_from_dict(raw)


def test_final_tanh_needs_bounded_targets() -> None:
    raw = tiny_cnf_config()
    del raw["data"]["transforms"]["d_eta2"]  # standardised: not confined to [-1, 1]
    with pytest.raises(ConfigError, match="final_tanh.*d_eta2"):
        config_from_dict(raw)


def tanh_flow(n_targets: int = 3, seed: int = 0) -> ConditionalFlow:
    torch.manual_seed(seed)
    config = FlowConfig(transform="affine", blocks=3, hidden=[16, 16], randperm=True, final_tanh=True)
    return ConditionalFlow(n_targets=n_targets, n_conditions=2, config=config)


def test_tanh_flow_density_is_the_change_of_variables_and_zero_outside() -> None:
    flow = tanh_flow()
    c = torch.randn(8, 2)
    y = (torch.rand(8, 3) * 1.8 - 0.9).requires_grad_(True)

    def z_of(y_row: torch.Tensor, c_row: torch.Tensor) -> torch.Tensor:
        return flow.flow.transform(c_row)(torch.atanh(y_row))

    for i in range(8):
        jacobian = torch.autograd.functional.jacobian(lambda v, i=i: z_of(v, c[i]), y[i].detach())
        z = z_of(y[i].detach(), c[i])
        expected = -0.5 * (z**2).sum() - 1.5 * math.log(2 * math.pi) + torch.linalg.slogdet(jacobian)[1]
        assert torch.allclose(flow.log_prob(y[i : i + 1].detach(), c[i : i + 1]), expected, atol=1e-4)
    outside = torch.tensor([[0.1, 1.0, 0.2], [-1.5, 0.0, 0.0]])
    assert torch.all(flow.log_prob(outside, c[:2]) == -math.inf)


def test_loss_leaves_out_exactly_the_rows_outside() -> None:
    flow = tanh_flow()
    c = torch.randn(10, 2)
    y = torch.rand(10, 3) * 1.8 - 0.9
    y_with_outside = y.clone()
    y_with_outside[[2, 7], 1] = torch.tensor([1.2, -1.0])
    keep = torch.tensor([i not in (2, 7) for i in range(10)])
    assert torch.allclose(flow.loss(y_with_outside, c), flow.loss(y[keep], c[keep]))


@pytest.mark.parametrize("final_tanh", [False, True])
def test_affine_maf_sampler_equals_zukos_inverse(final_tanh: bool) -> None:
    flow = tanh_flow(n_targets=6)
    c, z = torch.randn(256, 2), torch.randn(256, 6)
    u = flow.flow.transform(c).inv(z)
    assert torch.allclose(AffineMAFSampler(flow.flow)(z, c), u, atol=1e-5)
    assert torch.allclose(flow.generator()(z, c), torch.tanh(u), atol=1e-5)
    assert torch.all(flow.generator()(z, c).abs() <= 1)


# ------------------------------------------------------------------------------------------ target noise
def test_target_noise_acts_in_training_only_before_the_tanh_at_each_targets_scale() -> None:
    torch.manual_seed(0)
    config = FlowConfig(transform="affine", blocks=2, hidden=[16, 16], randperm=True, final_tanh=True, target_noise=0.1)
    flow = ConditionalFlow(n_targets=3, n_conditions=2, config=config)
    y = torch.tanh(torch.randn(4000, 3) * torch.tensor([0.05, 0.2, 0.5]))
    y[0, 1] = 1.5  # outside the tanh's domain: left out of the scale as of the loss
    table = {"a": np.zeros(4000), "b": np.zeros(4000), **{f"t{j}": y[:, j].numpy() for j in range(3)}}
    pre = Preprocessor.fit(table, conditions=["a", "b"], targets=["t0", "t1", "t2"],
                           transforms={f"t{j}": "scale:1" for j in range(3)})
    c = torch.randn(4000, 2)
    info = flow.prepare_training(pre, (y, c), (y[:100], c[:100]), lambda _: None)
    expected = 0.1 * torch.atanh(y[1:]).std(0)
    assert flow.noise_scale is not None and torch.allclose(flow.noise_scale, expected)
    assert info["target_noise_scale"] == pytest.approx(expected.tolist())
    rows, cond = y[1:9], c[1:9]
    flow.eval()  # validation and generation: the exact density, no noise
    exact = flow.log_prob(rows, cond)
    assert torch.equal(flow.log_prob(rows, cond), exact)
    flow.train()
    torch.manual_seed(5)
    noisy = flow.log_prob(rows, cond)
    torch.manual_seed(5)
    shifted = torch.tanh(torch.atanh(rows) + flow.noise_scale * torch.randn(rows.shape))
    flow.eval()
    assert not torch.allclose(noisy, exact)
    assert torch.allclose(noisy, flow.log_prob(shifted, cond), atol=1e-5)  # the same noise, added before the tanh


def test_target_noise_lets_a_flow_learn_a_degenerate_response_as_its_convolution() -> None:
    """x2 = 2 x1 exactly (rho = 1): with noise f the flow learns x2 - 2 x1 ~ N(0, f^2 (s2^2 + 4 s1^2)), finite."""
    torch.manual_seed(1)
    f = 0.05
    config = FlowConfig(transform="affine", blocks=2, hidden=[32, 32], target_noise=f)
    flow = ConditionalFlow(n_targets=2, n_conditions=1, config=config)
    x1 = torch.randn(20000, 1)
    x, c = torch.cat([x1, 2 * x1], 1), torch.zeros(20000, 1)
    flow.prepare_training(None, (x, c), (x, c), lambda _: None)
    optimizer = torch.optim.Adam(flow.parameters(), lr=3e-3)
    for _ in range(600):
        rows = torch.randint(0, 20000, (512,))
        loss = flow.loss(x[rows], c[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    flow.eval()
    with torch.no_grad():
        sample = flow.generator()(torch.randn(20000, 2), c)
        assert torch.isfinite(flow.loss(x, c))
    width = float((sample[:, 1] - 2 * sample[:, 0]).std())
    expected = f * math.sqrt(float(x[:, 1].var()) + 4 * float(x[:, 0].var()))
    assert width == pytest.approx(expected, rel=0.3)
    assert float(sample[:, 0].std()) == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("value", [-0.1, 1.0, float("nan")])
def test_bad_target_noise_is_a_config_error(value: float) -> None:
    raw = tiny_cnf_config()
    raw["model"]["target_noise"] = value
    with pytest.raises(ConfigError, match="model.target_noise"):
        config_from_dict(raw)


# ------------------------------------------------------------------------------------------ training
def test_the_cnf_config_trains_and_counts_the_rows_it_leaves_out(tmp_path: Path) -> None:
    table = toy_photons(3000)
    table["d_et1"][:5] = 45.0  # beyond the config's fixed 40 GeV scale: no preimage under the final tanh
    table["d_phi2"][5:8] = -0.006
    data = tmp_path / "photons.parquet"
    write_table(data, table)
    messages: list[str] = []
    config = load_config(CONFIGS / "photons_cnf.yaml").replace_training(epochs=1, metric_rows=2000)
    train(config, data, tmp_path / "run", progress=False, log=messages.append)
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    counts = meta["rows_outside_tanh_domain"]
    # the exact expectation: rows of each split with any target beyond its fixed scale
    indexed = {**table, "row": np.arange(3000)}
    train_rows, val_rows, _ = (part["row"] for part in split_table(indexed, config.data))
    scales = [float(config.data.transforms[t].removeprefix("scale:")) for t in TARGETS]  # the config's factors
    scaled = np.stack([table[t] / s for t, s in zip(TARGETS, scales)], 1)
    beyond = (np.abs(scaled) >= 1).any(1)
    assert beyond.sum() >= 8
    assert counts["train"] == int(beyond[train_rows].sum()) and counts["val"] == int(beyond[val_rows].sum())
    assert counts["train_by_column"]["d_et1"] == int((np.abs(scaled[train_rows, 0]) >= 1).sum())
    assert counts["train_rows"] == 2400 and counts["val_rows"] == 300
    assert any("outside (-1, 1)" in m and "left out of the loss" in m for m in messages)
    assert load_run(tmp_path / "run").preprocessor.target_columns == TARGETS
    assert meta["epochs_completed"] == 1
    samples = load_run(tmp_path / "run").sampler()(torch.randn(100, 6), torch.tensor(
        np.stack([table[c][:100] for c in ("et1", "et2", "eta1", "eta2", "mu")], 1), dtype=torch.float32))
    assert torch.all(samples.abs() <= torch.tensor(scales))  # the tanh bounds generation to the scale


# ------------------------------------------------------------------------------------------ student
def test_student_blocks_invert_and_their_log_det_matches_autograd() -> None:
    torch.manual_seed(3)
    student = FlowStudent(n_targets=3, n_conditions=2, config=FlowStudentConfig(teacher="t", blocks=2, hidden=[16]))
    for block in student.blocks:
        for p in block.parameters():  # leave the identity start so the test means something
            torch.nn.init.normal_(p, std=0.3)
    c, x = torch.randn(5, 2), torch.randn(5, 3)
    for block in student.blocks:
        transform = block(c)
        y = transform(x)  # the sampling direction: one pass
        assert torch.allclose(transform.inv(y), x, atol=1e-5)
        ladj = transform.log_abs_det_jacobian(x, y)
        for i in range(5):
            jacobian = torch.autograd.functional.jacobian(lambda v, i=i, b=block: b(c[i])(v), x[i])
            assert torch.allclose(ladj[i], torch.linalg.slogdet(jacobian)[1], atol=1e-4)
    z = torch.randn(64, 3)
    assert torch.allclose(IAFSampler(list(student.blocks), features=3)(z, c[:1].expand(64, -1)),
                          student.student_chain(z, c[:1].expand(64, -1))[0], atol=1e-5)


def distilled_pair(steps: int) -> tuple[ConditionalFlow, FlowStudent]:
    torch.manual_seed(0)
    teacher = ConditionalFlow(n_targets=3, n_conditions=2,
                              config=FlowConfig(transform="affine", blocks=2, hidden=[16, 16], randperm=True))
    for p in teacher.parameters():
        torch.nn.init.normal_(p, std=0.3)  # a non-trivial teacher: block maps far from the identity
    student = FlowStudent(n_targets=3, n_conditions=2, config=FlowStudentConfig(teacher="t", blocks=2, hidden=[32, 32]))
    student.attach_teacher(teacher)
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    with torch.no_grad():
        c_train = torch.randn(4096, 2)
        x_train = teacher.generator()(torch.randn(4096, 3), c_train)
    for _ in range(steps):
        rows = torch.randint(0, 4096, (256,))
        loss = student.loss(x_train[rows], c_train[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return teacher, student


def test_a_distilled_student_reproduces_the_teachers_samples() -> None:
    teacher, student = distilled_pair(steps=400)
    c, z = torch.randn(2000, 2), torch.randn(2000, 3)
    with torch.no_grad():
        x_teacher = teacher.generator()(z, c)
        x_student = student.generator()(z, c)
        x_untrained = FlowStudent(n_targets=3, n_conditions=2,
                                  config=FlowStudentConfig(teacher="t", blocks=2, hidden=[32, 32])).generator()(z, c)
    spread = x_teacher.std(0)
    error = ((x_student - x_teacher).abs() / spread).median(0).values
    assert torch.all(error < 0.05), error  # the same event from the same noise, to a few % of the spread
    assert torch.all(((x_untrained - x_teacher).abs() / spread).median(0).values > 0.2)  # not a trivial pass
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not any(k.startswith("_teacher") for k in student.state_dict())


def test_student_refuses_a_teacher_that_does_not_fit() -> None:
    teacher = ConditionalFlow(n_targets=3, n_conditions=2, config=FlowConfig(transform="rqs", blocks=2, hidden=[8]))
    student = FlowStudent(n_targets=3, n_conditions=2, config=FlowStudentConfig(teacher="t", blocks=2, hidden=[8]))
    with pytest.raises(ConfigError, match="affine"):
        student.attach_teacher(teacher)
    teacher = ConditionalFlow(n_targets=3, n_conditions=2, config=FlowConfig(transform="affine", blocks=3, hidden=[8]))
    with pytest.raises(ConfigError, match="blocks"):
        student.attach_teacher(teacher)
    with pytest.raises(RuntimeError, match="teacher is not loaded"):
        student.loss(torch.rand(4, 3), torch.randn(4, 2))


def test_student_trains_from_a_teacher_run_and_its_run_dir_stands_alone(tmp_path: Path) -> None:
    data = tmp_path / "photons.parquet"
    write_table(data, toy_photons(2000))
    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student"
    train(config_from_dict(tiny_cnf_config()), data, teacher_dir, progress=False, log=lambda _: None)
    raw = json.loads(json.dumps(load_config(CONFIGS / "photons_student.yaml").to_dict()))
    raw["model"].update(teacher=str(teacher_dir), blocks=2, hidden=[16, 16])
    raw["training"].update(epochs=1, batch_size=256, metric_rows=2000)
    train(config_from_dict(raw), data, student_dir, progress=False, log=lambda _: None)
    meta = json.loads((student_dir / "meta.json").read_text())
    assert meta["teacher"]["run_dir"] == str(teacher_dir.resolve())
    assert "rows_outside_tanh_domain" in meta
    # the student's order buffers are the teacher's (random permutations), saved with its weights
    teacher_run = load_run(teacher_dir)
    orders = [t.order for t in teacher_run.model.flow.transform.transforms]  # type: ignore[union-attr]
    shutil.rmtree(teacher_dir)  # generation needs only the student's own run dir
    run = load_run(student_dir)
    assert all(torch.equal(b.order, o) for b, o in zip(run.model.blocks, orders))  # type: ignore[union-attr]
    z, c = torch.randn(50, 6), torch.tensor([[50.0, 30.0, 0.1, -1.0, 20.0]]).expand(50, -1)
    first = run.sampler()(z, c)
    again = load_run(student_dir).sampler()(z, c)
    assert torch.equal(first, again) and torch.isfinite(first).all()
    # a teacher trained on other data (different fitted preprocessing) is refused
    other = tmp_path / "other.parquet"
    write_table(other, toy_photons(2000, seed=5))
    train(config_from_dict(tiny_cnf_config()), other, teacher_dir, progress=False, log=lambda _: None)
    with pytest.raises(ConfigError, match="preprocessing"):
        train(config_from_dict(raw), data, tmp_path / "student2", progress=False, log=lambda _: None)
