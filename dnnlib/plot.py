"""Line charts as PNG files, drawn with Pillow alone (no plotting library to install).

Used for the loss curve of a training run (`loss.png`) and for the FID-versus-time charts of the
benchmarks."""

import math

from PIL import Image, ImageDraw, ImageFont

from dnnlib.util import atomic_write

_COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75), (227, 119, 194)]


def _nice_ticks(lo, hi, count=5):
    """About `count` round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10) if m * mag >= raw), default=10 * mag)
    first = math.ceil(lo / step) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _log_ticks(lo, hi):
    """log10 positions of round values (1, 2, 5 times a power of ten) between 10^lo and 10^hi;
    falls back to round values of the linear range when the span is too short for those."""
    ticks = [math.log10(m * 10 ** k) for k in range(math.floor(lo) - 1, math.ceil(hi) + 1) for m in (1, 2, 5)]
    ticks = [t for t in ticks if lo <= t <= hi]
    if len(ticks) >= 3:
        return ticks
    return [math.log10(v) for v in _nice_ticks(10 ** lo, 10 ** hi) if v > 0]


def _fmt(value):
    if value == 0:
        return '0'
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f'{value:.1e}'
    return f'{value:.4g}'


def line_plot(path, series, xlabel='', ylabel='', title='', logy=False, logx=False, size=(800, 500)):
    """Draws `series` ({name: [(x, y), ...]}) as lines with markers and writes a PNG to `path`.

    With `logy` (`logx`) the y (x) axis is logarithmic and points with a non-positive y (x) are
    dropped. The file is written atomically."""
    series = {name: [(float(x), float(y)) for x, y in points if math.isfinite(x) and math.isfinite(y)
                     and (y > 0 or not logy) and (x > 0 or not logx)]
              for name, points in series.items()}
    series = {name: points for name, points in series.items() if points}
    width, height = size
    left, right, top, bottom = 80, 20, 40, 60
    img = Image.new('RGB', size, 'white')
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    if title:
        draw.text((width // 2, 12), title, fill='black', font=font, anchor='mt')
    if not series:
        draw.text((width // 2, height // 2), 'no data yet', fill='black', font=font, anchor='mm')
        _save(img, path)
        return

    ty = (lambda v: math.log10(v)) if logy else (lambda v: v)
    tx = (lambda v: math.log10(v)) if logx else (lambda v: v)
    xs = [tx(x) for pts in series.values() for x, _ in pts]
    ys = [ty(y) for pts in series.values() for _, y in pts]
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = min(ys), max(ys)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
    if y_hi == y_lo:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    pad = (y_hi - y_lo) * 0.05
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def to_px(x, y):
        px = left + (tx(x) - x_lo) / (x_hi - x_lo) * (width - left - right)
        py = height - bottom - (ty(y) - y_lo) / (y_hi - y_lo) * (height - top - bottom)
        return px, py

    draw.rectangle([left, top, width - right, height - bottom], outline='black')
    for tick in (_log_ticks(x_lo, x_hi) if logx else _nice_ticks(x_lo, x_hi)):
        px = left + (tick - x_lo) / (x_hi - x_lo) * (width - left - right)
        draw.line([px, height - bottom, px, height - bottom + 5], fill='black')
        draw.line([px, top, px, height - bottom], fill=(230, 230, 230))
        draw.text((px, height - bottom + 8), _fmt(10 ** tick if logx else tick), fill='black', font=font, anchor='mt')
    for tick in (_log_ticks(y_lo, y_hi) if logy else _nice_ticks(y_lo, y_hi)):
        py = height - bottom - (tick - y_lo) / (y_hi - y_lo) * (height - top - bottom)
        draw.line([left - 5, py, left, py], fill='black')
        draw.line([left, py, width - right, py], fill=(230, 230, 230))
        draw.text((left - 8, py), _fmt(10 ** tick if logy else tick), fill='black', font=font, anchor='rm')
    draw.rectangle([left, top, width - right, height - bottom], outline='black')
    draw.text(((left + width - right) // 2, height - 20), xlabel + (' (log scale)' if logx else ''), fill='black', font=font, anchor='mm')
    draw.text((10, top - 20), ylabel + (' (log scale)' if logy else ''), fill='black', font=font, anchor='lt')

    for index, (name, points) in enumerate(series.items()):
        color = _COLORS[index % len(_COLORS)]
        pixels = [to_px(x, y) for x, y in sorted(points)]
        if len(pixels) > 1:
            draw.line(pixels, fill=color, width=2)
        for px, py in pixels:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=color)
        ly = top + 10 + 16 * index
        draw.line([width - right - 150, ly, width - right - 130, ly], fill=color, width=3)
        draw.text((width - right - 125, ly), name, fill='black', font=font, anchor='lm')
    _save(img, path)


def _save(img, path):
    with atomic_write(path, 'wb') as f:
        img.save(f, format='PNG')
