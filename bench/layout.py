"""Checks on a drawn figure's layout: which visible texts overlap (titles, labels, drawn tick
labels, legend entries, annotations). The tests run it on every report figure; it draws nothing."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure
from matplotlib.text import Text


def _axis_texts(axis: Any) -> list[Text]:
    # Only the ticks inside the view are drawn; the Text objects of the others keep stale positions.
    drawn = axis._update_ticks()
    out = [t.label1 for t in drawn if t.label1.get_visible()] + [t.label2 for t in drawn if t.label2.get_visible()]
    return [*out, axis.label, axis.get_offset_text()]


def texts(fig: Figure) -> list[tuple[str, Any]]:
    """Every visible, non-empty text of ``fig`` with its box in display units, after a draw."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    found: list[Text] = list(fig.texts)
    if fig._suptitle is not None:
        found.append(fig._suptitle)
    legends = list(fig.legends)
    for ax in fig.axes:
        found += [ax.title, ax._left_title, ax._right_title, *ax.texts]
        found += _axis_texts(ax.xaxis) + _axis_texts(ax.yaxis)
        if ax.get_legend() is not None:
            legends.append(ax.get_legend())
    for leg in legends:
        found += [*leg.get_texts(), leg.get_title()]
    out = []
    for t in found:
        if t.get_visible() and t.get_text().strip():
            out.append((t.get_text(), t.get_window_extent(renderer)))
    return out


def overlaps(fig: Figure, pad: float = 0.5, boxes: list[tuple[str, Any]] | None = None) -> list[tuple[str, str]]:
    """Pairs of texts whose boxes intersect by more than ``pad`` display pixels both ways
    (``boxes``: :func:`texts` of the figure, when already measured)."""
    boxes = texts(fig) if boxes is None else boxes
    bad = []
    for i, (a, ba) in enumerate(boxes):
        for b, bb in boxes[i + 1:]:
            w = min(ba.x1, bb.x1) - max(ba.x0, bb.x0)
            h = min(ba.y1, bb.y1) - max(ba.y0, bb.y0)
            if w > pad and h > pad:
                bad.append((a, b))
    return bad


def outside(fig: Figure, boxes: list[tuple[str, Any]] | None = None) -> list[str]:
    """Texts that reach beyond the figure's edges (they would be cut off in the saved file)."""
    width, height = fig.canvas.get_width_height()
    boxes = texts(fig) if boxes is None else boxes
    return [t for t, bb in boxes if bb.x0 < -1 or bb.y0 < -1 or bb.x1 > width + 1 or bb.y1 > height + 1]
