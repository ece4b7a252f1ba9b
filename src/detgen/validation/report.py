"""Validation outputs on disk: metrics.json (flat, machine-readable) and report.html (for people).

Both files are written atomically (temporary file in the same folder, then rename), so a reader never
sees a half-written file.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detgen.files import write_text_atomic


def _write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename."""
    return write_text_atomic(path, text)


def to_json_value(value: Any) -> Any:
    """Convert numpy scalars/arrays and tuples to plain JSON types; NaN and inf become None (null)."""
    if isinstance(value, Mapping):
        return {str(key): to_json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [to_json_value(item) for item in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return number if math.isfinite(number) else None
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"metric value {value!r} of type {type(value).__name__} cannot be written to JSON")


def write_metrics(path: str | os.PathLike[str], metrics: Mapping[str, Any]) -> Path:
    """Write ``metrics`` to ``path`` as JSON with sorted keys.

    Floats are plain JSON numbers, numpy types are converted, and NaN/inf are written as ``null``
    (strict JSON has no NaN). Returns the path written.
    """
    text = json.dumps(to_json_value(metrics), indent=2, sort_keys=True, allow_nan=False)
    return _write_text_atomic(Path(path), text + "\n")


def _format_value(value: Any) -> str:
    """A metric value as table text: 4 significant digits for floats, 'n/a' for null."""
    plain = to_json_value(value)
    if plain is None:
        return "n/a"
    if isinstance(plain, float):
        return f"{plain:.4g}"
    return html.escape(str(plain))


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1400px; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
td, th {{ border: 1px solid #bbb; padding: 0.2em 0.6em; text-align: left; }}
td.value {{ text-align: right; font-family: monospace; }}
figure {{ display: inline-block; margin: 1em; vertical-align: top; }}
figure img {{ max-width: 680px; }}
figcaption {{ max-width: 680px; font-size: 0.9em; }}
</style>
</head>
<body>
<h1>{title}</h1>
{notes}
<h2>Metrics</h2>
<table>
<tr><th>metric</th><th>value</th></tr>
{rows}
</table>
<h2>Figures</h2>
{figures}
</body>
</html>
"""


def write_report_html(
    out_dir: str | os.PathLike[str],
    title: str,
    metrics: Mapping[str, Any],
    figures: Sequence[tuple[str, str]],
    notes: str | Iterable[str] = (),
    *,
    key_metrics: Sequence[str] | None = None,
) -> Path:
    """Write a self-contained ``report.html`` into ``out_dir``.

    Args:
        out_dir: folder holding the report and the figures.
        title: page title.
        metrics: flat metric name -> scalar value; nested values are skipped in the table.
        figures: (file name relative to ``out_dir``, caption) for every figure to show.
        notes: a paragraph or a list of paragraphs shown under the title.
        key_metrics: metric names listed in the table, in this order; default every scalar metric,
            sorted by name. Names missing from ``metrics`` are ignored.

    Returns:
        The path of report.html.
    """
    names = list(key_metrics) if key_metrics is not None else sorted(metrics)
    rows = "\n".join(
        f"<tr><td>{html.escape(name)}</td><td class=\"value\">{_format_value(metrics[name])}</td></tr>"
        for name in names
        if name in metrics and not isinstance(metrics[name], (Mapping, list, tuple, np.ndarray))
    )
    figure_blocks = "\n".join(
        f'<figure><img src="{html.escape(name, quote=True)}" alt="{html.escape(caption, quote=True)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for name, caption in figures
    )
    paragraphs = [notes] if isinstance(notes, str) else list(notes)
    note_blocks = "\n".join(f"<p>{html.escape(paragraph)}</p>" for paragraph in paragraphs if paragraph)
    page = _PAGE.format(title=html.escape(title), notes=note_blocks, rows=rows, figures=figure_blocks)
    return _write_text_atomic(Path(out_dir) / "report.html", page)
