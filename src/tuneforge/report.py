"""A self-contained HTML training report.

:func:`write_report` turns a Trainer ``state.log_history`` (plus optional
evaluation artefacts: a confusion matrix, per-class metrics, the run's settings
and throughput numbers) into ONE HTML file.  The page needs nothing else: the
CSS is inline, the charts are inline SVG drawn here, there is no JavaScript and
no reference to any network or local resource.  Only the standard library is
used, and every piece of text that reaches the page goes through
:func:`html.escape`.

Sections whose input is missing are left out, so the same call works for a
regression run (no confusion matrix, no per-class table) or a run that never
evaluated.  Non-finite values (NaN, inf) are shown in the tables but skipped in
the charts, and long curves are downsampled so a 10,000-step run still gives a
small file.
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

__all__ = ["write_report", "render_report"]

# ----------------------------------------------------------------------------
# Look and feel
# ----------------------------------------------------------------------------

_FONT = ('-apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue", '
         '"Liberation Sans", Arial, "DejaVu Sans", sans-serif')

_CSS = """
:root {
  --bg: #f4f6fa; --card: #ffffff; --ink: #1f2937; --muted: #6b7280;
  --line: #e5e7eb; --accent: #2563eb; --accent-soft: rgba(37, 99, 235, 0.12);
}
* { box-sizing: border-box; }
html { background: var(--bg); }
body {
  margin: 0; padding: 32px 24px 48px; color: var(--ink);
  font-family: FONT; font-size: 14px; line-height: 1.45;
  -webkit-font-smoothing: antialiased;
}
main { max-width: 1200px; margin: 0 auto; }
header { margin: 0 0 22px; }
h1 { font-size: 26px; font-weight: 650; margin: 0 0 4px; letter-spacing: -0.01em; }
.subtitle { color: var(--muted); margin: 0; }
h2 { font-size: 17px; font-weight: 600; margin: 0 0 4px; }
h3 { font-size: 14px; font-weight: 600; margin: 0 0 6px; color: var(--ink); }
.note { color: var(--muted); font-size: 12.5px; margin: 0 0 12px; }
section.card {
  background: var(--card); border: 1px solid var(--line); border-radius: 12px;
  padding: 18px 20px 20px; margin: 0 0 20px;
  box-shadow: 0 1px 2px rgba(16, 24, 40, 0.04), 0 1px 3px rgba(16, 24, 40, 0.06);
}
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr)); gap: 20px; }
.grid > section.card { margin: 0; }
.grid { margin: 0 0 20px; }
.grid.small { grid-template-columns: repeat(auto-fit, minmax(340px, 1fr)); gap: 14px; }
.chart-box { margin-top: 6px; }
figure { margin: 0; }
figcaption { font-size: 13px; font-weight: 600; margin: 0 0 2px; }
svg.chart { display: block; width: 100%; height: auto; }
svg text { font-family: FONT; }
.tiles { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 12px; margin-top: 10px; }
.tile { background: #f8fafc; border: 1px solid var(--line); border-radius: 10px; padding: 10px 14px; }
.tile .k { color: var(--muted); font-size: 12px; }
.tile .v { font-size: 20px; font-weight: 600; font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
.table-wrap { overflow-x: auto; margin-top: 8px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
thead th { color: var(--muted); font-weight: 600; font-size: 12px; background: #f8fafc;
  border-bottom: 1px solid #d1d5db; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:hover td { background: #f9fafb; }
tfoot td { font-weight: 600; border-top: 1px solid #d1d5db; border-bottom: none; background: #f8fafc; }
td.best { font-weight: 700; color: #1d4ed8; }
td.bar { background-image: linear-gradient(90deg, var(--accent-soft) var(--pct), transparent var(--pct));
  background-repeat: no-repeat; }
td.label { overflow-wrap: anywhere; min-width: 120px; }
td.key { font-family: ui-monospace, "DejaVu Sans Mono", "Liberation Mono", monospace; font-size: 12.5px;
  color: #374151; white-space: nowrap; }
td.value { overflow-wrap: anywhere; font-variant-numeric: tabular-nums; }
.kv td:first-child { width: 45%; }
.grid.tables { align-items: start; }
#per-class-table td.num, #per-class-table th.num { width: 13%; }
#per-class-table td.num:first-child, #per-class-table th.num:first-child { width: 4%; }
.cm-wrap { overflow-x: auto; margin-top: 8px; }
.cm-wrap svg { display: block; max-width: 100%; height: auto; margin: 0 auto; }
.empty { color: var(--muted); font-style: italic; padding: 20px 0; }
footer { color: var(--muted); font-size: 12px; text-align: center; margin-top: 28px; }
""".replace("FONT", _FONT)

# Series colours (Tailwind-ish palette: readable on white, distinct from each other).
_BLUE = "#2563eb"
_ORANGE = "#ea580c"
_VIOLET = "#7c3aed"
_TEAL = "#0d9488"
_PALETTE = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777"]

_GRID = "#eef0f3"
_AXIS = "#9ca3af"
_TICK_TEXT = "#6b7280"
_LABEL_TEXT = "#374151"

# Keys of an eval entry that describe speed, not quality: tabled, never charted.
_SPEED_SUFFIXES = ("_runtime", "_per_second", "_samples_per_second", "_steps_per_second")
_MAX_PLOT_POINTS = 600        # per series, after downsampling
_CHAR_W = 0.6                 # average glyph width, in font-size units (generous for DejaVu)


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


# ----------------------------------------------------------------------------
# Number handling and formatting
# ----------------------------------------------------------------------------

def _as_float(value: Any) -> float | None:
    """``value`` as a float, or None if it is not a real number (bools are not numbers here)."""
    if value is None or isinstance(value, (bool, str, bytes)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _finite(value: Any) -> bool:
    f = _as_float(value)
    return f is not None and math.isfinite(f)


def _fmt_nonfinite(f: float) -> str:
    if math.isnan(f):
        return "NaN"
    return "∞" if f > 0 else "−∞"


def _fmt_metric(value: Any, digits: int = 4) -> str:
    """A score in [0, 1] or a loss: fixed decimals."""
    f = _as_float(value)
    if f is None:
        return "—" if value is None else str(value)
    if not math.isfinite(f):
        return _fmt_nonfinite(f)
    return f"{f:.{digits}f}"


def _fmt_number(value: Any) -> str:
    """Any number, compactly: integers with separators, floats to ~4 significant digits."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and abs(value) < 10 ** 9:
        return f"{value:,}"
    f = _as_float(value)
    if f is None:
        return str(value)
    if not math.isfinite(f):
        return _fmt_nonfinite(f)
    if f == 0:
        return "0"
    if f.is_integer() and abs(f) < 1e9:
        return f"{int(f):,}"
    a = abs(f)
    if a >= 1e9:
        mant, exp = f"{f:.3e}".split("e")
        return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"
    if a >= 1000:
        return f"{f:,.1f}"
    if a >= 1e-3:
        return f"{f:.4g}"
    return f"{f:.3g}"


def _fmt_setting(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return _fmt_nonfinite(value) if not math.isfinite(value) else f"{value:.6g}"
    if isinstance(value, (int, str)):
        return str(value)
    if isinstance(value, Mapping) or isinstance(value, (list, tuple)):
        try:
            return json.dumps(value, default=str, ensure_ascii=False)
        except (TypeError, ValueError):
            return str(value)
    return str(value)


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return _fmt_nonfinite(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _humanise(key: str) -> str:
    text = str(key).replace("_", " ").strip()
    text = text.replace("per second", "/ s")
    return text[:1].upper() + text[1:] if text else text


def _text_width(text: str, font_size: float) -> float:
    return len(text) * font_size * _CHAR_W


def _truncate(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max(1, max_chars - 1)].rstrip() + "…"


# ----------------------------------------------------------------------------
# Axis ticks
# ----------------------------------------------------------------------------

def _nice_step(span: float, target: int) -> float:
    raw = span / max(1, target)
    mag = 10 ** math.floor(math.log10(raw))
    # The nice step (1, 2 or 5 times a power of ten) closest to the raw step, on a log scale.
    return min((m * mag for m in (1, 2, 5, 10)), key=lambda step: abs(math.log(raw / step)))


def _pad_degenerate(lo: float, hi: float) -> tuple[float, float]:
    """Give a zero-width range some width (constant series, single point)."""
    if hi - lo > 1e-12 * max(1.0, abs(lo), abs(hi)):
        return lo, hi
    pad = abs(lo) * 0.1 if lo != 0 else 1.0
    return lo - pad, hi + pad


def _ticks(lo: float, hi: float, target: int = 5, *, step: float | None = None) -> tuple[list[float], float]:
    if step is None:
        step = _nice_step(hi - lo, target)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    v = first
    while v <= hi + step * 1e-9 and len(ticks) < 50:
        ticks.append(0.0 if abs(v) < step * 1e-9 else v)
        v = first + len(ticks) * step
    return ticks, step


def _tick_formatter(step: float, lo: float, hi: float) -> Callable[[float], str]:
    m = max(abs(lo), abs(hi))
    if m == 0:
        return lambda v: "0"
    if m < 1e-3 or m >= 1e6:
        exp = math.floor(math.log10(m))
        mant_step = step / 10 ** exp
        dec = max(0, -math.floor(math.log10(mant_step) + 1e-9))

        def sci(v: float) -> str:
            if v == 0:
                return "0"
            return f"{v / 10 ** exp:.{dec}f}e{exp}"
        return sci
    dec = max(0, -math.floor(math.log10(step) + 1e-9))

    def fixed(v: float) -> str:
        text = f"{v:,.{dec}f}"
        return "0" if text.strip("-0.,") == "" else text
    return fixed


# ----------------------------------------------------------------------------
# Series preparation
# ----------------------------------------------------------------------------

def _finite_points(points: Iterable[tuple[Any, Any]]) -> list[tuple[float, float]]:
    out = []
    for x, y in points:
        fx, fy = _as_float(x), _as_float(y)
        if fx is None or fy is None or not (math.isfinite(fx) and math.isfinite(fy)):
            continue
        out.append((fx, fy))
    return out


def _downsample(points: list[tuple[float, float]], max_points: int = _MAX_PLOT_POINTS) -> list[tuple[float, float]]:
    """Min/max bucketing: keeps the shape (and the spikes) of a long noisy curve."""
    n = len(points)
    if n <= max_points:
        return points
    buckets = max(1, max_points // 2)
    out: list[tuple[float, float]] = []
    for b in range(buckets):
        chunk = points[b * n // buckets:(b + 1) * n // buckets]
        if not chunk:
            continue
        lo = min(range(len(chunk)), key=lambda i: chunk[i][1])
        hi = max(range(len(chunk)), key=lambda i: chunk[i][1])
        for i in sorted({lo, hi}):
            out.append(chunk[i])
    if out[-1] != points[-1]:
        out.append(points[-1])
    if out[0] != points[0]:
        out.insert(0, points[0])
    return out


def _smooth(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Debiased exponential moving average (the TensorBoard smoother); window grows with length."""
    n = len(points)
    window = max(5.0, n / 40.0)
    alpha = 2.0 / (window + 1.0)
    out, ema, weight = [], 0.0, 0.0
    for x, y in points:
        ema = (1 - alpha) * ema + alpha * y
        weight = (1 - alpha) * weight + alpha
        out.append((x, ema / weight))
    return out


def _stride(points: list[tuple[float, float]], max_points: int = _MAX_PLOT_POINTS) -> list[tuple[float, float]]:
    n = len(points)
    if n <= max_points:
        return points
    out = [points[i * (n - 1) // (max_points - 1)] for i in range(max_points)]
    return out


# ----------------------------------------------------------------------------
# Line chart
# ----------------------------------------------------------------------------

def _tint(color: str, amount: float) -> str:
    """``color`` (#rrggbb) mixed with white: amount 0 keeps it, 1 gives white."""
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    r, g, b = (round(c + (255 - c) * amount) for c in (r, g, b))
    return f"#{r:02x}{g:02x}{b:02x}"


class _Series:
    def __init__(self, name: str, points: list[tuple[float, float]], color: str, *,
                 markers: bool | None = None, width: float = 2.0, opacity: float = 1.0,
                 smooth: bool = False, legend: bool = True, marker_fmt: Callable[[float], str] = _fmt_number):
        self.name = name
        self.points = points
        self.color = color
        self.markers = markers
        self.width = width
        self.opacity = opacity
        self.smooth = smooth
        self.legend = legend
        self.marker_fmt = marker_fmt


def _line_chart(svg_id: str, series: list[_Series], *, x_label: str, y_label: str, title: str,
                width: int = 560, height: int = 300, css_class: str = "chart",
                x_zero: bool = True) -> str | None:
    """An SVG line chart; None when no series has a finite point."""
    series = [s for s in series if s.points]
    # Expand smoothed series: light raw line + bold smoothed line.
    drawn: list[_Series] = []
    for s in series:
        if s.smooth and len(s.points) >= 50:
            drawn.append(_Series(s.name + " (raw)", _downsample(s.points), _tint(s.color, 0.55),
                                 markers=False, width=1.2, legend=True))
            drawn.append(_Series(s.name + " (smoothed)", _stride(_smooth(s.points)), s.color, markers=False,
                                 width=2.2, legend=True))
        else:
            drawn.append(_Series(s.name, _downsample(s.points), s.color, markers=s.markers, width=s.width,
                                 opacity=s.opacity, legend=s.legend, marker_fmt=s.marker_fmt))
    if not drawn:
        return None

    xs = [p[0] for s in drawn for p in s.points]
    ys = [p[1] for s in drawn for p in s.points]
    x_lo, x_hi = min(xs), max(xs)
    if x_zero and x_lo > 0 and x_lo <= 0.1 * x_hi:
        x_lo = 0.0
    x_lo, x_hi = _pad_degenerate(x_lo, x_hi)
    any_markers = any(s.markers or (s.markers is None and len(s.points) <= 40) for s in drawn)
    if any_markers:
        pad = (x_hi - x_lo) * 0.03
        x_lo, x_hi = x_lo - pad, x_hi + pad
    x_ticks, x_step = _ticks(x_lo, x_hi, max(4, int((width - 80) / 100)))
    integer_x = all(float(x).is_integer() for x in xs)
    if integer_x and x_step < 1:
        x_ticks = [t for t in x_ticks if float(t).is_integer()]
        x_step = 1.0

    y_lo, y_hi = _pad_degenerate(min(ys), max(ys))
    y_ticks, y_step = _ticks(y_lo, y_hi, max(3, min(6, int((height - 70) / 50))))
    # Snap the y domain outwards to whole tick steps so the plot starts and ends on a gridline.
    y_lo = min(y_lo, math.floor(y_lo / y_step + 1e-9) * y_step)
    y_hi = max(y_hi, math.ceil(y_hi / y_step - 1e-9) * y_step)
    y_ticks, _ = _ticks(y_lo, y_hi, step=y_step)
    y_fmt = _tick_formatter(y_step, y_lo, y_hi)
    x_fmt = _tick_formatter(x_step, x_lo, x_hi)
    y_labels = [y_fmt(t) for t in y_ticks]

    legend_items = [s for s in drawn if s.legend] if len(drawn) > 1 else []
    tick_fs, label_fs = 11, 12
    m_left = 18 + label_fs + max(_text_width(t, tick_fs) for t in y_labels) + 8
    m_right = 18
    m_top = 30 if legend_items else 14
    m_bottom = 46
    pw, ph = width - m_left - m_right, height - m_top - m_bottom
    # Thin out x tick labels that would collide.
    x_labels = [x_fmt(t) for t in x_ticks]
    if len(x_ticks) > 1:
        spacing = pw * x_step / (x_hi - x_lo)
        widest = max(_text_width(t, tick_fs) for t in x_labels) + 10
        keep = max(1, math.ceil(widest / spacing))
        if keep > 1:
            x_ticks, x_labels = x_ticks[::keep], x_labels[::keep]

    def sx(x: float) -> float:
        return m_left + (x - x_lo) / (x_hi - x_lo) * pw

    def sy(y: float) -> float:
        return m_top + ph - (y - y_lo) / (y_hi - y_lo) * ph

    out = [f'<svg id="{_esc(svg_id)}" class="{_esc(css_class)}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">',
           f"<title>{_esc(title)}</title>"]
    # Grid and tick labels.
    out.append(f'<g stroke="{_GRID}" stroke-width="1">')
    for t in y_ticks:
        y = sy(t)
        out.append(f'<line x1="{m_left:.1f}" y1="{y:.1f}" x2="{m_left + pw:.1f}" y2="{y:.1f}" />')
    for t in x_ticks:
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" y1="{m_top:.1f}" x2="{x:.1f}" y2="{m_top + ph:.1f}" />')
    out.append("</g>")
    out.append(f'<g fill="{_TICK_TEXT}" font-size="{tick_fs}">')
    for t, lab in zip(y_ticks, y_labels):
        out.append(f'<text x="{m_left - 7:.1f}" y="{sy(t) + 3.8:.1f}" text-anchor="end">{_esc(lab)}</text>')
    for t, lab in zip(x_ticks, x_labels):
        out.append(f'<text x="{sx(t):.1f}" y="{m_top + ph + 17:.1f}" text-anchor="middle">{_esc(lab)}</text>')
    out.append("</g>")
    # Axes.
    out.append(f'<path d="M{m_left:.1f},{m_top:.1f}V{m_top + ph:.1f}H{m_left + pw:.1f}" fill="none" '
               f'stroke="{_AXIS}" stroke-width="1" />')
    for t in x_ticks:
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" y1="{m_top + ph:.1f}" x2="{x:.1f}" y2="{m_top + ph + 4:.1f}" stroke="{_AXIS}" />')
    # Axis titles.
    out.append(f'<text x="{m_left + pw / 2:.1f}" y="{height - 9:.1f}" text-anchor="middle" font-size="{label_fs}" '
               f'fill="{_LABEL_TEXT}">{_esc(x_label)}</text>')
    cy = m_top + ph / 2
    out.append(f'<text transform="translate({13 + label_fs / 2:.1f},{cy:.1f}) rotate(-90)" text-anchor="middle" '
               f'font-size="{label_fs}" fill="{_LABEL_TEXT}">{_esc(y_label)}</text>')
    # Series.
    for s in drawn:
        pts = s.points
        show_markers = s.markers if s.markers is not None else len(pts) <= 40
        if len(pts) > 1:
            coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
            op = f' stroke-opacity="{s.opacity}"' if s.opacity != 1.0 else ""
            out.append(f'<polyline class="series" points="{coords}" fill="none" stroke="{s.color}" '
                       f'stroke-width="{s.width}" stroke-linejoin="round" stroke-linecap="round"{op}>'
                       f"<title>{_esc(s.name)}</title></polyline>")
        if show_markers or len(pts) == 1:
            out.append(f'<g fill="{s.color}" stroke="#ffffff" stroke-width="1.2">')
            for x, y in pts:
                out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.6">'
                           f"<title>{_esc(s.name)} — {_esc(x_label.lower())} {_esc(_fmt_number(x))}: "
                           f"{_esc(s.marker_fmt(y))}</title></circle>")
            out.append("</g>")
    # Legend (top right, above the plot area).
    if legend_items:
        x = m_left + pw
        parts = []
        for s in reversed(legend_items):
            w = _text_width(s.name, 11) + 26
            x -= w
            parts.append(
                f'<line x1="{x + 2:.1f}" y1="{13}" x2="{x + 18:.1f}" y2="{13}" stroke="{s.color}" '
                f'stroke-width="{max(2.0, s.width)}" stroke-linecap="round" />'
                f'<text x="{x + 22:.1f}" y="{17}" font-size="11" fill="{_LABEL_TEXT}">{_esc(s.name)}</text>')
        out.append("<g>" + "".join(reversed(parts)) + "</g>")
    out.append("</svg>")
    return "\n".join(out)


# ----------------------------------------------------------------------------
# Confusion matrix
# ----------------------------------------------------------------------------

_CM_STOPS = [(0.0, (248, 250, 252)), (0.25, (191, 219, 254)), (0.6, (59, 130, 246)), (1.0, (30, 58, 138))]


def _cm_color(frac: float) -> str:
    frac = min(1.0, max(0.0, frac))
    for (f0, c0), (f1, c1) in zip(_CM_STOPS, _CM_STOPS[1:]):
        if frac <= f1:
            t = (frac - f0) / (f1 - f0)
            r, g, b = (round(a + (b_ - a) * t) for a, b_ in zip(c0, c1))
            return f"#{r:02x}{g:02x}{b:02x}"
    r, g, b = _CM_STOPS[-1][1]
    return f"#{r:02x}{g:02x}{b:02x}"


def _fmt_count(v: float) -> str:
    if not math.isfinite(v):
        return _fmt_nonfinite(v)
    if float(v).is_integer():
        return str(int(v))
    return f"{v:.3g}"


def _confusion_svg(matrix: list[list[float]], labels: list[str]) -> str:
    n = len(matrix)
    fs = 12 if n <= 10 else (11 if n <= 24 else 10)
    cell = max(30.0, min(110.0, 760.0 / n))
    max_chars = 30 if n <= 10 else 26
    shown = [_truncate(lab, max_chars) for lab in labels]
    label_w = max(_text_width(s, fs) for s in shown)

    # Column labels: horizontal if they fit in a cell, otherwise at -45 degrees.
    rotate = any(_text_width(s, fs) > cell - 6 for s in shown)
    axis_fs = 12.5
    m_left = 12 + axis_fs + 10 + label_w + 10
    m_top = 16
    grid = cell * n
    if rotate:
        col_h = label_w * 0.7071 + fs
    else:
        col_h = fs + 4
    legend_w = 80
    m_bottom = 10 + col_h + 14 + axis_fs + 12
    # A rotated label hangs left of its column; make room for the first ones.
    overhang = max(0.0, label_w * 0.7071 - cell / 2 - m_left) if rotate else 0.0
    m_left += overhang
    width = m_left + grid + 24 + legend_w
    height = m_top + grid + m_bottom
    row_sums = [sum(v for v in row if math.isfinite(v)) for row in matrix]

    count_chars = max(len(_fmt_count(v)) for row in matrix for v in row)
    count_fs = min(15.0 if n <= 4 else 13.0, (cell - 6) / (count_chars * _CHAR_W))
    show_pct = cell >= 58

    out = [f'<svg id="confusion-matrix" class="heatmap" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" height="{height:.0f}" role="img" '
           f'aria-label="Confusion matrix">',
           "<title>Confusion matrix (rows: true label, columns: predicted label; "
           "shading is the share of the row)</title>",
           '<defs><linearGradient id="cm-scale" x1="0" y1="1" x2="0" y2="0">'
           + "".join(f'<stop offset="{f:.2f}" stop-color="{_cm_color(f)}" />' for f, _ in _CM_STOPS)
           + "</linearGradient></defs>"]
    # Cells.
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            frac = (v / row_sums[i]) if row_sums[i] > 0 and math.isfinite(v) else 0.0
            color = _cm_color(frac)
            x, y = m_left + j * cell, m_top + i * cell
            txt = "#ffffff" if frac > 0.5 else "#1f2937"
            tip = (f"true {labels[i]} → predicted {labels[j]}: {_fmt_count(v)}"
                   f" ({frac * 100:.1f}% of true {labels[i]})")
            out.append(f'<g class="cm-cell"><title>{_esc(tip)}</title>'
                       f'<rect x="{x:.1f}" y="{y:.1f}" width="{cell:.1f}" height="{cell:.1f}" fill="{color}" '
                       f'stroke="#ffffff" stroke-width="1.5" />')
            cx, cy = x + cell / 2, y + cell / 2
            weight = ' font-weight="600"' if i == j else ""
            if show_pct:
                out.append(f'<text x="{cx:.1f}" y="{cy - 1:.1f}" text-anchor="middle" font-size="{count_fs:.1f}" '
                           f'fill="{txt}"{weight}>{_esc(_fmt_count(v))}</text>'
                           f'<text x="{cx:.1f}" y="{cy + 14:.1f}" text-anchor="middle" font-size="10.5" '
                           f'fill="{txt}" fill-opacity="0.85">{frac * 100:.1f}%</text>')
            else:
                out.append(f'<text x="{cx:.1f}" y="{cy + count_fs * 0.35:.1f}" text-anchor="middle" '
                           f'font-size="{count_fs:.1f}" fill="{txt}"{weight}>{_esc(_fmt_count(v))}</text>')
            out.append("</g>")
    # Row labels (true).
    out.append(f'<g font-size="{fs}" fill="{_LABEL_TEXT}">')
    for i, s in enumerate(shown):
        y = m_top + i * cell + cell / 2 + fs * 0.35
        out.append(f'<text class="cm-row-label" x="{m_left - 8:.1f}" y="{y:.1f}" text-anchor="end">'
                   f"<title>{_esc(labels[i])}</title>{_esc(s)}</text>")
    # Column labels (predicted).
    base = m_top + grid + 8
    for j, s in enumerate(shown):
        x = m_left + j * cell + cell / 2
        if rotate:
            out.append(f'<text class="cm-col-label" transform="translate({x + fs * 0.3:.1f},{base + 4:.1f}) rotate(-45)" '
                       f'text-anchor="end"><title>{_esc(labels[j])}</title>{_esc(s)}</text>')
        else:
            out.append(f'<text class="cm-col-label" x="{x:.1f}" y="{base + fs:.1f}" text-anchor="middle">'
                       f"<title>{_esc(labels[j])}</title>{_esc(s)}</text>")
    out.append("</g>")
    # Axis titles.
    out.append(f'<text x="{m_left + grid / 2:.1f}" y="{height - 12:.1f}" text-anchor="middle" font-size="{axis_fs}" '
               f'font-weight="600" fill="{_LABEL_TEXT}">Predicted label</text>')
    ty = m_top + grid / 2
    out.append(f'<text transform="translate({12 + axis_fs / 2 + overhang:.1f},{ty:.1f}) rotate(-90)" text-anchor="middle" '
               f'font-size="{axis_fs}" font-weight="600" fill="{_LABEL_TEXT}">True label</text>')
    # Colour scale.
    lx = m_left + grid + 24
    bar_h = min(grid, 220.0)
    ly = m_top + (grid - bar_h) / 2
    out.append(f'<rect x="{lx:.1f}" y="{ly:.1f}" width="12" height="{bar_h:.1f}" rx="2" fill="url(#cm-scale)" '
               f'stroke="{_GRID}" />')
    for frac in (0.0, 0.5, 1.0):
        y = ly + bar_h * (1 - frac)
        out.append(f'<text x="{lx + 17:.1f}" y="{y + 4:.1f}" font-size="10.5" fill="{_TICK_TEXT}">{frac * 100:.0f}%</text>')
    out.append(f'<text transform="translate({lx + 62:.1f},{ly + bar_h / 2:.1f}) rotate(-90)" text-anchor="middle" '
               f'font-size="10.5" fill="{_TICK_TEXT}">share of true label</text>')
    out.append("</svg>")
    return "\n".join(out)


# ----------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------

def _kv_table(table_id: str, rows: Iterable[tuple[str, str]], *, key_class: str = "key") -> str:
    body = "".join(f'<tr><td class="{key_class}">{_esc(k)}</td><td class="value">{_esc(v)}</td></tr>'
                   for k, v in rows)
    return (f'<div class="table-wrap"><table id="{_esc(table_id)}" class="kv"><thead><tr><th>Name</th>'
            f"<th>Value</th></tr></thead><tbody>{body}</tbody></table></div>")


def _get_first(d: Mapping, *keys: str) -> Any:
    for k in keys:
        if k in d:
            return d[k]
    return None


def _per_class_table(per_class: Any, labels: Mapping[int, str]) -> str:
    if isinstance(per_class, Mapping):
        items = list(per_class.items())
    else:
        items = list(enumerate(per_class))
    rows, parsed = [], []
    for key, entry in items:
        entry = entry if isinstance(entry, Mapping) else {}
        if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
            idx = int(key)
            name = labels.get(idx, str(idx))
        else:
            idx, name = None, str(key)
        p = _get_first(entry, "precision")
        r = _get_first(entry, "recall")
        f1 = _get_first(entry, "f1", "f1-score", "f1_score")
        sup = _get_first(entry, "support")
        parsed.append((p, r, f1, sup))
        cells = [f'<td class="num">{"" if idx is None else idx}</td>', f'<td class="label">{_esc(name)}</td>']
        for v in (p, r, f1):
            fv = _as_float(v)
            if fv is not None and math.isfinite(fv):
                pct = min(100.0, max(0.0, fv * 100))
                cells.append(f'<td class="num bar" style="--pct: {pct:.1f}%">{_esc(_fmt_metric(v))}</td>')
            else:
                cells.append(f'<td class="num">{_esc(_fmt_metric(v))}</td>')
        cells.append(f'<td class="num">{_esc(_fmt_number(sup))}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")

    # Macro and support-weighted averages over classes with finite numbers.
    foot = ""
    if len(parsed) > 1:
        def avg(col: int, weighted: bool) -> float | None:
            num = den = 0.0
            for row in parsed:
                v, w = _as_float(row[col]), _as_float(row[3]) if weighted else 1.0
                if v is None or w is None or not (math.isfinite(v) and math.isfinite(w)):
                    continue
                num += v * w
                den += w
            return num / den if den > 0 else None
        total = sum(_as_float(r[3]) or 0.0 for r in parsed if _finite(r[3]))
        for title, weighted in (("macro avg", False), ("weighted avg", True)):
            vals = [avg(c, weighted) for c in range(3)]
            if all(v is None for v in vals):
                continue
            foot += (f'<tr><td></td><td>{title}</td>'
                     + "".join(f'<td class="num">{_esc(_fmt_metric(v))}</td>' for v in vals)
                     + f'<td class="num">{_esc(_fmt_number(total))}</td></tr>')
    foot = f"<tfoot>{foot}</tfoot>" if foot else ""
    head = ('<thead><tr><th class="num">Id</th><th>Label</th><th class="num">Precision</th>'
            '<th class="num">Recall</th><th class="num">F1</th><th class="num">Support</th></tr></thead>')
    return (f'<div class="table-wrap"><table id="per-class-table">{head}<tbody>{"".join(rows)}</tbody>'
            f"{foot}</table></div>")


# ----------------------------------------------------------------------------
# log_history parsing
# ----------------------------------------------------------------------------

def _x_of(entry: Mapping, index: int) -> float:
    for key in ("step", "epoch"):
        v = _as_float(entry.get(key))
        if v is not None and math.isfinite(v):
            return v
    return float(index)


def _is_speed_metric(name: str) -> bool:
    return name.endswith(_SPEED_SUFFIXES) or name in ("runtime",)


def _split_history(log_history: Sequence[Mapping] | None):
    train, evals, summary = [], [], None
    for i, entry in enumerate(log_history or []):
        if not isinstance(entry, Mapping):
            continue
        if "train_runtime" in entry or "train_loss" in entry:
            summary = entry
        elif any(str(k).startswith("eval_") for k in entry):
            evals.append((i, entry))
        elif "loss" in entry or "learning_rate" in entry or "grad_norm" in entry:
            train.append((i, entry))
    return train, evals, summary


def _eval_metric_names(evals) -> list[str]:
    names: list[str] = []
    for _, e in evals:
        for k in e:
            if str(k).startswith("eval_") and k not in names:
                if _as_float(e[k]) is not None:
                    names.append(k)
    quality = [k for k in names if not _is_speed_metric(k[5:])]
    speed = [k for k in names if _is_speed_metric(k[5:])]
    quality.sort(key=lambda k: 0 if k == "eval_loss" else 1)
    return quality + speed


def _lower_is_better(metric: str) -> bool:
    m = metric.lower()
    return any(t in m for t in ("loss", "error", "mse", "mae", "rmse", "perplexity", "wer", "cer"))


# ----------------------------------------------------------------------------
# Page assembly
# ----------------------------------------------------------------------------

def _card(section_id: str, title: str, body: str, note: str = "") -> str:
    note_html = f'<p class="note">{_esc(note)}</p>' if note else ""
    return f'<section class="card" id="{_esc(section_id)}"><h2>{_esc(title)}</h2>{note_html}{body}</section>'


def _summary_section(summary: Mapping | None, evals, train) -> str:
    tiles: list[tuple[str, str]] = []
    if summary:
        if "train_loss" in summary:
            tiles.append(("Final train loss", _fmt_metric(summary["train_loss"])))
        if _as_float(summary.get("train_runtime")) is not None:
            tiles.append(("Train runtime", _fmt_duration(_as_float(summary["train_runtime"]))))
        for key in ("epoch", "step", "train_samples_per_second", "train_steps_per_second", "total_flos"):
            if key in summary:
                tiles.append((_humanise(key), _fmt_number(summary[key])))
        known = {"train_loss", "train_runtime", "epoch", "step", "train_samples_per_second",
                 "train_steps_per_second", "total_flos"}
        for key, value in summary.items():
            if key not in known and _as_float(value) is not None:
                tiles.append((_humanise(key), _fmt_number(value)))
    if evals:
        last = evals[-1][1]
        for key in _eval_metric_names(evals):
            if not _is_speed_metric(key[5:]) and key in last:
                tiles.append((f"Final eval {key[5:].replace('_', ' ')}", _fmt_metric(last[key])))
    if not tiles:
        return ""
    body = '<div class="tiles">' + "".join(
        f'<div class="tile"><div class="k">{_esc(k)}</div><div class="v">{_esc(v)}</div></div>' for k, v in tiles
    ) + "</div>"
    return _card("summary", "Summary", body)


def render_report(*, log_history: Sequence[Mapping] | None, id2label: Mapping | None = None,
                  confusion: Sequence[Sequence[Any]] | None = None, per_class: Any = None,
                  settings: Mapping | None = None, throughput: Mapping | None = None,
                  title: str = "tuneforge training report", language_model: bool = False) -> str:
    """The report page as an HTML string (see :func:`write_report`)."""
    labels: dict[int, str] = {}
    for k, v in (id2label or {}).items():
        try:
            labels[int(k)] = str(v)
        except (TypeError, ValueError):
            continue

    train, evals, summary = _split_history(log_history)
    if language_model:
        evals = [(i, _with_perplexity(e)) for i, e in evals]
    parts: list[str] = []

    parts.append(_summary_section(summary, evals, train))

    # --- Training curves -------------------------------------------------------
    loss_pts = _finite_points((_x_of(e, i), e.get("loss")) for i, e in train if "loss" in e)
    eval_loss_pts = _finite_points((_x_of(e, i), e.get("eval_loss")) for i, e in evals if "eval_loss" in e)
    lr_pts = _finite_points((_x_of(e, i), e.get("learning_rate")) for i, e in train if "learning_rate" in e)
    gn_pts = _finite_points((_x_of(e, i), e.get("grad_norm")) for i, e in train if "grad_norm" in e)
    n_loss = sum(1 for _, e in train if "loss" in e)
    n_lr = sum(1 for _, e in train if "learning_rate" in e)
    n_gn = sum(1 for _, e in train if "grad_norm" in e)

    def skipped_note(total: int, kept: int) -> str:
        dropped = total - kept
        return f"{dropped} non-finite value{'s' if dropped != 1 else ''} (NaN/inf) not plotted." if dropped else ""

    # Layout: the loss chart spans the page; learning rate and gradient norm share a row
    # (or one of them spans the page when the other is absent).
    wide_w, half_w = 1140, 550
    side_by_side = bool(n_lr) and bool(n_gn)
    side_w = half_w if side_by_side else wide_w
    if n_loss or eval_loss_pts:
        series = [_Series("train loss", loss_pts, _BLUE, smooth=True, marker_fmt=_fmt_metric)]
        if eval_loss_pts:
            series.append(_Series("eval loss", eval_loss_pts, _ORANGE, markers=True, marker_fmt=_fmt_metric))
        svg = _line_chart("loss-curve", series, x_label="Step", y_label="Loss", title="Training loss vs step",
                          width=wide_w, height=340)
        notes = [f"{len(loss_pts):,} logged point{'s' if len(loss_pts) != 1 else ''}"]
        if eval_loss_pts:
            notes.append(f"{len(eval_loss_pts)} evaluation{'s' if len(eval_loss_pts) != 1 else ''}")
        if len(loss_pts) > _MAX_PLOT_POINTS:
            notes.append(f"downsampled to ≤{_MAX_PLOT_POINTS} points for drawing")
        if skipped_note(n_loss, len(loss_pts)):
            notes.append(skipped_note(n_loss, len(loss_pts)))
        body = f'<div class="chart-box">{svg}</div>' if svg else '<p class="empty">No finite loss values to plot.</p>'
        parts.append(_card("training-loss", "Training loss", body, " · ".join(notes)))
    side_cards: list[str] = []
    if n_lr:
        svg = _line_chart("lr-curve", [_Series("learning rate", lr_pts, _VIOLET, markers=None)],
                          x_label="Step", y_label="Learning rate", title="Learning rate vs step",
                          width=side_w, height=300)
        body = f'<div class="chart-box">{svg}</div>' if svg else '<p class="empty">No finite learning-rate values to plot.</p>'
        side_cards.append(_card("learning-rate", "Learning rate", body, skipped_note(n_lr, len(lr_pts))))
    if n_gn:
        svg = _line_chart("grad-norm-curve", [_Series("gradient norm", gn_pts, _TEAL, smooth=True)],
                          x_label="Step", y_label="Gradient norm", title="Gradient norm vs step",
                          width=side_w, height=300)
        body = f'<div class="chart-box">{svg}</div>' if svg else '<p class="empty">No finite gradient norms to plot.</p>'
        side_cards.append(_card("grad-norm", "Gradient norm", body, skipped_note(n_gn, len(gn_pts))))
    if len(side_cards) > 1:
        parts.append('<div class="grid">' + "".join(side_cards) + "</div>")
    else:
        parts.extend(side_cards)

    # --- Evaluation metrics ----------------------------------------------------
    if evals:
        names = _eval_metric_names(evals)
        quality = [k for k in names if not _is_speed_metric(k[5:])]
        charts = []
        if len(evals) > 1:
            for idx, key in enumerate(quality):
                pts = _finite_points((_x_of(e, i), e.get(key)) for i, e in evals if key in e)
                if len(pts) < 2:
                    continue
                metric = key[5:]
                svg = _line_chart(f"eval-{metric}-curve", [_Series(metric, pts, _PALETTE[idx % len(_PALETTE)],
                                                                   markers=True, marker_fmt=_fmt_metric)],
                                  x_label="Step", y_label=metric.replace("_", " "), width=360, height=230,
                                  title=f"eval {metric} per evaluation", css_class="chart eval-chart",
                                  x_zero=False)
                if svg:
                    charts.append(f"<figure><figcaption>{_esc(metric.replace('_', ' '))}</figcaption>{svg}</figure>")
        # Table: one row per evaluation, best quality value per column highlighted.
        best: dict[str, float] = {}
        for key in quality:
            vals = [_as_float(e.get(key)) for _, e in evals]
            vals = [v for v in vals if v is not None and math.isfinite(v)]
            if vals:
                best[key] = min(vals) if _lower_is_better(key) else max(vals)
        head = '<th class="num">Epoch</th><th class="num">Step</th>' + "".join(
            f'<th class="num">{_esc(k[5:].replace("_", " "))}</th>' for k in names)
        rows = []
        for _, e in evals:
            cells = [f'<td class="num">{_esc(_fmt_number(e.get("epoch")))}</td>',
                     f'<td class="num">{_esc(_fmt_number(e.get("step")))}</td>']
            for k in names:
                v = e.get(k)
                if k in quality:
                    fv = _as_float(v)
                    cls = "num best" if (len(evals) > 1 and fv is not None and k in best and fv == best[k]) else "num"
                    cells.append(f'<td class="{cls}">{_esc(_fmt_metric(v))}</td>')
                else:
                    cells.append(f'<td class="num">{_esc(_fmt_number(v))}</td>')
            rows.append("<tr>" + "".join(cells) + "</tr>")
        table = (f'<div class="table-wrap"><table id="eval-table"><thead><tr>{head}</tr></thead>'
                 f'<tbody>{"".join(rows)}</tbody></table></div>')
        body = (f'<div class="grid small">{"".join(charts)}</div>' if charts else "") + table
        note = f"{len(evals)} evaluation{'s' if len(evals) != 1 else ''}"
        if len(evals) > 1 and best:
            note += "; best value per metric in bold"
        parts.append(_card("eval-metrics", "Evaluation metrics", body, note))

    # --- Confusion matrix and per-class metrics --------------------------------
    if confusion is not None and len(confusion) > 0:
        matrix = []
        for row in confusion:
            vals = []
            for v in row:
                f = _as_float(v)
                vals.append(f if f is not None else float("nan"))
            matrix.append(vals)
        n = len(matrix)
        width = max(len(r) for r in matrix)
        if width != n:  # Ragged or non-square: pad to square with zeros.
            size = max(n, width)
            matrix = [r + [0.0] * (size - len(r)) for r in matrix] + [[0.0] * size for _ in range(size - n)]
            n = size
        names = [labels.get(i, str(i)) for i in range(n)]
        total = sum(v for r in matrix for v in r if math.isfinite(v))
        correct = sum(matrix[i][i] for i in range(n) if math.isfinite(matrix[i][i]))
        note = "Rows are true labels, columns predicted labels; shading is each cell's share of its row."
        if total > 0:
            note += f" {_fmt_count(correct)} of {_fmt_count(total)} correct ({correct / total * 100:.1f}%)."
        parts.append(_card("confusion", "Confusion matrix",
                           f'<div class="cm-wrap">{_confusion_svg(matrix, names)}</div>', note))
    if per_class is not None and len(per_class) > 0:
        parts.append(_card("per-class", "Per-class metrics", _per_class_table(per_class, labels)))

    # --- Settings and throughput ----------------------------------------------
    tables = []
    if settings:
        tables.append(_card("settings", "Settings",
                            _kv_table("settings-table", ((str(k), _fmt_setting(v)) for k, v in settings.items()))))
    if throughput:
        tables.append(_card("throughput", "Throughput",
                            _kv_table("throughput-table",
                                      ((_humanise(k), _fmt_number(v)) for k, v in throughput.items()),
                                      key_class="label")))
    if len(tables) > 1:
        parts.append('<div class="grid tables">' + "".join(tables) + "</div>")
    else:
        parts.extend(tables)

    if not any(parts):
        parts.append(_card("empty", "No data", '<p class="empty">Nothing was logged for this run.</p>'))

    sub = []
    if train:
        sub.append(f"{len(train):,} training log entr{'ies' if len(train) != 1 else 'y'}")
    if evals:
        sub.append(f"{len(evals):,} evaluation{'s' if len(evals) != 1 else ''}")
    generated = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    sub.append(f"generated {generated}")
    body = "\n".join(p for p in parts if p)
    return ("<!DOCTYPE html>\n"
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
            f'<header><h1>{_esc(title)}</h1><p class="subtitle">{_esc(" · ".join(sub))}</p></header>\n'
            f"{body}\n"
            '<footer>tuneforge · self-contained report (inline SVG, no scripts)</footer>\n'
            "</main>\n</body>\n</html>\n")


def _with_perplexity(entry: Mapping) -> Mapping:
    """An evaluation with eval_perplexity = exp(eval_loss) beside its loss (language models)."""
    loss = _as_float(entry.get("eval_loss"))
    if loss is None or "eval_perplexity" in entry:
        return entry
    out: dict = {}
    for key, value in entry.items():
        out[key] = value
        if key == "eval_loss":
            out["eval_perplexity"] = math.exp(loss) if loss < 700 else float("inf")
    return out


def write_report(path: str | Path, *, log_history: Sequence[Mapping] | None,
                 id2label: Mapping | None = None, confusion: Sequence[Sequence[Any]] | None = None,
                 per_class: Any = None, settings: Mapping | None = None,
                 throughput: Mapping | None = None, title: str = "tuneforge training report",
                 language_model: bool = False) -> Path:
    """Write a self-contained HTML training report to ``path`` and return it as a :class:`Path`.

    ``log_history`` is a Trainer ``state.log_history``: training entries (``loss``,
    ``learning_rate``, ``grad_norm``, ``epoch``, ``step``), evaluation entries
    (``eval_*`` keys) and the final summary (``train_runtime``, ``train_loss``, ...).
    ``id2label`` names the classes; ``confusion`` is a square count matrix (rows: true
    label, columns: predicted label); ``per_class`` is one dict of ``precision``,
    ``recall``, ``f1`` and ``support`` per label id; ``settings`` and ``throughput`` are
    flat dicts shown as tables.  Every optional input may be None: its section is left out.
    ``language_model`` (causal-LM and SFT runs): each evaluation also shows its perplexity,
    ``exp(eval_loss)``, in the summary, the per-evaluation curves and the table.
    """
    path = Path(path)
    page = render_report(log_history=log_history, id2label=id2label, confusion=confusion,
                         per_class=per_class, settings=settings, throughput=throughput, title=title,
                         language_model=language_model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
