"""Tiny server-side SVG charts (no JavaScript): metric and epsilon over rounds, contribution shares per site."""

from __future__ import annotations

from html import escape

from markupsafe import Markup

__all__ = ["line_chart", "bar_chart"]

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def line_chart(
    series: dict[str, list[tuple[float, float]]],
    *,
    title: str,
    y_label: str,
    x_label: str = "round",
    hline: tuple[str, float] | None = None,
    width: int = 640,
    height: int = 280,
    empty_text: str | None = None,
) -> Markup:
    """An SVG chart with one line per series and an optional dashed reference line.

    Every text is given by the caller, already in the page's language; `empty_text` is shown
    instead of a chart without data (default: "<title>: no data yet").
    """
    points = [p for values in series.values() for p in values if p[1] is not None]
    if not points:
        return Markup(f'<p class="empty">{escape(empty_text or f"{title}: no data yet")}</p>')
    left, right, top, bottom = 56, 140, 28, 36
    xs = [p[0] for p in points]
    ys = [p[1] for p in points] + ([hline[1]] if hline else [])
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    pad = (y1 - y0) * 0.08 or abs(y1) * 0.1 or 1.0
    y0, y1 = y0 - pad, y1 + pad

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * (height - top - bottom)

    parts = [
        f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="{left}" y="16" class="title">{escape(title)}</text>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" class="axis"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" class="axis"/>',
        f'<text x="{(left + width - right) / 2}" y="{height - 6}" class="label">{escape(x_label)}</text>',
        f'<text x="12" y="{(top + height - bottom) / 2}" class="label" '
        f'transform="rotate(-90 12 {(top + height - bottom) / 2})">{escape(y_label)}</text>',
    ]
    for frac in (0.0, 0.5, 1.0):
        value = y0 + frac * (y1 - y0)
        parts.append(f'<text x="{left - 6}" y="{sy(value) + 4:.1f}" class="tick" text-anchor="end">{value:.3g}</text>')
    for x in sorted(set(xs)) if len(set(xs)) <= 12 else (x0, x1):
        parts.append(f'<text x="{sx(x):.1f}" y="{height - bottom + 14}" class="tick" text-anchor="middle">{x:g}</text>')
    if hline:
        y = sy(hline[1])
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" class="ref"/>')
        parts.append(f'<text x="{width - right + 4}" y="{y + 4:.1f}" class="legend">{escape(hline[0])}</text>')
    for i, (name, values) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        clean = sorted((x, y) for x, y in values if y is not None)
        if not clean:
            continue
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in clean)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>')
        for x, y in clean:
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}"/>')
        ly = top + 14 * i + 8
        parts.append(f'<rect x="{width - right + 4}" y="{ly - 8}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{width - right + 18}" y="{ly + 1}" class="legend">{escape(name[:18])}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def bar_chart(
    groups: dict[str, dict[str, float | None]],
    *,
    title: str,
    y_label: str,
    width: int = 640,
    height: int = 280,
) -> Markup:
    """An SVG chart of grouped bars: one group per key of `groups` (a site), one bar per series in it.

    Values may be negative (a free rider's utility share); bars start at zero. A missing value
    (None) draws no bar, and the group's label says "n/a" for it.
    """
    names = list(dict.fromkeys(k for bars in groups.values() for k in bars))
    values = [v for bars in groups.values() for v in bars.values() if v is not None]
    if not values:
        return Markup(f'<p class="empty">{escape(title)}: no data yet</p>')
    left, right, top, bottom = 56, 140, 28, 48
    y0, y1 = min(0.0, *values), max(0.0, *values)
    pad = (y1 - y0) * 0.08 or 0.1
    y0, y1 = (y0 - pad if y0 < 0 else y0), y1 + pad

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * (height - top - bottom)

    plot = width - left - right
    slot = plot / len(groups)
    bar = max(2.0, min(28.0, slot * 0.8 / max(1, len(names))))
    parts = [
        f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="{left}" y="16" class="title">{escape(title)}</text>',
        f'<line x1="{left}" y1="{sy(0):.1f}" x2="{width - right}" y2="{sy(0):.1f}" class="axis"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" class="axis"/>',
        f'<text x="12" y="{(top + height - bottom) / 2}" class="label" '
        f'transform="rotate(-90 12 {(top + height - bottom) / 2})">{escape(y_label)}</text>',
    ]
    for frac in (0.0, 0.5, 1.0):
        value = y0 + frac * (y1 - y0)
        parts.append(f'<text x="{left - 6}" y="{sy(value) + 4:.1f}" class="tick" text-anchor="end">{value:.3g}</text>')
    for g, (group, bars) in enumerate(groups.items()):
        start = left + g * slot + (slot - bar * len(names)) / 2
        for i, name in enumerate(names):
            height_of = bars.get(name)
            if height_of is None:
                continue
            y_top, y_bottom = sorted((sy(height_of), sy(0)))
            parts.append(
                f'<rect class="bar" x="{start + i * bar:.1f}" y="{y_top:.1f}" width="{bar:.1f}" '
                f'height="{max(y_bottom - y_top, 0.5):.1f}" fill="{PALETTE[i % len(PALETTE)]}">'
                f"<title>{escape(group)}: {escape(name)} {height_of:.4g}</title></rect>"
            )
        missing = [n for n in names if bars.get(n) is None]
        label = group[:18] + (" (n/a: " + ", ".join(missing) + ")" if missing else "")
        parts.append(
            f'<text x="{left + g * slot + slot / 2:.1f}" y="{height - bottom + 14}" class="tick" '
            f'text-anchor="middle">{escape(label[:40])}</text>'
        )
    for i, name in enumerate(names):
        ly = top + 14 * i + 8
        color = PALETTE[i % len(PALETTE)]
        parts.append(f'<rect x="{width - right + 4}" y="{ly - 8}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{width - right + 18}" y="{ly + 1}" class="legend">{escape(name[:18])}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
