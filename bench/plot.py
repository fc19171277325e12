#!/usr/bin/env python3
"""A small SVG line chart, standard library only (no matplotlib or gnuplot on the bench machines).

    python3 bench/plot.py SPEC.json OUT.svg

SPEC is {"title": str, "panels": [PANEL, ...]}, the panels drawn side by side; a PANEL is
{"title": str, "xlabel": str, "ylabel": str, "xlog": bool, "ymin0": bool,
 "series": [{"name": str, "points": [[x, y], ...], "dashed": bool}, ...]}.
"""
import json
import math
import sys
from xml.sax.saxutils import escape

W, H = 420, 320  # one panel
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 40, 80
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]


def nice_ticks(lo, hi, n=5):
    """About n round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    ticks, t = [], math.floor(lo / step) * step
    while t < hi + step * 0.999:
        ticks.append(round(t, 10))
        t += step
    return ticks


def label(v):
    """1500000 -> 1.5M, 2000 -> 2k, 0.25 -> 0.25."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:g}{suffix}"
    return f"{v:g}"


def panel(p, x0):
    out = []
    pts = [pt for s in p["series"] for pt in s["points"]]
    if not pts:
        return out
    xlog = p.get("xlog", False)
    fx = math.log10 if xlog else (lambda v: v)
    xs = [fx(x) for x, _ in pts]
    ys = [y for _, y in pts]
    xlo, xhi = min(xs), max(xs)
    if xhi == xlo:
        xlo, xhi = xlo - 1, xhi + 1
    yt = nice_ticks(0 if p.get("ymin0", True) else min(ys), max(ys) * 1.05)
    ylo, yhi = yt[0], yt[-1]
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def sx(x):
        return x0 + LEFT + (fx(x) - xlo) / (xhi - xlo) * pw

    def sy(y):
        return TOP + ph - (y - ylo) / (yhi - ylo) * ph

    out.append(f'<text x="{x0 + W / 2}" y="22" text-anchor="middle" font-weight="bold">'
               f'{escape(p["title"])}</text>')
    out.append(f'<rect x="{x0 + LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" '
               'stroke="#333"/>')
    for t in yt:
        y = sy(t)
        out.append(f'<line x1="{x0 + LEFT}" y1="{y:.1f}" x2="{x0 + LEFT + pw}" y2="{y:.1f}" '
                   'stroke="#ddd"/>')
        out.append(f'<text x="{x0 + LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{label(t)}</text>')
    if xlog:
        xt = [10 ** e for e in range(math.floor(xlo), math.ceil(xhi) + 1)
              if xlo - 1e-9 <= e <= xhi + 1e-9]
    else:
        xt = sorted({x for x, _ in pts})
    for t in xt:
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" y1="{TOP + ph}" x2="{x:.1f}" y2="{TOP + ph + 5}" '
                   'stroke="#333"/>')
        out.append(f'<text x="{x:.1f}" y="{TOP + ph + 18}" text-anchor="middle">{label(t)}</text>')
    out.append(f'<text x="{x0 + LEFT + pw / 2}" y="{TOP + ph + 36}" text-anchor="middle">'
               f'{escape(p["xlabel"])}</text>')
    out.append(f'<text transform="translate({x0 + 16},{TOP + ph / 2}) rotate(-90)" '
               f'text-anchor="middle">{escape(p["ylabel"])}</text>')
    for i, s in enumerate(p["series"]):
        c = COLOURS[i % len(COLOURS)]
        dash = ' stroke-dasharray="5,4"' if s.get("dashed") else ""
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s["points"])
        out.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="2"{dash}/>')
        for x, y in s["points"]:
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{c}"/>')
        ly = TOP + ph + 54 + 14 * (i // 2)
        lx = x0 + LEFT + (i % 2) * pw / 2
        out.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 18}" y2="{ly - 4}" stroke="{c}" '
                   f'stroke-width="2"{dash}/>')
        out.append(f'<text x="{lx + 22}" y="{ly}">{escape(s["name"])}</text>')
    return out


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    panels = spec["panels"]
    legend_rows = max([(len(p["series"]) + 1) // 2 for p in panels] or [1])
    width, height = W * max(len(panels), 1), H + 14 * max(legend_rows - 1, 0) + 24
    body = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
            f'<rect width="{width}" height="{height}" fill="white"/>',
            f'<text x="8" y="{height - 8}" fill="#666">{escape(spec.get("title", ""))}</text>']
    for i, p in enumerate(panels):
        body += panel(p, i * W)
    body.append("</svg>")
    with open(sys.argv[2], "w") as f:
        f.write("\n".join(body) + "\n")


if __name__ == "__main__":
    main()
