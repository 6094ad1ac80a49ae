"""Plots drawn on the server as SVG: a time series, a workflow DAG and a span waterfall.

Every piece of text is escaped; every figure has a title and a description for screen readers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

_STATE_FILL = {
    "succeeded": "#dafbe1", "skipped": "#eef1f4", "failed": "#ffebe9", "cancelled": "#eef1f4",
    "running": "#fff8c5", "waiting": "#fff8c5", "pending": "#ffffff", "queued": "#fff8c5", "timed_out": "#ffebe9",
}


def _figure(width: int, height: int, title: str, description: str, body: str) -> Markup:
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
        f'style="max-width:{width}px" role="img">'
        f"<title>{escape(title)}</title><desc>{escape(description)}</desc>{body}</svg>"
    )


def series_plot(
    points: Sequence[tuple[float, float]], *, title: str, y_label: str, width: int = 640, height: int = 180,
    highlight: tuple[float, float] | None = None, marks: Sequence[float] = (), colour: str = "#0b5cad",
) -> Markup:
    """A line over ``points`` (x, y); ``highlight`` shades an x range, ``marks`` are dots on the line."""
    left, right, top, bottom = 48, 8, 8, 22
    if not points:
        return _figure(width, height, title, "no data", f'<text x="{left}" y="{height / 2}">no data</text>')
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(0.0, min(ys)), max(ys)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

    parts = [f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
             'fill="none" stroke="#d6dae0"/>']
    if highlight is not None:
        a, b = sorted(highlight)
        a, b = max(a, x0), min(b, x1)
        if b >= a:
            parts.append(f'<rect class="highlight" x="{sx(a):.1f}" y="{top}" width="{max(sx(b) - sx(a), 2):.1f}" '
                         f'height="{height - top - bottom}" fill="#ffebe9"/>')
    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
    by_x = dict(points)
    for x in marks:
        if x in by_x:
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(by_x[x]):.1f}" r="3" fill="#b3261e"/>')
    parts.append(f'<text x="4" y="{top + 10}">{escape(_short(y1))}</text>')
    parts.append(f'<text x="4" y="{height - bottom}">{escape(_short(y0))}</text>')
    parts.append(f'<text x="{left}" y="{height - 6}">{escape(y_label)}</text>')
    description = f"{len(points)} points, {y_label} from {_short(min(ys))} to {_short(max(ys))}"
    return _figure(width, height, title, description, "".join(parts))


def _short(value: float) -> str:
    return f"{value:.3g}"


@dataclass(frozen=True)
class Node:
    id: str
    label: str
    state: str
    needs: tuple[str, ...]
    href: str | None = None


def dag(nodes: Sequence[Node], *, title: str) -> Markup:
    """Steps left to right by depth (longest chain of ``needs``), edges from each need to its step."""
    by_id = {n.id: n for n in nodes}
    depth: dict[str, int] = {}

    def depth_of(node_id: str, seen: frozenset[str] = frozenset()) -> int:
        if node_id not in depth:
            needs = [n for n in by_id[node_id].needs if n in by_id and n not in seen]
            depth[node_id] = 1 + max((depth_of(n, seen | {node_id}) for n in needs), default=-1)
        return depth[node_id]

    columns: dict[int, list[Node]] = {}
    for node in nodes:
        columns.setdefault(depth_of(node.id), []).append(node)
    box_w, box_h, gap_x, gap_y = 150, 40, 50, 16
    where: dict[str, tuple[float, float]] = {}
    for col, members in sorted(columns.items()):
        for row, node in enumerate(members):
            where[node.id] = (10 + col * (box_w + gap_x), 10 + row * (box_h + gap_y))
    width = 20 + (max(columns, default=0) + 1) * (box_w + gap_x) - gap_x
    height = 20 + max((len(m) for m in columns.values()), default=1) * (box_h + gap_y) - gap_y
    parts = ['<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" '
             'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#5b6470"/></marker></defs>']
    for node in nodes:
        x, y = where[node.id]
        for need in node.needs:
            if need in where:
                nx, ny = where[need]
                parts.append(f'<line x1="{nx + box_w}" y1="{ny + box_h / 2}" x2="{x}" y2="{y + box_h / 2}" '
                             'stroke="#5b6470" marker-end="url(#arrow)"/>')
    for node in nodes:
        x, y = where[node.id]
        fill = _STATE_FILL.get(node.state, "#ffffff")
        box = (f'<g class="step" data-step="{escape(node.id)}" data-state="{escape(node.state)}">'
               f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="5" fill="{fill}" stroke="#5b6470"/>'
               f'<text x="{x + 8}" y="{y + 16}">{escape(node.label[:22])}</text>'
               f'<text x="{x + 8}" y="{y + 32}" fill="#5b6470">{escape(node.state)}</text></g>')
        parts.append(f'<a href="{escape(node.href)}">{box}</a>' if node.href else box)
    description = ", ".join(f"{n.label}: {n.state}" for n in nodes)
    return _figure(int(width), int(height), title, description, "".join(parts))


@dataclass(frozen=True)
class Bar:
    label: str
    start_ns: int
    end_ns: int
    depth: int
    error: bool


def waterfall(bars: Sequence[Bar], *, title: str, width: int = 900) -> Markup:
    """One row per span, indented by depth, its bar placed on the trace's time line."""
    if not bars:
        return _figure(width, 40, title, "no spans", '<text x="4" y="20">no spans</text>')
    t0 = min(b.start_ns for b in bars)
    t1 = max(b.end_ns for b in bars)
    span = max(t1 - t0, 1)
    label_w, row_h = 300, 20
    height = len(bars) * row_h + 24
    parts = []
    for i, bar in enumerate(bars):
        y = i * row_h + 4
        x = label_w + (bar.start_ns - t0) / span * (width - label_w - 10)
        w = max((bar.end_ns - bar.start_ns) / span * (width - label_w - 10), 1.5)
        fill = "#b3261e" if bar.error else "#0b5cad"
        ms = (bar.end_ns - bar.start_ns) / 1e6
        parts.append(f'<g class="span"><text x="{4 + bar.depth * 12}" y="{y + 13}">{escape(bar.label[:40])}</text>'
                     f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="12" fill="{fill}"/>'
                     f'<text x="{min(x + w + 4, width - 60):.1f}" y="{y + 13}" fill="#5b6470">{ms:.1f} ms</text></g>')
    parts.append(f'<text x="{label_w}" y="{height - 4}">0 ms</text>'
                 f'<text x="{width - 70}" y="{height - 4}">{span / 1e6:.1f} ms</text>')
    return _figure(width, height, title, f"{len(bars)} spans over {span / 1e6:.1f} ms", "".join(parts))
