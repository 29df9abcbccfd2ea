"""Procedural synthetic Mars scenes.

Every workflow stage of marseval has to run on a laptop CPU without downloading the
real benchmark data, so this module renders small, deterministic stand-in images
whose labels are *learnable*: each class/label is tied to a visible motif (crater,
cone, dune field, ...), so a model trained on the synthetic data reaches clearly
above-chance scores and the metrics code downstream is exercised meaningfully.

Conventions
-----------
* All randomness comes from the ``numpy.random.Generator`` passed in; the same
  generator state always yields byte-identical output.
* A *canvas* is a float array: ``(H, W)`` luminance for one band, ``(H, W, 3)``
  RGB for three bands, nominally in ``[0, 1]``.  Motif functions modify it in place
  and return a boolean footprint ``(H, W)`` of the pixels they changed, which is
  what segmentation masks and detection boxes are built from.
* Luminance changes are added to RGB canvases through a reddish-brown palette so
  shading keeps the Mars hue; frost and haze blend towards their own colours.
* Illumination comes from the left (west), so shadows fall to the right (east).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
from scipy import ndimage

__all__ = [
    "MOTIFS",
    "caption",
    "change_pair",
    "classification_image",
    "detection_sample",
    "global_mosaic",
    "scene_with_motifs",
    "segmentation_sample",
    "terrain",
    "to_uint8",
]

MOTIFS: tuple[str, ...] = (
    "crater",
    "cone",
    "boulder",
    "dust_devil",
    "frost",
    "haze",
    "ridge",
    "dune",
    "smooth",
    "layered",
    "channel",
    "rough",
)

# Luminance -> RGB multipliers: a mid-grey luminance of 0.45 maps to ~(155, 97, 63),
# the butterscotch/reddish-brown of orbital colour products.
_PALETTE = np.array([1.38, 0.86, 0.56])
# Weights turning a palette-coloured RGB canvas back into the luminance it came from
# (Rec.601 weights normalised so that _LUMA @ _PALETTE == 1).
_LUMA = np.array([0.299, 0.587, 0.114]) / float(np.array([0.299, 0.587, 0.114]) @ _PALETTE)
_FROST_RGB = np.array([0.86, 0.90, 0.98])  # bluish white CO2/H2O frost
_FROST_GREY = 0.88
_HAZE_RGB = np.array([1.0, 0.78, 0.60])  # dusty butterscotch haze tint
_BASE_LUMA = 0.45
# Changes smaller than about one grey level are not "drawn" pixels for masks/boxes.
_EPS = 1.0 / 255.0
# Per-class strength multipliers: when there are more classes than motifs, class k uses
# motif k % len(MOTIFS) at level k // len(MOTIFS), i.e. a distinct density/scale.
_LEVEL_STRENGTH = (1.0, 2.6, 0.5, 4.0)
# Drawing order for overlays: global texture first, discrete objects on top of it and
# atmospheric haze last (it veils everything beneath it).
_RENDER_ORDER = {
    name: i
    for i, name in enumerate(
        (
            "smooth",
            "rough",
            "layered",
            "dune",
            "ridge",
            "channel",
            "frost",
            "crater",
            "cone",
            "boulder",
            "dust_devil",
            "haze",
        )
    )
}
# Motifs whose structure fills the whole frame; segmentation confines them to a region.
_REGION_MOTIFS = frozenset({"haze", "dune", "smooth", "layered", "rough"})
# Low-contrast textures used as distractors in binary / negative images.
_DISTRACTORS = ("rough", "ridge", "layered", "dune", "boulder")
# Segmentation class c (1-based) uses _SEG_MOTIFS[(c - 1) % len] at level (c - 1) // len.
_SEG_MOTIFS = (
    "crater",
    "cone",
    "boulder",
    "dune",
    "frost",
    "channel",
    "ridge",
    "layered",
    "rough",
    "dust_devil",
    "smooth",
    "haze",
)
# Detection class c uses _DET_KINDS[c % len] at size level c // len.
_DET_KINDS = ("boulder", "cone", "dust_devil", "crater", "frost")
_DET_SCALE = (1.0, 1.7, 0.65, 2.2)


# --------------------------------------------------------------------------- helpers
def _check_bands(bands: int) -> None:
    if bands not in (1, 3):
        raise ValueError(f"bands must be 1 or 3, got {bands}")


@lru_cache(maxsize=32)
def _spectral_filter(h: int, w: int, beta: float) -> np.ndarray:
    # Cached because the same image sizes are rendered thousands of times.
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    k = np.sqrt(fy**2 + fx**2)
    k[0, 0] = 1.0
    filt = k ** (-beta / 2.0)
    filt[0, 0] = 0.0  # zero mean
    filt.setflags(write=False)
    return filt


def _noise_field(rng: np.random.Generator, shape: tuple[int, int], beta: float = 3.0) -> np.ndarray:
    """Zero-mean, unit-std power-law (1/f^beta) noise; beta~3 looks like rolling terrain.

    FFT synthesis is O(N log N) and periodic, which also suits the equirectangular
    mosaic (it wraps around in longitude).
    """
    h, w = shape
    white = rng.standard_normal((h, w))
    spec = np.fft.rfft2(white) * _spectral_filter(h, w, float(beta))
    out = np.fft.irfft2(spec, s=(h, w))
    out -= out.mean()
    std = out.std()
    return out / std if std > 0 else out


def _count(rng: np.random.Generator, mean: float) -> int:
    """Object count ~ mean with +-30 % jitter, at least one (the motif must be visible)."""
    return max(1, int(round(mean * rng.uniform(0.7, 1.3))))


def _window(
    shape: tuple[int, ...], cy: float, cx: float, rad: float
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
    """Clip a square window of half-width ``rad`` around (cy, cx) to the image.

    Objects are evaluated only inside their window, so drawing cost does not grow with
    the image size (important for the large global mosaic).
    Returns (slices, dy, dx) with dy/dx the offsets from the centre, or None if the
    window misses the image entirely.
    """
    h, w = shape[0], shape[1]
    y0, y1 = max(0, int(np.floor(cy - rad))), min(h, int(np.ceil(cy + rad)) + 1)
    x0, x1 = max(0, int(np.floor(cx - rad))), min(w, int(np.ceil(cx + rad)) + 1)
    if y0 >= y1 or x0 >= x1:
        return None
    dy = np.arange(y0, y1, dtype=float)[:, None] - cy
    dx = np.arange(x0, x1, dtype=float)[None, :] - cx
    return (slice(y0, y1), slice(x0, x1)), dy, dx


def _add(
    canvas: np.ndarray,
    fp: np.ndarray,
    sl: tuple[slice, slice] | tuple[slice, ...],
    delta: np.ndarray,
) -> None:
    """Add a luminance change (through the Mars palette for RGB) and record its footprint."""
    if canvas.ndim == 3:
        canvas[sl] += delta[..., None] * _PALETTE
    else:
        canvas[sl] += delta
    fp[sl] |= np.abs(delta) >= _EPS


def _blend(
    canvas: np.ndarray,
    fp: np.ndarray,
    sl: tuple[slice, slice] | tuple[slice, ...],
    alpha: np.ndarray,
    rgb: np.ndarray,
    grey: float,
) -> None:
    """Alpha-blend towards a fixed colour (frost is white whatever lies beneath)."""
    if canvas.ndim == 3:
        a = alpha[..., None]
        canvas[sl] = canvas[sl] * (1.0 - a) + a * rgb
    else:
        canvas[sl] = canvas[sl] * (1.0 - alpha) + alpha * grey
    fp[sl] |= alpha >= _EPS


def _empty_fp(canvas: np.ndarray) -> np.ndarray:
    return np.zeros(canvas.shape[:2], dtype=bool)


def _scale(canvas: np.ndarray) -> float:
    # Sizes below are specified for a 64-pixel frame and scale with the frame.
    return min(canvas.shape[0], canvas.shape[1]) / 64.0


# ------------------------------------------------------------- single-object primitives
def _crater_at(
    canvas: np.ndarray, fp: np.ndarray, cy: float, cx: float, r: float, amp: float
) -> None:
    """Bowl-shaped crater: dark interior (west wall in shadow), bright raised rim."""
    win = _window(canvas.shape, cy, cx, 1.35 * r + 1.0)
    if win is None:
        return
    sl, dy, dx = win
    rho = np.sqrt(dy**2 + dx**2) / r
    # Bowl outweighs the thin rim so a crater is, on average, darker than its surroundings.
    inner = np.clip(1.0 - rho**2, 0.0, None) ** 0.7
    bowl = -inner * (1.0 - 0.6 * dx / r)
    rim = 0.75 * np.exp(-(((rho - 1.0) / 0.15) ** 2))
    delta = amp * (bowl + rim) * (rho < 1.35)  # rim tail below ~1 grey level
    _add(canvas, fp, sl, delta)


def _cone_at(
    canvas: np.ndarray, fp: np.ndarray, cy: float, cx: float, r: float, amp: float
) -> None:
    """Pitted cone: gentle edifice, bright summit ring, small dark central pit."""
    base = 2.2 * r
    win = _window(canvas.shape, cy, cx, base + 1.0)
    if win is None:
        return
    sl, dy, dx = win
    d = np.sqrt(dy**2 + dx**2)
    # West flank faces the sun, east flank is darker.
    edifice = 0.35 * np.clip(1.0 - d / base, 0.0, 1.0) * (1.0 - 0.6 * dx / (d + 1e-6))
    ring = np.exp(-(((d - r) / (0.35 * r + 0.4)) ** 2))
    pit = -1.5 * np.exp(-((d / (0.45 * r + 0.3)) ** 2))
    delta = amp * (edifice + ring + pit) * (d < base)
    _add(canvas, fp, sl, delta)


def _boulder_at(
    canvas: np.ndarray, fp: np.ndarray, cy: float, cx: float, r: float, amp: float
) -> None:
    """Small bright blob with its dark cast shadow to the east."""
    win = _window(canvas.shape, cy, cx + 0.8 * r, 2.6 * r + 1.0)
    if win is None:
        return
    sl, dy, dx = win
    dx = dx + 0.8 * r  # window is shifted east to hold the shadow; re-centre on the rock
    rock = np.exp(-2.0 * (dy**2 + dx**2) / r**2)
    shadow = np.exp(-(((dx - 1.4 * r) / (1.0 * r)) ** 2) - (dy / (0.8 * r)) ** 2)
    delta = amp * (rock - 0.9 * shadow)
    delta[np.abs(delta) < 0.02 * amp] = 0.0  # cut gaussian tails so boxes stay tight
    _add(canvas, fp, sl, delta)


def _dust_devil_at(
    canvas: np.ndarray,
    fp: np.ndarray,
    cy: float,
    cx: float,
    core: float,
    length: float,
    theta: float,
    amp: float,
) -> None:
    """Bright dusty core with a long dark track/shadow streak trailing behind it."""
    uy, ux = np.sin(theta), np.cos(theta)
    my, mx = cy + 0.5 * length * uy, cx + 0.5 * length * ux
    width = max(1.2, 0.8 * core)
    win = _window(canvas.shape, my, mx, 0.5 * length + 3.0 * core + 1.0)
    if win is None:
        return
    sl, dy, dx = win
    py, px = dy + (my - cy), dx + (mx - cx)  # offsets from the core
    s = np.clip(py * uy + px * ux, 0.0, length)
    perp2 = (py - s * uy) ** 2 + (px - s * ux) ** 2
    track = np.exp(-perp2 / width**2) * (1.0 - 0.5 * s / length) * (s > 0.5 * core)
    blob = np.exp(-(py**2 + px**2) / core**2)
    delta = amp * (1.4 * blob - 0.8 * track)
    delta[np.abs(delta) < 0.02 * amp] = 0.0
    _add(canvas, fp, sl, delta)


def _frost_patch_at(
    canvas: np.ndarray,
    fp: np.ndarray,
    rng: np.random.Generator,
    cy: float,
    cx: float,
    r: float,
    opacity: float,
) -> None:
    """Irregular bright bluish-white patch (seasonal frost on a slope or crater floor)."""
    win = _window(canvas.shape, cy, cx, 1.35 * r + 1.0)
    if win is None:
        return
    sl, dy, dx = win
    ang = np.arctan2(dy, dx)
    k = rng.integers(2, 5)
    wobble = 1.0 + 0.2 * np.sin(k * ang + rng.uniform(0, 2 * np.pi))
    rho = np.sqrt(dy**2 + dx**2) / (r * wobble)
    alpha = opacity * np.clip((1.0 - rho) * 3.0, 0.0, 1.0)
    _blend(canvas, fp, sl, alpha, _FROST_RGB, _FROST_GREY)


# ----------------------------------------------------------------------- motif drawers
def _draw_crater(canvas: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Impact craters: more and larger with strength."""
    fp, sc = _empty_fp(canvas), _scale(canvas)
    h, w = canvas.shape[:2]
    for _ in range(_count(rng, 1.6 * strength)):
        r = sc * rng.uniform(5.0, 11.0) * strength**0.2
        amp = 0.24 * rng.uniform(0.8, 1.2) * min(1.0, strength) ** 0.5
        _crater_at(canvas, fp, rng.uniform(0, h), rng.uniform(0, w), r, amp)
    return fp


def _draw_cone(canvas: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Fields of small pitted cones (rootless cones / mud volcanoes)."""
    fp, sc = _empty_fp(canvas), _scale(canvas)
    h, w = canvas.shape[:2]
    for _ in range(_count(rng, 2.5 * strength)):
        r = sc * rng.uniform(2.5, 4.5) * strength**0.15
        amp = 0.22 * rng.uniform(0.8, 1.2) * min(1.0, strength) ** 0.5
        _cone_at(canvas, fp, rng.uniform(0, h), rng.uniform(0, w), r, amp)
    return fp


def _draw_boulder(
    canvas: np.ndarray, rng: np.random.Generator, strength: float = 1.0
) -> np.ndarray:
    """Boulder field: many bright specks with shadows; density grows with strength."""
    fp, sc = _empty_fp(canvas), _scale(canvas)
    h, w = canvas.shape[:2]
    n = _count(rng, 12.0 * strength * max(1.0, sc))
    ys, xs = rng.uniform(0, h, n), rng.uniform(0, w, n)
    rs = max(sc, 0.7) * rng.uniform(0.8, 1.8, n) * strength**0.15
    amp = 0.32 * min(1.0, strength) ** 0.5
    for y, x, r in zip(ys, xs, rs, strict=True):
        _boulder_at(canvas, fp, y, x, r, amp * rng.uniform(0.8, 1.2))
    return fp


def _draw_dust_devil(
    canvas: np.ndarray, rng: np.random.Generator, strength: float = 1.0
) -> np.ndarray:
    """Active dust devils: bright cores with long dark tracks, sharing one wind direction."""
    fp, sc = _empty_fp(canvas), _scale(canvas)
    h, w = canvas.shape[:2]
    theta0 = rng.uniform(0, 2 * np.pi)
    for _ in range(_count(rng, 1.5 * strength)):
        _dust_devil_at(
            canvas,
            fp,
            rng.uniform(0.1 * h, 0.9 * h),
            rng.uniform(0.1 * w, 0.9 * w),
            core=max(sc, 0.6) * rng.uniform(1.5, 2.4) * strength**0.15,
            length=sc * rng.uniform(25.0, 50.0),
            theta=theta0 + rng.normal(0, 0.2),
            amp=0.3 * min(1.0, strength) ** 0.5,
        )
    return fp


def _draw_frost(canvas: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Bright bluish-white frost patches: thresholded smooth noise, coverage ~ strength."""
    fp = _empty_fp(canvas)
    field = _noise_field(rng, canvas.shape[:2], beta=3.2)
    coverage = float(np.clip(0.25 * strength * rng.uniform(0.8, 1.2), 0.05, 0.8))
    thr = np.quantile(field, 1.0 - coverage)
    alpha = 0.8 * np.clip((field - thr) / 0.25, 0.0, 1.0)
    _blend(canvas, fp, (slice(None), slice(None)), alpha, _FROST_RGB, _FROST_GREY)
    return fp


def _draw_haze(canvas: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Atmospheric dust haze: contrast drops and everything brightens towards dust colour."""
    c = 1.0 / (1.0 + 0.9 * strength * rng.uniform(0.85, 1.15))
    lift = 0.12 * min(strength, 2.0)
    m = canvas.mean(axis=(0, 1))
    tint = _HAZE_RGB if canvas.ndim == 3 else 1.0
    canvas[...] = m + (canvas - m) * c + lift * tint
    return np.ones(canvas.shape[:2], dtype=bool)


def _draw_ridge(canvas: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Long linear ridges (wrinkle ridges, yardang crests): lit west flank, dark east flank."""
    fp, sc = _empty_fp(canvas), _scale(canvas)
    h, w = canvas.shape[:2]
    yy = np.arange(h, dtype=float)[:, None]
    xx = np.arange(w, dtype=float)[None, :]
    full = (slice(None), slice(None))
    for _ in range(_count(rng, 2.0 * strength)):
        y0, x0, th = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, np.pi)
        t = (xx - x0) * np.cos(th) + (yy - y0) * np.sin(th)  # across the ridge
        s = -(xx - x0) * np.sin(th) + (yy - y0) * np.cos(th)  # along the ridge
        # Width floor keeps lines legible on 32 px frames and small mosaic patches.
        wid = max(sc, 0.75) * rng.uniform(1.2, 2.2) * strength**0.15
        half = 0.5 * min(h, w) * rng.uniform(0.6, 1.3)
        fade = np.exp(-((s / half) ** 8))
        lit = np.exp(-(((t + 0.8 * wid) / wid) ** 2))
        shade = np.exp(-(((t - 0.8 * wid) / wid) ** 2))
        delta = 0.17 * min(1.0, strength) ** 0.5 * (lit - shade) * fade
        delta[np.abs(delta) < 0.01] = 0.0
        _add(canvas, fp, full, delta)
    return fp


def _draw_dune(canvas: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Dark basaltic dune field: periodic, slightly sinuous, asymmetric stripes."""
    fp, sc = _empty_fp(canvas), _scale(canvas)
    h, w = canvas.shape[:2]
    yy = np.arange(h, dtype=float)[:, None]
    xx = np.arange(w, dtype=float)[None, :]
    th = rng.uniform(0, np.pi)
    lam = sc * rng.uniform(6.0, 10.0) / strength**0.25
    t = xx * np.cos(th) + yy * np.sin(th)
    s = -xx * np.sin(th) + yy * np.cos(th)
    phase = (
        2 * np.pi * t / lam
        + 1.2 * np.sin(2 * np.pi * s / (lam * rng.uniform(3.0, 6.0)) + rng.uniform(0, 2 * np.pi))
        + rng.uniform(0, 2 * np.pi)
    )
    # sin + 2nd harmonic = gentle stoss slope and steep lee face.
    profile = np.sin(phase) + 0.4 * np.sin(2 * phase)
    delta = 0.08 * min(strength, 1.5) * profile - 0.08 * min(strength, 1.5) ** 0.5
    _add(canvas, fp, (slice(None), slice(None)), delta)
    return fp


def _draw_smooth(canvas: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Smooth, dust-mantled plains: blurred, low variance, slightly brighter."""
    sigma = 1.5 * _scale(canvas) * (1.0 + strength)
    sig = (sigma, sigma, 0.0) if canvas.ndim == 3 else (sigma, sigma)
    m = canvas.mean(axis=(0, 1))
    keep = 0.45 / (1.0 + 0.5 * strength) * rng.uniform(0.8, 1.2)
    canvas[...] = m + ndimage.gaussian_filter(canvas - m, sig, mode="wrap") * keep
    delta = np.full(canvas.shape[:2], 0.05 * min(strength, 2.0))
    _add(canvas, _empty_fp(canvas), (slice(None), slice(None)), delta)
    return np.ones(canvas.shape[:2], dtype=bool)


def _draw_layered(
    canvas: np.ndarray, rng: np.random.Generator, strength: float = 1.0
) -> np.ndarray:
    """Light-toned layered deposits: near-horizontal bands of alternating brightness."""
    fp, sc = _empty_fp(canvas), _scale(canvas)
    h, w = canvas.shape[:2]
    yy = np.arange(h, dtype=float)[:, None]
    xx = np.arange(w, dtype=float)[None, :]
    u = yy + np.tan(rng.uniform(-0.12, 0.12)) * xx + rng.uniform(0, 4)
    span = float(u.max() - u.min()) + 2.0
    mean_thick = sc * rng.uniform(2.5, 5.0) / strength**0.2
    n = int(np.ceil(span / (0.6 * mean_thick))) + 2
    edges = np.cumsum(rng.uniform(0.6, 1.4, n) * mean_thick) + float(u.min()) - mean_thick
    signs = np.where(np.arange(n + 1) % 2 == 0, 1.0, -1.0)
    vals = signs * rng.uniform(0.04, 0.10, n + 1) * min(strength, 1.5)
    band = vals[np.searchsorted(edges, u)]
    delta = ndimage.gaussian_filter(band, 0.6) + 0.05 * min(strength, 2.0) ** 0.5
    _add(canvas, fp, (slice(None), slice(None)), delta)
    return fp


def _draw_channel(
    canvas: np.ndarray, rng: np.random.Generator, strength: float = 1.0
) -> np.ndarray:
    """Sinuous dark channels with faint bright levees."""
    fp, sc = _empty_fp(canvas), _scale(canvas)
    h, w = canvas.shape[:2]
    yy = np.arange(h, dtype=float)[:, None]
    xx = np.arange(w, dtype=float)[None, :]
    for _ in range(_count(rng, 1.0 * strength)):
        th = rng.uniform(0, np.pi)
        y0, x0 = rng.uniform(0.25 * h, 0.75 * h), rng.uniform(0.25 * w, 0.75 * w)
        t = (xx - x0) * np.cos(th) + (yy - y0) * np.sin(th)
        s = -(xx - x0) * np.sin(th) + (yy - y0) * np.cos(th)
        lam = sc * rng.uniform(20.0, 40.0)
        centre = sc * rng.uniform(3.0, 7.0) * np.sin(2 * np.pi * s / lam + rng.uniform(0, 6.3))
        dist = np.abs(t - centre)
        wid = max(sc, 0.75) * rng.uniform(1.2, 2.0) * strength**0.2  # legible when small
        delta = (
            0.22
            * min(1.0, strength) ** 0.5
            * (
                -np.exp(-((dist / wid) ** 2))
                + 0.3 * np.exp(-(((dist - 1.8 * wid) / (0.6 * wid)) ** 2))
            )
        )
        delta[np.abs(delta) < 0.01] = 0.0
        _add(canvas, fp, (slice(None), slice(None)), delta)
    return fp


def _draw_rough(canvas: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Rough, blocky terrain: strong high-frequency texture, slightly darker."""
    h, w = canvas.shape[:2]
    hf = ndimage.gaussian_filter(rng.standard_normal((h, w)), 0.7, mode="wrap")
    hf /= hf.std() + 1e-12
    delta = 0.07 * min(strength, 2.0) * hf - 0.03
    fp = _empty_fp(canvas)
    _add(canvas, fp, (slice(None), slice(None)), delta)
    return np.ones((h, w), dtype=bool)


_DRAWERS: dict[str, Callable[[np.ndarray, np.random.Generator, float], np.ndarray]] = {
    name: globals()[f"_draw_{name}"] for name in MOTIFS
}


def _draw(name: str, canvas: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    try:
        drawer = _DRAWERS[name]
    except KeyError:
        raise ValueError(f"unknown motif {name!r}; known: {', '.join(MOTIFS)}") from None
    return drawer(canvas, rng, strength)


# ----------------------------------------------------------------------- base terrain
def terrain(rng: np.random.Generator, size: int, bands: int) -> np.ndarray:
    """Float base terrain: smooth 1/f^3 noise plus faint fine texture, palette-coloured for RGB."""
    _check_bands(bands)
    return _terrain(rng, (size, size), bands)


def _terrain(rng: np.random.Generator, shape: tuple[int, int], bands: int) -> np.ndarray:
    sc = min(shape) / 64.0
    # Random albedo and relief per scene so classes cannot be told apart by brightness alone.
    lum = _BASE_LUMA + rng.normal(0, 0.03)
    relief = 0.06 * rng.uniform(0.7, 1.3)
    base = lum + relief * _noise_field(rng, shape, beta=3.0)
    base += 0.012 * _noise_field(rng, shape, beta=1.0)  # regolith grain
    if bands == 1:
        return base
    palette = _PALETTE * (1.0 + rng.normal(0, 0.03, 3))
    canvas = base[..., None] * palette
    # Faint independent red-channel mottling (iron-oxide dust variations).
    canvas[..., 0] += 0.015 * _noise_field(rng, shape, beta=3.0 if sc >= 1 else 2.5)
    return canvas


def to_uint8(canvas: np.ndarray, bands: int) -> np.ndarray:
    """Convert a float canvas to uint8 (H, W) or (H, W, 3), converting bands if needed."""
    _check_bands(bands)
    arr = np.asarray(canvas, dtype=float)
    if bands == 1 and arr.ndim == 3:
        arr = arr @ _LUMA
    elif bands == 3 and arr.ndim == 2:
        arr = arr[..., None] * _PALETTE
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _finish(
    canvas: np.ndarray, rng: np.random.Generator, bands: int, noise: float = 0.008
) -> np.ndarray:
    """Add sensor noise and quantise (noise is drawn last so it is never smoothed away)."""
    canvas = canvas + rng.normal(0.0, noise, canvas.shape)
    return to_uint8(canvas, bands)


def _class_motif(k: int) -> tuple[str, float]:
    """Class index -> (motif, strength); classes beyond len(MOTIFS) reuse motifs at new levels."""
    level = k // len(MOTIFS)
    strength = _LEVEL_STRENGTH[level] if level < len(_LEVEL_STRENGTH) else 1.0 + level
    return MOTIFS[k % len(MOTIFS)], strength


def _overlay(canvas: np.ndarray, rng: np.random.Generator, items: list[tuple[str, float]]) -> None:
    for name, strength in sorted(items, key=lambda it: _RENDER_ORDER.get(it[0], 99)):
        _draw(name, canvas, rng, strength)


def _add_distractor(canvas: np.ndarray, rng: np.random.Generator, exclude: str | None) -> None:
    """With probability 0.7 add one faint texture from _DISTRACTORS (never ``exclude``)."""
    if rng.random() < 0.7:
        choices = [d for d in _DISTRACTORS if d != exclude]
        _draw(choices[rng.integers(len(choices))], canvas, rng, 0.3)


# --------------------------------------------------------------------------- public API
def classification_image(
    label: int | list[int],
    n_classes: int,
    rng: np.random.Generator,
    size: int = 64,
    bands: int = 3,
    *,
    binary_motif: str = "crater",
) -> np.ndarray:
    """Render one image for a classification task.

    * multi-class (``int`` label, ``n_classes > 2``): class k shows motif
      ``MOTIFS[k % 12]`` at density/scale level ``k // 12``;
    * binary (``n_classes == 2``): label 0 is plain terrain, label 1 adds
      ``binary_motif``; both get the same mild random distractors so only the motif
      separates them;
    * multi-label (``list`` label): the motifs of all listed classes are overlaid
      (empty list = plain terrain).
    """
    _check_bands(bands)
    if n_classes < 2:
        raise ValueError("n_classes must be >= 2")
    canvas = terrain(rng, size, bands)
    if isinstance(label, (list, tuple, np.ndarray)):
        labels = [int(k) for k in label]
        if any(k < 0 or k >= n_classes for k in labels):
            raise ValueError(f"labels {labels} out of range for {n_classes} classes")
        items = []
        for k in sorted(set(labels)):
            name, strength = _class_motif(k)
            items.append((name, strength * rng.uniform(0.85, 1.15)))
        _overlay(canvas, rng, items)
    else:
        k = int(label)
        if not 0 <= k < n_classes:
            raise ValueError(f"label {k} out of range for {n_classes} classes")
        if n_classes == 2:
            _add_distractor(canvas, rng, exclude=binary_motif)
            if k == 1:
                _draw(binary_motif, canvas, rng, rng.uniform(0.85, 1.15))
        else:
            name, strength = _class_motif(k)
            _draw(name, canvas, rng, strength * rng.uniform(0.85, 1.15))
    return _finish(canvas, rng, bands)


def change_pair(
    label: int, rng: np.random.Generator, size: int = 64, bands: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Before/after images of one place; label 1 adds a new crater or dark impact spot.

    Both labels get an independent small gain/offset change and fresh sensor noise, so
    only a *local* difference signals change.
    """
    _check_bands(bands)
    canvas = terrain(rng, size, bands)
    for name in ("ridge", "boulder", "crater", "dune"):
        if rng.random() < 0.35:
            _draw(name, canvas, rng, 0.7)
    before = _finish(canvas, rng, bands)
    after = canvas * rng.uniform(0.94, 1.06) + rng.uniform(-0.03, 0.03)
    if label:
        sc = size / 64.0
        cy, cx = rng.uniform(0.15 * size, 0.85 * size, 2)
        fp = _empty_fp(after)
        if rng.random() < 0.5:
            _crater_at(after, fp, cy, cx, sc * rng.uniform(3.5, 8.0), rng.uniform(0.22, 0.35))
        else:
            # Fresh dark blast zone around a tiny new impact.
            r = sc * rng.uniform(2.5, 6.0)
            win = _window(after.shape, cy, cx, 2.5 * r)
            if win is not None:
                sl, dy, dx = win
                delta = -rng.uniform(0.12, 0.22) * np.exp(-(dy**2 + dx**2) / r**2)
                _add(after, fp, sl, delta)
    return before, _finish(after, rng, bands)


def segmentation_sample(
    n_classes: int, rng: np.random.Generator, size: int = 64, bands: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Image and uint8 mask; 0 = background, class c >= 1 = pixels drawn by its motif.

    Each class is present independently with probability 0.6 (10 % of images are
    background only).  Frame-filling motifs (dunes, layering, ...) are confined to a
    random blob-shaped region; object motifs label exactly their drawn footprint.
    Regions are drawn first and objects on top; later drawings own shared pixels.
    """
    _check_bands(bands)
    if n_classes < 2:
        raise ValueError("n_classes must be >= 2")
    canvas = terrain(rng, size, bands)
    mask = np.zeros((size, size), dtype=np.uint8)
    present = [] if rng.random() < 0.1 else [c for c in range(1, n_classes) if rng.random() < 0.6]
    nseg = len(_SEG_MOTIFS)

    def motif_of(c: int) -> tuple[str, float]:
        level = (c - 1) // nseg
        strength = _LEVEL_STRENGTH[level] if level < len(_LEVEL_STRENGTH) else 1.0 + level
        return _SEG_MOTIFS[(c - 1) % nseg], strength

    order = sorted(present, key=lambda c: (motif_of(c)[0] not in _REGION_MOTIFS, c))
    for c in order:
        name, strength = motif_of(c)
        if name in _REGION_MOTIFS:
            region = _noise_field(rng, (size, size), beta=3.5)
            region = region > np.quantile(region, 1.0 - rng.uniform(0.2, 0.4))
            tmp = canvas.copy()
            _draw(name, tmp, rng, strength)
            sel = region[..., None] if canvas.ndim == 3 else region
            canvas = np.where(sel, tmp, canvas)
            fp = region
        else:
            fp = _draw(name, canvas, rng, strength)
        mask[fp] = c
    return _finish(canvas, rng, bands), mask


def _draw_object(
    kind: str,
    canvas: np.ndarray,
    fp: np.ndarray,
    rng: np.random.Generator,
    cy: float,
    cx: float,
    radius: float,
) -> None:
    """Draw a single object of ``kind`` with characteristic radius ``radius`` pixels."""
    if kind == "crater":
        _crater_at(canvas, fp, cy, cx, radius, 0.26 * rng.uniform(0.85, 1.15))
    elif kind == "cone":
        _cone_at(canvas, fp, cy, cx, 0.5 * radius, 0.24 * rng.uniform(0.85, 1.15))
    elif kind == "boulder":
        _boulder_at(canvas, fp, cy, cx, 0.6 * radius, 0.35 * rng.uniform(0.85, 1.15))
    elif kind == "dust_devil":
        _dust_devil_at(
            canvas,
            fp,
            cy,
            cx,
            core=0.35 * radius,
            length=2.5 * radius,
            theta=rng.uniform(0, 2 * np.pi),
            amp=0.32,
        )
    elif kind == "frost":
        _frost_patch_at(canvas, fp, rng, cy, cx, radius, 0.8)
    else:
        # Texture motifs: render the motif on a 32-64 px copy of the local window (so
        # stripes/ridges keep a legible number of periods whatever the object size),
        # resample the change back to the window and blend it in with a soft disc.
        win = _window(canvas.shape, cy, cx, radius)
        if win is None:
            return
        sl, dy, dx = win
        local = canvas[sl]
        hw = local.shape[:2]
        n = int(np.clip(max(hw), 32, 64))
        zin = (n / hw[0], n / hw[1]) + ((1.0,) if local.ndim == 3 else ())
        base = ndimage.zoom(local, zin, order=1, grid_mode=True, mode="nearest")
        drawn = base.copy()
        _draw(kind, drawn, rng, 1.0)
        zout = (hw[0] / base.shape[0], hw[1] / base.shape[1]) + zin[2:]
        delta = ndimage.zoom(drawn - base, zout, order=1, grid_mode=True, mode="nearest")
        delta = delta[: hw[0], : hw[1]]
        alpha = np.clip((1.0 - np.sqrt(dy**2 + dx**2) / radius) * 4.0, 0.0, 1.0)
        a = alpha[..., None] if canvas.ndim == 3 else alpha
        canvas[sl] = local + a * delta
        fp[sl] |= alpha > 0


def detection_sample(
    n_classes: int,
    rng: np.random.Generator,
    size: int = 64,
    bands: int = 3,
    max_objects: int = 6,
    empty_prob: float = 0.15,
) -> tuple[np.ndarray, list[list[float]]]:
    """Image and boxes ``[x1, y1, x2, y2, cls]`` (pixels, x2/y2 exclusive, cls 0-based).

    Class c is object kind ``_DET_KINDS[c % 5]`` (boulder, cone, dust devil, crater,
    frost patch) at size level ``c // 5``.  With probability ``empty_prob`` the image is
    a negative (no objects, but the same background distractors as positives).
    """
    _check_bands(bands)
    if n_classes < 1:
        raise ValueError("n_classes must be >= 1")
    canvas = terrain(rng, size, bands)
    _add_distractor(canvas, rng, exclude="boulder")  # boulders are objects here
    boxes: list[list[float]] = []
    if rng.random() >= empty_prob:
        sc = size / 64.0
        centres: list[tuple[float, float, float]] = []
        for _ in range(int(rng.integers(1, max_objects + 1))):
            cls = int(rng.integers(n_classes))
            kind = _DET_KINDS[cls % len(_DET_KINDS)]
            level = cls // len(_DET_KINDS)
            mult = _DET_SCALE[level] if level < len(_DET_SCALE) else 1.0 + 0.5 * level
            radius = sc * rng.uniform(4.0, 6.0) * mult
            # Rejection-sample a centre that keeps objects apart, so boxes are distinct.
            for _try in range(20):
                cy, cx = rng.uniform(radius, size - radius, 2)
                if all(np.hypot(cy - y, cx - x) > radius + r for y, x, r in centres):
                    break
            else:
                continue
            fp = _empty_fp(canvas)
            _draw_object(kind, canvas, fp, rng, cy, cx, radius)
            rows, cols = np.nonzero(fp)
            if rows.size == 0:
                continue
            centres.append((cy, cx, radius))
            boxes.append(
                [
                    float(cols.min()),
                    float(rows.min()),
                    float(cols.max() + 1),
                    float(rows.max() + 1),
                    cls,
                ]
            )
    return _finish(canvas, rng, bands), boxes


# Descriptive phrases per motif; several variants so captions are not a fixed mapping.
_PHRASES: dict[str, tuple[str, ...]] = {
    "crater": (
        "a fresh impact crater with a bright rim",
        "a bowl-shaped impact crater",
        "a small crater with a raised rim and shadowed floor",
    ),
    "cone": (
        "a field of small pitted cones",
        "volcanic cones with dark summit pits",
        "several rootless cones with bright rims",
    ),
    "boulder": (
        "scattered boulders casting dark shadows",
        "a dense boulder field",
        "bright rocks strewn across the surface",
    ),
    "dust_devil": (
        "an active dust devil trailing a dark track",
        "a dust devil with a long shadow streak",
        "a bright dust devil crossing the plain",
    ),
    "frost": (
        "bright bluish-white frost patches",
        "seasonal frost deposits",
        "patches of CO2 frost",
    ),
    "haze": (
        "a hazy, dust-laden atmosphere",
        "low-contrast terrain veiled by dust haze",
        "an atmospheric haze that washes out detail",
    ),
    "ridge": (
        "long linear ridges",
        "wrinkle ridges crossing the terrain",
        "sharp ridge crests with shadowed flanks",
    ),
    "dune": (
        "rippled dark sand dunes",
        "a field of periodic dunes",
        "wind-sculpted dune crests",
    ),
    "smooth": (
        "smooth dust-mantled plains",
        "a featureless smooth surface",
        "gently rolling smooth terrain",
    ),
    "layered": (
        "light-toned layered deposits",
        "horizontally banded sedimentary layers",
        "stacked layers of exposed bedrock",
    ),
    "channel": (
        "a sinuous dark channel",
        "a meandering channel with faint levees",
        "an ancient winding valley",
    ),
    "rough": (
        "rough, blocky terrain",
        "heavily textured rugged ground",
        "a rough, pitted surface",
    ),
}
_TEMPLATES = (
    "A HiRISE view of {}.",
    "Orbital image showing {}.",
    "This scene of the Martian surface contains {}.",
    "A satellite image of Mars with {}.",
    "{} seen from orbit.",
)
_LINKS = (" next to ", " and ", " alongside ", " near ")


def caption(motifs: list[str], rng: np.random.Generator) -> str:
    """English caption mentioning every motif, phrased with a random template/variants."""
    phrases = []
    for name in motifs:
        if name not in _PHRASES:
            raise ValueError(f"unknown motif {name!r}")
        options = _PHRASES[name]
        phrases.append(options[rng.integers(len(options))])
    if not phrases:
        phrases = ["plain, featureless Martian terrain"]
    if len(phrases) == 1:
        body = phrases[0]
    elif len(phrases) == 2:
        body = phrases[0] + _LINKS[rng.integers(len(_LINKS))] + phrases[1]
    else:
        body = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    text = _TEMPLATES[rng.integers(len(_TEMPLATES))].format(body)
    return text[0].upper() + text[1:]


def scene_with_motifs(
    motifs: list[str], rng: np.random.Generator, size: int = 64, bands: int = 3
) -> np.ndarray:
    """Terrain with all named motifs overlaid (image-text pairs, landform retrieval)."""
    _check_bands(bands)
    canvas = terrain(rng, size, bands)
    _overlay(canvas, rng, [(m, rng.uniform(0.85, 1.15)) for m in motifs])
    return _finish(canvas, rng, bands)


def global_mosaic(
    landforms: list[str],
    rng: np.random.Generator,
    width: int,
    height: int,
    n_sites: int = 6,
    bands: int = 1,
    window: tuple[int, int, int, int] | None = None,
) -> tuple[np.ndarray, dict[str, list[tuple[int, int]]]]:
    """Equirectangular mosaic (height x width) with each landform drawn at ``n_sites`` sites.

    Landform radius is ``max(4, height // 36)`` pixels, i.e. tied to the mosaic size
    rather than fixed, so a site still fills a good part of a tile after the mosaic is
    cut into tiles for retrieval. ``window`` (row0, row1, col0, col1) keeps the sites inside
    that part of the mosaic (the region a run's database covers).
    Returns the image and ``{landform: [(row, col), ...]}``.
    """
    _check_bands(bands)
    radius = max(4, height // 36)
    row0, row1, col0, col1 = window or (0, height, 0, width)
    row0, col0 = max(row0, radius), max(col0, radius)
    row1, col1 = min(row1, height - radius), min(col1, width - radius)
    if row1 <= row0 or col1 <= col0:
        raise ValueError("mosaic (or its site window) too small for its landform size")
    canvas = _terrain(rng, (height, width), bands)
    sites: dict[str, list[tuple[int, int]]] = {}
    taken: list[tuple[int, int]] = []
    for name in landforms:
        if name not in _DRAWERS:
            raise ValueError(f"unknown landform {name!r}")
        sites[name] = []
        for _ in range(n_sites):
            # Prefer centres at least two radii apart so sites do not overlap.
            for _try in range(30):
                r0 = int(rng.integers(row0, row1))
                c0 = int(rng.integers(col0, col1))
                if all(abs(r0 - r) + abs(c0 - c) > 3 * radius for r, c in taken):
                    break
            taken.append((r0, c0))
            sites[name].append((r0, c0))
            fp = _empty_fp(canvas)
            if name == "boulder":
                # A single rock would vanish at mosaic scale; draw a compact boulder cluster.
                for _b in range(8):
                    off = rng.normal(0, 0.4 * radius, 2)
                    _boulder_at(canvas, fp, r0 + off[0], c0 + off[1], 0.25 * radius, 0.35)
            else:
                _draw_object(name, canvas, fp, rng, float(r0), float(c0), float(radius))
    return _finish(canvas, rng, bands), sites
