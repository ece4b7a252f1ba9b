"""Run dir -> sampler -> batched samples streamed to disk."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from detgen.dataset import read_run_split
from detgen.device import resolve_device
from detgen.errors import DataError
from detgen.io import (
    Table,
    TableWriter,
    read_table,
    require_columns,
    require_finite,
    select_rows,
    table_length,
)
from detgen.runs import Run, load_run

Log = Callable[[str], None]


def read_conditions(run: Run, path: str | Path, *, split: str | None = None) -> Table:
    """Read a conditions file for ``run``: every column kept, the sampler's inputs checked."""
    source = str(path)
    table = read_table(path, tree=run.config.data.tree, key=run.config.data.key)
    needed = run.preprocessor.input_columns
    require_columns(table, needed, source=source)
    labels = set(run.preprocessor.categories)
    require_finite(table, [c for c in needed if c not in labels], source=source)
    if split is not None:
        if split not in ("train", "val", "test"):
            raise DataError(f"--split {split!r}: expected train, val or test")
        table = read_run_split(run, path, split, all_columns=True)
    if table_length(table) == 0:
        raise DataError(f"{source}: no rows to generate for")
    run.preprocessor.check_domain(table, source=source)
    return table


def generate(
    run_dir: str | Path,
    conditions: str | Path,
    out: str | Path,
    *,
    seed: int = 0,
    batch_size: int = 65536,
    device: str | None = None,
    split: str | None = None,
    compile: bool = False,
    chunk_rows: int = 8192,
    progress: bool = True,
    log: Log = print,
) -> dict[str, Any]:
    """Generate targets for every row of ``conditions`` with the run's sampler; write ``out``.

    The output holds every column of the conditions file with the target columns (re)placed by generated
    values. Written to a temporary file and renamed at the end: no partial output on failure.
    ``batch_size`` rows are drawn and written at a time; the sampler sees them in chunks of ``chunk_rows``
    (small enough to stay in cache). ``compile=True`` runs the sampler through ``torch.compile`` (a one-off
    cost of tens of seconds, worth it for large samples).
    """
    if batch_size < 1:
        raise DataError(f"--batch-size {batch_size}: expected a positive integer")
    torch_device = resolve_device(device)
    run = load_run(run_dir, device=str(torch_device))
    for note in run.notes:
        log(f"note: {note}")
    whole_events = getattr(run.model, "generate_file", None)
    if whole_events is not None:  # a family that simulates whole events from its own conditions (juno_muon)
        return whole_events(run, conditions, out, seed=seed, batch_size=batch_size, device=torch_device, split=split,  # type: ignore[no-any-return]
                            progress=progress, log=log)
    table = read_conditions(run, conditions, split=split)
    outside = run.preprocessor.out_of_range(table)
    for column, count in outside.items():
        log(f"note: {count} row(s) have {column} outside the training range; the model extrapolates there")
    raw = run.preprocessor.condition_array(table, source=str(conditions))
    sampler: Any = run.sampler()
    if compile:
        sampler = torch.compile(sampler, dynamic=True)
    targets = run.preprocessor.target_columns
    passthrough = [c for c in table if c not in targets]
    noise_gen = torch.Generator().manual_seed(seed)
    n = len(raw)
    started = time.perf_counter()
    with TableWriter(out) as writer, torch.inference_mode():
        bar = tqdm(total=n, desc="generating", unit="row", unit_scale=True, disable=None if progress else True)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            noise = torch.randn(stop - start, sampler.noise_dim, generator=noise_gen).to(torch_device)
            c = torch.from_numpy(raw[start:stop]).float().to(torch_device)
            y = torch.cat([sampler(noise[i : i + chunk_rows], c[i : i + chunk_rows])
                           for i in range(0, len(c), chunk_rows)]).cpu().numpy()
            if not np.isfinite(y).all():
                raise FloatingPointError(f"generated non-finite values for rows {start}-{stop} of {conditions}")
            batch = select_rows({c: table[c] for c in passthrough}, slice(start, stop))
            batch.update(run.preprocessor.split_targets(y))  # image columns get their (N, ...) shape back
            writer.append(batch)
            bar.update(stop - start)
        bar.close()
    seconds = time.perf_counter() - started
    log(f"generated {n} rows in {seconds:.2f}s ({n / seconds:,.0f} rows/s) -> {out}")
    return {"rows": n, "seconds": seconds, "rows_per_second": n / seconds, "out_of_range": outside}
