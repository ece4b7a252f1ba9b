"""The trainer: one loop for every model family.

Adam with a step-halving or power-law learning-rate schedule; the best epoch is chosen by a validation
metric (mean 1-D Wasserstein distance between validation targets and samples, by default); a checkpoint
after every epoch holds the complete state (weights, optimiser, RNG) so that ``resume=True`` continues a
killed run exactly where it stopped: a run killed after epoch k and resumed gives the same files as an
uninterrupted one. Same seed on CPU -> bitwise-identical ``model.safetensors``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from detgen.config import Config, TrainingConfig
from detgen.dataset import PreparedData, prepare
from detgen.device import resolve_device
from detgen.errors import ConfigError, SchemaError
from detgen.models.base import ModelFamily
from detgen.preprocessing import Preprocessor
from detgen.runs import (
    RUN_FORMAT,
    build_run_model,
    model_state,
    read_config_of_run,
    read_tensors,
    versions,
    write_history,
    write_json,
    write_run_files,
    write_tensors,
)

Log = Callable[[str], None]


# ------------------------------------------------------------------------------------------ schedule
def learning_rate(training: TrainingConfig, epoch: int) -> float:
    """Learning rate for a 0-based epoch."""
    schedule = training.schedule
    if schedule.kind == "step":
        return training.lr * schedule.factor ** (epoch // schedule.step_epochs)
    if schedule.kind == "power":
        # geometric interpolation from lr (first epoch) to final_lr (last epoch)
        fraction = epoch / max(training.epochs - 1, 1)
        return training.lr * (schedule.final_lr / training.lr) ** fraction
    return training.lr


# ------------------------------------------------------------------------------------------ metric
def mean_wasserstein_sorted(a: Tensor, b: Tensor) -> float:
    """Mean over columns of the 1-D Wasserstein distance of two equal-size samples (model space)."""
    a_sorted, _ = torch.sort(a, dim=0)
    b_sorted, _ = torch.sort(b, dim=0)
    return float((a_sorted - b_sorted).abs().mean())


@torch.no_grad()
def validation_scores(
    model: ModelFamily, val: tuple[Tensor, Tensor], training: TrainingConfig, batch_size: int = 65536
) -> dict[str, float]:
    targets, conditions = val
    rows = targets.shape[0] if training.metric_rows is None else min(training.metric_rows, targets.shape[0])
    if rows < targets.shape[0]:  # the same random rows every epoch (the validation split is in file order)
        pick = torch.randperm(targets.shape[0], generator=torch.Generator().manual_seed(training.seed + 104729))
        pick = pick[:rows].sort().values.to(targets.device)
        targets, conditions = targets[pick], conditions[pick]
    model.eval()
    losses = []
    if model.trainable:
        for start in range(0, rows, batch_size):
            stop = start + batch_size
            losses.append(float(model.validation_loss(targets[start:stop], conditions[start:stop]))
                          * (min(stop, rows) - start))
    noise_gen = torch.Generator().manual_seed(training.seed + 7919)  # fixed noise: epochs compare fairly
    noise = torch.randn(rows, model.noise_dim, generator=noise_gen).to(targets.device)
    generator = model.generator()
    samples = torch.cat(
        [generator(noise[s : s + batch_size], conditions[s : s + batch_size]) for s in range(0, rows, batch_size)]
    )
    model.train()
    return {
        "val_loss": sum(losses) / rows if losses else math.nan,
        "mean_wasserstein": mean_wasserstein_sorted(samples, targets),
    }


# ------------------------------------------------------------------------------------------ checkpoints
def _optimizer_to_files(name: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{name}.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _optimizer_from_files(name: str, optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor],
                          info: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"optim.{name}."
    for key, value in tensors.items():
        if key.startswith(prefix):
            index, entry = key[len(prefix):].split(".", 1)
            state.setdefault(int(index), {})[entry] = value
    for index, entries in info["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in info["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


Optimizers = dict[str, torch.optim.Optimizer]


def save_checkpoint(
    run_dir: Path, model: ModelFamily, optimizers: Optimizers, shuffle: torch.Generator, info: dict[str, Any]
) -> None:
    tensors = {f"model.{k}": v for k, v in model_state(model).items()}
    optim_info = {}
    for name, optimizer in optimizers.items():
        optim_tensors, optim_info[name] = _optimizer_to_files(name, optimizer)
        tensors.update(optim_tensors)
    tensors["rng.shuffle"] = shuffle.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    write_tensors(run_dir / "checkpoints" / "last.safetensors", tensors)
    write_json(run_dir / "checkpoints" / "last.json", {**info, "optimizers": optim_info})


def load_checkpoint(run_dir: Path, model: ModelFamily, optimizers: Optimizers, shuffle: torch.Generator
                    ) -> dict[str, Any]:
    json_path = run_dir / "checkpoints" / "last.json"
    if not json_path.is_file():
        raise SchemaError(f"{run_dir}: no checkpoint to resume from (checkpoints/last.json missing)")
    info = json.loads(json_path.read_text())
    tensors = read_tensors(run_dir / "checkpoints" / "last.safetensors")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    saved = info.pop("optimizers", None)
    if saved is None or set(saved) != set(optimizers):
        raise SchemaError(f"{json_path}: optimiser state for {sorted(saved or [])}, expected {sorted(optimizers)}; "
                          "written by another detgen version?")
    for name, optimizer in optimizers.items():
        _optimizer_from_files(name, optimizer, tensors, saved[name])
    shuffle.set_state(tensors["rng.shuffle"])
    torch.set_rng_state(tensors["rng.torch"])
    return info


# ------------------------------------------------------------------------------------------ train
def _resolve_config(config: Config, run_dir: Path, *, epochs: int | None, seed: int | None, device: str | None,
                    resume: bool) -> Config:
    changes = {k: v for k, v in (("epochs", epochs), ("seed", seed), ("device", device)) if v is not None}
    config = config.replace_training(**changes)
    if resume:
        saved = read_config_of_run(run_dir)
        ignore = {"epochs", "device"}
        for section in ("data", "model", "training"):
            a, b = getattr(saved, section), getattr(config, section)
            for f in dataclasses.fields(a):
                if section == "training" and f.name in ignore:
                    continue
                if getattr(a, f.name) != getattr(b, f.name):
                    raise ConfigError(
                        f"{run_dir}: cannot resume, {section}.{f.name} = {getattr(b, f.name)!r} differs from the "
                        f"run's {getattr(a, f.name)!r}"
                    )
    elif (run_dir / "meta.json").exists():
        raise ConfigError(f"{run_dir}: already holds a run; use --resume to continue it or choose another -o")
    return config


def train(
    config: Config,
    data_path: str | Path,
    run_dir: str | Path,
    *,
    epochs: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Log = print,
) -> Path:
    """Train ``config``'s model on ``data_path`` into ``run_dir``; returns the run dir."""
    run_dir = Path(run_dir)
    config = _resolve_config(config, run_dir, epochs=epochs, seed=seed, device=device, resume=resume)
    training = config.training
    torch_device = resolve_device(training.device)

    preprocessor = None
    if resume:
        preprocessor = Preprocessor.from_json(json.loads((run_dir / "preprocessing.json").read_text()))
    prepared = prepare(data_path, config.data, preprocessor=preprocessor)
    torch.manual_seed(training.seed)
    model = build_run_model(config, prepared.preprocessor).to(torch_device)
    train_set = tuple(t.to(torch_device) for t in prepared.train)
    val_set = tuple(t.to(torch_device) for t in prepared.val)

    excluded = {k: v for k, v in prepared.info.items() if k.startswith(("select_", "not_in_groups_")) and v}
    if excluded:
        log("excluded rows (by data.select / data.groups; recorded in meta.json): "
            + ", ".join(f"{k} {v}" for k, v in excluded.items()))
    meta = _meta(config, prepared, run_dir, resume)
    if resume and meta["data"]["sha256"] != prepared.info["sha256"]:
        raise SchemaError(f"{data_path}: differs from the data this run was trained on (sha256 mismatch); cannot resume")
    write_run_files(run_dir, config, prepared.preprocessor, meta)

    if not model.trainable:
        return _fit_closed_form(model, train_set, val_set, config, prepared.preprocessor, run_dir, meta, log)  # type: ignore[arg-type]

    meta.update(model.prepare_training(prepared.preprocessor, train_set, val_set, log))  # type: ignore[arg-type]
    optimizers = model.make_optimizers(training)
    shuffle = torch.Generator().manual_seed(training.seed + 1)
    state: dict[str, Any] = {"epoch": 0, "best_metric": math.inf, "best_epoch": -1, "history": [], "stale": 0}
    if resume and (run_dir / "checkpoints" / "last.json").is_file():
        state = load_checkpoint(run_dir, model, optimizers, shuffle)
        log(f"resuming {run_dir} after epoch {state['epoch']}")
    elif resume:  # killed before its first checkpoint: nothing to restore, start from the beginning
        log(f"{run_dir} has no checkpoint yet; starting from epoch 1")
    n_train = train_set[0].shape[0]
    log(f"training {config.name}: {n_train} training rows, {val_set[0].shape[0]} validation rows, "
        f"{sum(p.numel() for p in model.parameters())} parameters, device {torch_device}")

    for epoch in range(state["epoch"], training.epochs):
        started = time.perf_counter()
        lr = learning_rate(training, epoch)
        for optimizer in optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
        train_scores = _run_epoch(model, optimizers, train_set, shuffle, training, epoch, progress)  # type: ignore[arg-type]
        train_loss = train_scores.pop("loss")
        scores = validation_scores(model, val_set, training)  # type: ignore[arg-type]
        metric = scores[training.best_metric]
        row = {"epoch": epoch + 1, "train_loss": train_loss, **{f"train_{k}": v for k, v in train_scores.items()},
               **scores, "lr": lr,
               "seconds": round(time.perf_counter() - started, 3)}
        state["history"].append(row)
        improved = metric < state["best_metric"]
        if improved:
            state.update(best_metric=metric, best_epoch=epoch + 1, stale=0)
            write_tensors(run_dir / "model.safetensors", model_state(model))
        else:
            state["stale"] += 1
        state["epoch"] = epoch + 1
        save_checkpoint(run_dir, model, optimizers, shuffle, state)
        write_history(run_dir / "history.csv", state["history"])
        meta.update(best_epoch=state["best_epoch"], best_metric=state["best_metric"], epochs_completed=epoch + 1,
                    updated=_now())
        write_run_files(run_dir, config, prepared.preprocessor, meta)
        log(f"epoch {epoch + 1}/{training.epochs}  loss {train_loss:.4f}  val_loss {scores['val_loss']:.4f}  "
            f"W1 {scores['mean_wasserstein']:.4f}  lr {lr:.2e}  {row['seconds']:.1f}s" + ("  *best" if improved else ""))
        if training.patience is not None and state["stale"] >= training.patience:
            log(f"early stop: {training.best_metric} has not improved for {training.patience} epochs")
            break
    if state["best_epoch"] > 0:  # the family's closed-form last step, on the best epoch's weights
        model.load_state_dict(read_tensors(run_dir / "model.safetensors"))
        finished = model.finish_training(train_set, log)  # type: ignore[arg-type]
        if finished:
            write_tensors(run_dir / "model.safetensors", model_state(model))
            meta.update(finished)
            write_run_files(run_dir, config, prepared.preprocessor, meta)
    log(f"best epoch {state['best_epoch']} ({training.best_metric} {state['best_metric']:.4f}); run dir {run_dir}")
    return run_dir


def _run_epoch(
    model: ModelFamily, optimizers: Optimizers, train_set: tuple[Tensor, Tensor], shuffle: torch.Generator,
    training: TrainingConfig, epoch: int, progress: bool,
) -> dict[str, float]:
    """One pass over the shuffled training rows; the row-weighted mean of each scalar ``train_step`` returns."""
    targets, conditions = train_set
    n = targets.shape[0]
    order = torch.randperm(n, generator=shuffle).to(targets.device)
    n_batches = math.ceil(n / training.batch_size)
    totals: dict[str, float] = {}
    bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{training.epochs}", disable=None if progress else True, leave=False,
               unit="batch")
    model.train()
    for b in range(n_batches):
        rows = order[b * training.batch_size : (b + 1) * training.batch_size]
        try:
            values = model.train_step(targets[rows], conditions[rows], optimizers, training)
        except FloatingPointError as exc:
            raise FloatingPointError(f"epoch {epoch + 1}, batch {b}: {exc}") from exc
        for key, value in values.items():
            totals[key] = totals.get(key, 0.0) + value * rows.numel()
        if b % 20 == 0:
            bar.set_postfix(loss=f"{values['loss']:.4f}")
        bar.update()
    bar.close()
    return {key: total / n for key, total in totals.items()}


def _fit_closed_form(
    model: ModelFamily, train_set: tuple[Tensor, Tensor], val_set: tuple[Tensor, Tensor], config: Config,
    preprocessor: Preprocessor, run_dir: Path, meta: dict[str, Any], log: Log,
) -> Path:
    started = time.perf_counter()
    fit_info = model.fit(*train_set)
    scores = validation_scores(model, val_set, config.training)
    write_tensors(run_dir / "model.safetensors", model_state(model))
    write_history(run_dir / "history.csv", [{"epoch": 1, "train_loss": math.nan, **scores, "lr": 0.0,
                                             "seconds": round(time.perf_counter() - started, 3)}])
    meta.update(best_epoch=1, best_metric=scores[config.training.best_metric], epochs_completed=1,
                fit_info=fit_info, updated=_now())
    write_run_files(run_dir, config, preprocessor, meta)
    log(f"fitted {config.name} ({fit_info}); W1 {scores['mean_wasserstein']:.4f}; run dir {run_dir}")
    return run_dir


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _meta(config: Config, prepared: PreparedData, run_dir: Path, resume: bool) -> dict[str, Any]:
    if resume:
        return json.loads((run_dir / "meta.json").read_text())
    p = prepared.preprocessor
    return {
        "run_format": RUN_FORMAT,
        "name": config.name,
        "versions": versions(),
        "created": _now(),
        "updated": _now(),
        "seed": config.training.seed,
        "data": prepared.info,
        "schema": {
            "input_columns": p.input_columns,
            "target_columns": p.target_columns,
            "target_shapes": p.target_shapes,
            "categories": p.categories,
            "group_by": p.group["column"] if p.group else None,
        },
        "best_epoch": None,
        "best_metric": None,
        "epochs_completed": 0,
    }
