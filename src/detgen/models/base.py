"""The model-family interface the trainer drives, and the sampler every family exposes.

A family works in model space (preprocessed targets and encoded conditions):

* ``loss(targets, conditions)``  scalar training loss (negative log-likelihood for flows);
* ``generator()``                 a module ``(noise, conditions) -> targets`` in model space;
* ``noise_dim``                   the width of the noise the generator consumes;
* ``fit(targets, conditions)``    for families fitted in closed form (``trainable = False``);
* ``log_prob(targets, conditions)`` optionally.

The trainer's loop calls ``make_optimizers(training)`` once and ``train_step(targets, conditions, optimizers,
training)`` per batch. The defaults (one Adam over all parameters; minimise ``loss``) serve every family whose
training is "minimise one loss"; a family with several players (a GAN's generator and critic) overrides both,
and the trainer still owns the schedule, checkpoints (every optimiser's state), resume and best-epoch choice.

:class:`Sampler` wraps a generator with the preprocessing so that it maps noise and physical conditions
to physical targets; it is the single graph used by ``generate``, ONNX export and distributed generation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from detgen.preprocessing import Preprocessor


class ModelFamily(nn.Module):
    """Base class of every model family."""

    #: False for closed-form models (histogram sampling): the trainer calls ``fit`` once instead of a loop.
    trainable: bool = True
    noise_dim: int = 1
    #: False for partner models that draw no samples (a GAN's regressor): generate and export refuse them.
    generates: bool = True

    def loss(self, targets: Tensor, conditions: Tensor) -> Tensor:
        raise NotImplementedError

    def prepare_training(self, preprocessor: Preprocessor, train_set: tuple[Tensor, ...], val_set: tuple[Tensor, ...],
                         log: Callable[[str], None]) -> dict[str, Any]:
        """Called once by the trainer before the optimisers are made: checks and counts that need the data, or
        loading a frozen partner (a teacher flow, a GAN's regressor). The returned dict goes into meta.json."""
        return {}

    def finish_training(self, train_set: tuple[Tensor, ...], log: Callable[[str], None]) -> dict[str, Any]:
        """Called once by the trainer after the last epoch, with the best epoch's weights loaded: a closed-form
        last step of the fit (e.g. an exact refit of one parameter). The trainer saves the weights again
        afterwards; the returned dict goes into meta.json. Must be idempotent (a resumed finished run calls it
        again)."""
        return {}

    def validation_loss(self, targets: Tensor, conditions: Tensor) -> Tensor:
        """The loss reported as ``val_loss`` (default: the training loss on validation rows)."""
        return self.loss(targets, conditions)

    def make_optimizers(self, training: Any) -> dict[str, torch.optim.Optimizer]:
        """Named optimisers; each param group may carry ``lr_scale`` (its lr relative to the schedule's)."""
        return {"model": torch.optim.Adam(self.parameters(), lr=training.lr, weight_decay=training.weight_decay)}

    def train_step(self, targets: Tensor, conditions: Tensor, optimizers: dict[str, torch.optim.Optimizer],
                   training: Any) -> dict[str, float]:
        """One optimisation step on a batch; returns scalars for the history (``loss`` is the headline)."""
        loss = self.loss(targets, conditions)
        optimizer_step(loss, optimizers["model"], self.parameters(), training.grad_clip)
        return {"loss": loss.item()}

    def generator(self) -> nn.Module:
        raise NotImplementedError

    def fit(self, targets: Tensor, conditions: Tensor) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} is trained by gradient descent, not fit()")

    def log_prob(self, targets: Tensor, conditions: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no tractable density")


def optimizer_step(loss: Tensor, optimizer: torch.optim.Optimizer, parameters: Any, grad_clip: float | None,
                   what: str = "loss") -> None:
    """Check ``loss`` is finite, back-propagate, clip the gradient norm of ``parameters`` if asked, step."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{what} is {loss.item()}; lower training.lr?")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    optimizer.step()


class ClosedFormGenerator(nn.Module):
    """``(noise, conditions) -> model.sample(noise, conditions)``: the generator of a closed-form family
    (histogram sampling, parametric smearing), whose tables live in the family module itself."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, noise: Tensor, conditions: Tensor) -> Tensor:
        return self.model.sample(noise, conditions)  # type: ignore[operator,no-any-return]


class GroupedGenerator(nn.Module):
    """Routes rows to one generator per group by the group code in the first condition feature."""

    def __init__(self, members: dict[str, nn.Module], n_targets: int):
        super().__init__()
        self.members = nn.ModuleList(members.values())
        self.n_targets = n_targets

    def forward(self, noise: Tensor, conditions: Tensor) -> Tensor:
        code, rest = conditions[:, 0], conditions[:, 1:]
        if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing():
            # a static graph: evaluate every member and select (no data-dependent shapes)
            out = torch.zeros(noise.shape[0], self.n_targets, dtype=noise.dtype, device=noise.device)
            for g, member in enumerate(self.members):
                out = torch.where((code == g).unsqueeze(1), member(noise, rest), out)
            return out
        out = torch.full((noise.shape[0], self.n_targets), float("nan"), dtype=noise.dtype, device=noise.device)
        for g, member in enumerate(self.members):
            rows = torch.nonzero(code == g).squeeze(1)
            if rows.numel():
                out[rows] = member(noise[rows], rest[rows])
        return out


class GroupedModel(ModelFamily):
    """Independent models, one per group (e.g. one per species), trained together by one trainer.

    The training loss is the row-weighted sum of the members' losses, and members share no parameters,
    so each member's gradient comes only from its own rows, exactly as if trained alone.
    """

    def __init__(self, members: dict[str, ModelFamily]):
        super().__init__()
        self.group_names = list(members)
        self.members = nn.ModuleDict({_key(g): m for g, m in members.items()})
        first = next(iter(members.values()))
        self.trainable = first.trainable
        self.noise_dim = first.noise_dim

    def _split(self, conditions: Tensor) -> list[tuple[ModelFamily, Tensor]]:
        code = conditions[:, 0]
        return [(self.members[_key(g)], torch.nonzero(code == i).squeeze(1)) for i, g in enumerate(self.group_names)]  # type: ignore[misc]

    def loss(self, targets: Tensor, conditions: Tensor) -> Tensor:
        total = targets.new_zeros(())
        for member, rows in self._split(conditions):
            if rows.numel():
                total = total + member.loss(targets[rows], conditions[rows, 1:]) * rows.numel()
        return total / targets.shape[0]

    def prepare_training(self, preprocessor: Preprocessor, train_set: tuple[Tensor, ...], val_set: tuple[Tensor, ...],
                         log: Callable[[str], None]) -> dict[str, Any]:
        info: dict[str, Any] = {}
        val_rows = dict(zip(self.group_names, (rows for _, rows in self._split(val_set[1]))))
        for (member, rows), name in zip(self._split(train_set[1]), self.group_names):
            member_train = (train_set[0][rows], train_set[1][rows, 1:])
            member_val = (val_set[0][val_rows[name]], val_set[1][val_rows[name], 1:])
            for k, v in member.prepare_training(preprocessor, member_train, member_val, log).items():
                info[f"{k}_{name}"] = v
        return info

    def finish_training(self, train_set: tuple[Tensor, ...], log: Callable[[str], None]) -> dict[str, Any]:
        info: dict[str, Any] = {}
        for (member, rows), name in zip(self._split(train_set[1]), self.group_names):
            for k, v in member.finish_training((train_set[0][rows], train_set[1][rows, 1:]), log).items():
                info[f"{k}_{name}"] = v
        return info

    def fit(self, targets: Tensor, conditions: Tensor) -> dict[str, Any]:
        info: dict[str, Any] = {}
        for (member, rows), name in zip(self._split(conditions), self.group_names):
            if rows.numel() == 0:
                continue
            for k, v in member.fit(targets[rows], conditions[rows, 1:]).items():
                info[f"{k}_{name}"] = v
        return info

    def generator(self) -> nn.Module:
        n_targets = int(getattr(next(iter(self.members.values())), "n_targets", 1))
        return GroupedGenerator({g: self.members[_key(g)].generator() for g in self.group_names}, n_targets)  # type: ignore[operator]


def _key(group: str) -> str:
    """ModuleDict keys cannot contain '.', and '+'/'-' read badly in weight names: make them plain."""
    return group.replace("+", "plus").replace("-", "minus").replace(".", "_")


class Sampler(nn.Module):
    """``forward(noise, conditions) -> targets``, all in physical units (the one exported graph).

    ``conditions`` columns are ``preprocessor.input_columns`` (label columns as integer codes);
    the output columns are ``preprocessor.target_columns`` (image columns flattened, pixel by pixel; an image
    normalised by a condition is scaled back with the raw ``conditions``). Deterministic given the noise.
    """

    def __init__(self, generator: nn.Module, preprocessor: Preprocessor, noise_dim: int):
        super().__init__()
        self.generator = generator
        self.preprocessor = preprocessor
        self.noise_dim = noise_dim

    def forward(self, noise: Tensor, conditions: Tensor) -> Tensor:
        encoded = self.preprocessor.encode_conditions(conditions)
        return self.preprocessor.decode_targets(self.generator(noise, encoded), conditions)
