"""A fast-sampling student flow distilled from a trained affine-MAF teacher (probability density distillation).

A masked autoregressive flow (MAF) evaluates densities in one pass per block but needs one pass per block *and
feature* to sample (60 for the photon CNF's 10 blocks x 6 targets). An inverse autoregressive flow (IAF) is the
mirror image: one pass per block to sample. The student has one IAF block per teacher block with the same feature
order; IAF block k can represent the inverse of MAF block k exactly (both are triangular maps, affine in the
current feature with coefficients that depend on the preceding ones), so the student learns block by block:

* data term: real training targets x are mapped to the teacher's latent chain h_0 = x, h_1, ..., h_K = z with the
  teacher's fast (density) direction; the student's chain started from the same z must return every h_k;
* latent term: student samples from fresh noise z are pushed through the teacher's density direction; the
  teacher's chain must return to the student's intermediate points and finally to z (the same noise).

Both terms only use the fast direction of each flow. Every term is the mean of log(1 + e) over rows and features,
where e is the squared difference divided by the per-feature variance of the teacher's h_k on the batch (so each
level counts alike whatever its units): a mean squared error once the student is close (e << 1), bounded in its
pull while a fresh student's samples still land where the teacher's chain explodes. Training is driven by
THE trainer: the teacher run is loaded in :meth:`FlowStudent.prepare_training` (only for training; the student's
run dir is complete without it). Sampling uses :class:`IAFSampler`, plain tensor ops that export.

References:
    | Improved Variational Inference with Inverse Autoregressive Flow (Kingma et al., 2016), arXiv:1606.04934
    | Parallel WaveNet: probability density distillation (van den Oord et al., 2017), arXiv:1711.10433
    | CaloFlow II: even faster and still accurate (Krause, Shih, 2021), arXiv:2110.11377
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from zuko.flows.autoregressive import MaskedAutoregressiveTransform

from detgen.config import FlowStudentConfig
from detgen.errors import ConfigError
from detgen.models.base import ModelFamily
from detgen.models.flows import (
    ConditionalFlow,
    FrozenMADEStack,
    TanhBijection,
    TanhOutput,
    count_outside_tanh,
    inside_tanh_domain,
)

#: Added to the per-feature variances that normalise the distillation terms (model-space units squared).
VARIANCE_FLOOR = 1e-8


class FlowStudent(ModelFamily):
    """An IAF student of a trained affine-MAF teacher run (``model.family: flow_student``).

    Arguments:
        n_targets: number of target features (at least 2; a one-target MAF already samples in one pass per block).
        n_conditions: number of encoded condition features.
        config: the student settings (teacher run dir, blocks, hidden, final_tanh, term weights).

    Example:
        >>> student = FlowStudent(n_targets=6, n_conditions=5, config=FlowStudentConfig(teacher="runs/cnf"))
        >>> student.generator()(torch.randn(4, 6), torch.randn(4, 5)).shape
        torch.Size([4, 6])
    """

    def __init__(self, *, n_targets: int, n_conditions: int, config: FlowStudentConfig):
        super().__init__()
        if n_targets < 2:
            raise ConfigError(f"model.family flow_student needs at least 2 targets, got {n_targets}")
        self.n_targets, self.n_conditions = n_targets, n_conditions
        self.noise_dim = n_targets
        self.config = config
        self.final_tanh = config.final_tanh
        orders = [torch.arange(n_targets), torch.arange(n_targets).flip(0)]
        self.blocks = nn.ModuleList(
            [self._block(orders[k % 2]) for k in range(config.blocks)]
        )
        for block in self.blocks:  # start every block at the identity (zero shift, zero log-scale)
            last = [m for m in block.hyper.modules() if isinstance(m, nn.Linear)][-1]  # type: ignore[union-attr]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self._teacher: ConditionalFlow | None = None

    def _block(self, order: Tensor) -> MaskedAutoregressiveTransform:
        return MaskedAutoregressiveTransform(
            features=self.n_targets, context=self.n_conditions, order=order, hidden_features=list(self.config.hidden)
        )

    # ------------------------------------------------------------------ the teacher
    def prepare_training(self, preprocessor: Any, train_set: tuple[Tensor, ...], val_set: tuple[Tensor, ...],
                         log: Callable[[str], None]) -> dict[str, Any]:
        """Load and check the teacher, give each student block its teacher block's feature order; count rows."""
        from detgen.runs import load_run

        path = Path(self.config.teacher)
        teacher = load_run(path, device=str(train_set[0].device))
        if json.dumps(teacher.preprocessor.to_json(), sort_keys=True) != json.dumps(preprocessor.to_json(), sort_keys=True):
            raise ConfigError(
                f"{path}: the teacher's preprocessing.json differs from this run's fitted preprocessing; train the "
                f"student on the teacher's data file with the same data section"
            )
        self.attach_teacher(teacher.model, source=str(path))  # type: ignore[arg-type]
        log(f"distilling teacher {path} ({self.config.blocks} affine MAF blocks) into an IAF student")
        info: dict[str, Any] = {"teacher": {"run_dir": str(path.resolve()), "best_epoch": teacher.meta.get("best_epoch"),
                                            "data_sha256": teacher.meta.get("data", {}).get("sha256")}}
        if self.final_tanh:
            info["rows_outside_tanh_domain"] = count_outside_tanh(preprocessor, train_set, val_set, log)
        return info

    def attach_teacher(self, model: ConditionalFlow, *, source: str = "teacher") -> None:
        """Check the teacher fits this student, copy its feature orders into the student's blocks, freeze it."""
        if not isinstance(model, ConditionalFlow) or model.config.transform != "affine":
            raise ConfigError(f"{source}: the teacher must be an affine flow (model.family flow, transform affine)")
        if model.config.blocks != self.config.blocks or model.n_targets != self.n_targets:
            raise ConfigError(
                f"{source}: the teacher has {model.config.blocks} blocks and {model.n_targets} targets; the student "
                f"config has model.blocks = {self.config.blocks} for {self.n_targets} targets (they must match)"
            )
        if model.final_tanh != self.final_tanh:
            raise ConfigError(f"{source}: the teacher's final_tanh is {model.final_tanh}; set model.final_tanh to match")
        with torch.no_grad():
            for student_block, teacher_block in zip(self.blocks, model.flow.transform.transforms):
                order = teacher_block.order
                if not torch.equal(student_block.order, order):  # type: ignore[arg-type]
                    template = self._block(order.cpu())
                    for name, buffer in template.named_buffers():
                        student_block.get_buffer(name).copy_(buffer)
        for p in model.parameters():
            p.requires_grad_(False)
        object.__setattr__(self, "_teacher", model.eval())  # not a submodule: never in the student's weights

    def _teacher_or_raise(self) -> ConditionalFlow:
        if self._teacher is None:
            raise RuntimeError("the student's teacher is not loaded: train it with `detgen train` (which calls "
                               "prepare_training) or call prepare_training first")
        return self._teacher

    def teacher_chain(self, x: Tensor, conditions: Tensor) -> list[Tensor]:
        """The teacher's density direction: [h_0 = x, h_1, ..., h_K = z] (x before any final tanh)."""
        transforms = self._teacher_or_raise().flow.transform.transforms
        chain = [x]
        for t in transforms:
            chain.append(t(conditions)(chain[-1]))
        return chain

    # ------------------------------------------------------------------ the student
    def student_chain(self, z: Tensor, conditions: Tensor) -> list[Tensor]:
        """The student's sampling direction: [s_0, s_1, ..., s_K = z], s_k = IAF_k(s_{k+1}) (before any tanh)."""
        chain = [z]
        for k in range(len(self.blocks) - 1, -1, -1):
            chain.append(self.blocks[k](conditions)(chain[-1]))
        return chain[::-1]

    def _pre_tanh(self, targets: Tensor, conditions: Tensor) -> tuple[Tensor, Tensor]:
        if not self.final_tanh:
            return targets, conditions
        inside = inside_tanh_domain(targets)
        return TanhBijection.inverse(targets[inside]), conditions[inside]

    def data_term(self, targets: Tensor, conditions: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Teacher latents of data pushed back through the student; also the teacher's per-level variances."""
        x, c = self._pre_tanh(targets, conditions)
        with torch.no_grad():
            teacher = self.teacher_chain(x, c)
        variances = [h.var(0, unbiased=False) + VARIANCE_FLOOR for h in teacher]
        student = self.student_chain(teacher[-1], c)
        levels = [_distance(s, h, v) for s, h, v in zip(student[:-1], teacher[:-1], variances[:-1])]
        # every level, and the data space once more: it is what the samples are judged on
        return torch.stack(levels).mean() + levels[0], variances

    def latent_term(self, conditions: Tensor, variances: list[Tensor]) -> Tensor:
        """Student samples of fresh noise pushed through the teacher: it must retrace the student's chain."""
        z = torch.randn(conditions.shape[0], self.n_targets, device=conditions.device)
        student = self.student_chain(z, conditions)
        teacher = self.teacher_chain(student[0], conditions)
        levels = [_distance(t, s, v) for t, s, v in zip(teacher[1:], student[1:], variances[1:])]
        return torch.stack(levels).mean()

    def loss(self, targets: Tensor, conditions: Tensor) -> Tensor:
        data, variances = self.data_term(targets, conditions)
        return self.config.data_weight * data + self.config.latent_weight * self.latent_term(conditions, variances)

    def validation_loss(self, targets: Tensor, conditions: Tensor) -> Tensor:
        """The data term only: deterministic, so epochs compare fairly."""
        return self.data_term(targets, conditions)[0]

    def generator(self) -> nn.Module:
        sampler = IAFSampler(list(self.blocks), features=self.n_targets)
        return TanhOutput(sampler) if self.final_tanh else sampler


def _distance(a: Tensor, b: Tensor, variance: Tensor) -> Tensor:
    """mean log(1 + (a - b)^2 / variance): the normalised squared error for small differences, robust for large."""
    return torch.log1p((a - b) ** 2 / variance).mean()


class IAFSampler(nn.Module):
    """The student's sampler: one MADE pass per block, y = x exp(s(x)) + m(x); plain tensor ops (exportable).

    Equals the student's zuko chain (tested); the blocks are applied from the last to the first, mirroring the
    teacher's inverse.
    """

    def __init__(self, blocks: list[nn.Module], *, features: int, slope: float = 1e-3):
        super().__init__()
        self.made = FrozenMADEStack(blocks, features=features, slope=slope)

    def forward(self, noise: Tensor, conditions: Tensor) -> Tensor:
        terms = self.made.condition_terms(conditions)
        x = noise
        for block in range(self.made.n_blocks - 1, -1, -1):
            shift, log_scale = self.made.shift_log_scale(block, x, terms[block])
            x = x * torch.exp(log_scale) + shift
        return x
