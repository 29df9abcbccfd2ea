"""Tests for the procedural synthetic Mars scene generator.

Besides shapes and determinism, the key property is *learnability*: a cheap classifier on
hand-made features must separate the classes well above chance, otherwise the synthetic
benchmarks downstream would only ever measure noise.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from marseval.data.synthetic import scenes as S


def _grey(img: np.ndarray) -> np.ndarray:
    g = img.astype(float)
    return g.mean(axis=2) if g.ndim == 3 else g


def _features(img: np.ndarray) -> np.ndarray:
    """Translation-tolerant summary: downsampled pixels, colour stats, texture histograms."""
    g = _grey(img)
    n = g.shape[0]
    down = g.reshape(8, n // 8, 8, n // 8).mean(axis=(1, 3)).ravel() / 255.0
    chans = img.reshape(-1, img.shape[2]) if img.ndim == 3 else g.reshape(-1, 1)
    colour = np.concatenate([chans.mean(0), chans.std(0)]) / 255.0
    rel = g - np.median(g)
    inten = np.histogram(rel, bins=16, range=(-80, 80))[0] / g.size
    gy, gx = np.gradient(g)
    mag = np.hypot(gx, gy)
    mag_hist = np.histogram(mag, bins=16, range=(0, 40))[0] / g.size
    ori = np.mod(np.arctan2(gy, gx), np.pi)
    ori_hist = np.histogram(ori, bins=8, range=(0, np.pi), weights=mag)[0] / (mag.sum() + 1e-9)
    spec = np.abs(np.fft.rfft2(g - g.mean())) ** 2
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.rfftfreq(n)[None, :]
    k = np.sqrt(fy**2 + fx**2)
    radial = np.array(
        [spec[(k >= lo) & (k < lo + 0.0625)].mean() for lo in np.arange(0, 0.5, 0.0625)]
    )
    radial = np.log1p(radial)
    # Layering shows up as row-profile variance exceeding column-profile variance.
    rows_cols = np.array([g.mean(1).std(), g.mean(0).std()]) / 255.0
    # Blob responses (scale-normalised Laplacian of Gaussian) pick up small objects
    # such as cones, boulders and dust-devil cores wherever they are in the frame.
    blobs = [
        np.percentile(ndimage.gaussian_laplace(g, s) * s**2, [0.5, 2, 10, 90, 98, 99.5]) / 255.0
        for s in (1.0, 2.0, 4.0)
    ]
    return np.concatenate([down, colour, inten, mag_hist, ori_hist, radial, rows_cols, *blobs])


def _fit_score(x: np.ndarray, y: np.ndarray, seed: int = 0) -> float:
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    clf = RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1)
    clf.fit(xtr, ytr)
    return float((clf.predict(xte) == yte).mean())


# ------------------------------------------------------------------ basics
def test_motifs_cover_required_set():
    required = {
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
    }
    assert required <= set(S.MOTIFS)
    for m in S.MOTIFS:
        assert callable(getattr(S, f"_draw_{m}"))


@pytest.mark.parametrize("bands", [1, 3])
def test_shapes_and_dtypes(bands):
    rng = np.random.default_rng(0)
    size = 48
    shape = (size, size) if bands == 1 else (size, size, 3)
    t = S.terrain(rng, size, bands)
    assert t.shape == shape and t.dtype == np.float64
    assert S.to_uint8(t, bands).shape == shape
    assert S.to_uint8(t, bands).dtype == np.uint8
    assert S.classification_image(3, 12, rng, size, bands).shape == shape
    assert S.classification_image([0, 4], 12, rng, size, bands).shape == shape
    assert S.classification_image(1, 2, rng, size, bands).dtype == np.uint8
    before, after = S.change_pair(1, rng, size, bands)
    assert before.shape == after.shape == shape
    img, mask = S.segmentation_sample(5, rng, size, bands)
    assert img.shape == shape and mask.shape == (size, size) and mask.dtype == np.uint8
    img, boxes = S.detection_sample(3, rng, size, bands)
    assert img.shape == shape and isinstance(boxes, list)
    assert S.scene_with_motifs(["dune", "crater"], rng, size, bands).shape == shape
    mosaic, _ = S.global_mosaic(["crater"], rng, 200, 100, n_sites=2, bands=bands)
    assert mosaic.shape == ((100, 200) if bands == 1 else (100, 200, 3))
    assert mosaic.dtype == np.uint8


def test_to_uint8_converts_bands_and_clips():
    grey = np.array([[-0.5, 0.0], [0.5, 2.0]])
    out = S.to_uint8(grey, 1)
    assert out.tolist() == [[0, 0], [128, 255]]
    rgb = S.to_uint8(grey, 3)
    assert rgb.shape == (2, 2, 3)
    # Mars palette: red > green > blue for a mid-grey luminance.
    r, g, b = rgb[1, 0]
    assert r > g > b
    assert abs(int(S.to_uint8(S.to_uint8(grey, 3).astype(float) / 255.0, 1)[1, 0]) - 128) <= 2
    with pytest.raises(ValueError):
        S.to_uint8(grey, 2)


def test_rgb_is_reddish_brown():
    rng = np.random.default_rng(5)
    img = S.classification_image(0, 12, rng, 64, 3)
    r, g, b = img.reshape(-1, 3).mean(0)
    assert r > g + 20 and g > b + 10


def test_frost_is_bluish_white():
    canvas = np.full((64, 64, 3), 0.45) * np.array([1.38, 0.86, 0.56])
    before = canvas.copy()
    fp = S._draw_frost(canvas, np.random.default_rng(0), 1.0)
    assert 0.1 < fp.mean() < 0.5
    changed = canvas[fp]
    # Frost raises blue much more than red: the reddish terrain turns bluish white.
    assert (changed[:, 2] - before[fp][:, 2]).mean() > 0.3
    assert (changed[:, 2] - before[fp][:, 2]).mean() > 3 * (changed[:, 0] - before[fp][:, 0]).mean()


def test_determinism():
    def render(seed):
        rng = np.random.default_rng(seed)
        parts = [
            S.classification_image(7, 15, rng, 32, 3),
            S.classification_image([1, 5], 12, rng, 32, 1),
            *S.change_pair(1, rng, 32, 1),
            *S.segmentation_sample(4, rng, 32, 3),
            S.detection_sample(5, rng, 32, 3)[0],
            S.scene_with_motifs(["cone", "haze"], rng, 32, 3),
            S.global_mosaic(["dune", "crater"], rng, 128, 64, n_sites=2)[0],
        ]
        return b"".join(p.tobytes() for p in parts), S.caption(["crater", "dune"], rng)

    a, cap_a = render(11)
    b, cap_b = render(11)
    c, _ = render(12)
    assert a == b and cap_a == cap_b
    assert a != c
    boxes1 = S.detection_sample(5, np.random.default_rng(3))[1]
    boxes2 = S.detection_sample(5, np.random.default_rng(3))[1]
    assert boxes1 == boxes2


def test_each_motif_changes_the_image():
    for name in S.MOTIFS:
        base = S.terrain(np.random.default_rng(0), 64, 3)
        drawn = base.copy()
        fp = getattr(S, f"_draw_{name}")(drawn, np.random.default_rng(1), 1.0)
        assert fp.dtype == bool and fp.shape == (64, 64)
        diff = np.abs(drawn - base).sum(axis=2)
        assert diff.max() > 0.05, name
        # The footprint covers every pixel the motif changed by more than ~1 grey level.
        assert not np.any(diff[~fp] > 3 * 1.4 / 255.0), name


def test_invalid_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        S.classification_image(6, 6, rng)
    with pytest.raises(ValueError):
        S.classification_image([0, 9], 6, rng)
    with pytest.raises(ValueError):
        S.scene_with_motifs(["volcano_of_doom"], rng)
    with pytest.raises(ValueError):
        S.terrain(rng, 32, 2)


# ------------------------------------------------------------------ learnability
def _classification_accuracy(n_classes: int, per_class: int, size: int, bands: int) -> float:
    rng = np.random.default_rng(100 + n_classes)
    x, y = [], []
    for k in range(n_classes):
        for _ in range(per_class):
            x.append(_features(S.classification_image(k, n_classes, rng, size, bands)))
            y.append(k)
    return _fit_score(np.array(x), np.array(y))


def test_learnable_6_classes():
    acc = _classification_accuracy(6, 40, 64, 3)
    assert acc > 0.7, acc


def test_learnable_15_classes():
    # 15 > 12 motifs: classes 12-14 reuse crater/cone/boulder at a denser/larger level.
    acc = _classification_accuracy(15, 40, 64, 1)
    assert acc > 0.5, acc


def test_learnable_15_classes_small_rgb():
    acc = _classification_accuracy(15, 40, 32, 3)
    assert acc > 0.5, acc


def test_binary_learnable():
    rng = np.random.default_rng(7)
    x = [_features(S.classification_image(i % 2, 2, rng, 64, 3)) for i in range(160)]
    acc = _fit_score(np.array(x), np.arange(160) % 2)
    assert acc > 0.85, acc


def _line_features(img: np.ndarray) -> np.ndarray:
    """Crude Radon transform of thin dark structures: long straight streaks (dust-devil
    tracks) give one very strong projection, round objects do not."""
    dark = np.clip(ndimage.gaussian_laplace(_grey(img), 1.5), 0, None)
    top = np.array(
        [
            np.sort(ndimage.rotate(dark, ang, reshape=False, order=1).sum(0))[-3:]
            for ang in range(0, 180, 15)
        ]
    )
    return np.log1p([top.max(), top[:, -1].mean(), top.max() / (top[:, -1].mean() + 1e-9)])


def test_multilabel_learnable():
    rng = np.random.default_rng(8)
    n_labels, n = 6, 400
    ys, xs = [], []
    for _ in range(n):
        y = rng.random(n_labels) < 0.35
        img = S.classification_image(list(np.flatnonzero(y)), n_labels, rng, 64, 3)
        xs.append(np.concatenate([_features(img), _line_features(img)]))
        ys.append(y.astype(int))
    x, y = np.array(xs), np.array(ys)
    assert 0.25 < y.mean() < 0.45
    ntr = int(0.7 * n)
    pred = np.stack(
        [
            make_pipeline(StandardScaler(), LogisticRegression(C=0.3, max_iter=2000))
            .fit(x[:ntr], y[:ntr, j])
            .predict(x[ntr:])
            for j in range(n_labels)
        ],
        axis=1,
    )
    f1 = f1_score(y[ntr:], pred, average=None, zero_division=0)
    assert f1.mean() > 0.7, f1
    # Frost and haze change the whole frame and must be near-perfect.
    assert f1[4] > 0.9 and f1[5] > 0.9, f1


def test_empty_multilabel_is_plain_terrain():
    img = S.classification_image([], 6, np.random.default_rng(0), 64, 1)
    ref_rng = np.random.default_rng(0)
    canvas = S.terrain(ref_rng, 64, 1)
    # Same terrain, only sensor noise added: images agree to a few grey levels.
    assert np.abs(img.astype(float) - canvas * 255).mean() < 4


def test_change_pairs_distinguishable():
    rng = np.random.default_rng(9)
    feats, labels = [], []
    for i in range(160):
        label = i % 2
        before, after = S.change_pair(label, rng, 64, 1)
        d = np.abs(after.astype(float) - before.astype(float))
        d = np.abs(d - np.median(d))  # remove the global brightness change
        feats.append([d.max(), np.percentile(d, 99), np.percentile(d, 95), d.std()])
        labels.append(label)
    acc = _fit_score(np.array(feats), np.array(labels))
    assert acc > 0.85, acc
    # Unchanged pairs really are the same place: high correlation.
    b0, a0 = S.change_pair(0, np.random.default_rng(1), 64, 1)
    assert np.corrcoef(b0.ravel(), a0.ravel())[0, 1] > 0.8


# ------------------------------------------------------------------ segmentation
def test_segmentation_masks():
    rng = np.random.default_rng(10)
    n_classes = 6
    presence = np.zeros(n_classes)
    inside = {c: [] for c in range(1, n_classes)}
    background = []
    only_background = 0
    for _ in range(50):
        img, mask = S.segmentation_sample(n_classes, rng, 64, 3)
        assert mask.max() < n_classes
        g = _grey(img)
        present = np.unique(mask)
        presence[present] += 1
        only_background += present.tolist() == [0]
        background.append(g[mask == 0])
        for c in present[present > 0]:
            inside[c].append(g[mask == c])
    frac = presence / 50
    assert np.all(frac[1:] >= 0.3), frac
    assert only_background >= 1
    bg = np.concatenate(background).mean()
    for c in range(1, n_classes):
        diff = abs(np.concatenate(inside[c]).mean() - bg)
        assert diff > 3.0, (c, diff)


def test_segmentation_mask_marks_drawn_pixels():
    # Masked object pixels deviate from the local terrain much more than background pixels.
    rng = np.random.default_rng(11)
    dev_in, dev_out = [], []
    for _ in range(30):
        img, mask = S.segmentation_sample(4, rng, 64, 1)  # craters, cones, boulders
        smooth = _grey(img)
        resid = np.abs(smooth - ndimage.median_filter(smooth, size=15))
        if (mask > 0).any():
            dev_in.append(resid[mask > 0].mean())
        dev_out.append(resid[mask == 0].mean())
    assert np.mean(dev_in) > 2 * np.mean(dev_out)


# ------------------------------------------------------------------ detection
def test_detection_boxes():
    rng = np.random.default_rng(12)
    n, size, empty = 200, 64, 0
    in_dev, out_dev = [], []
    classes = set()
    for _ in range(n):
        img, boxes = S.detection_sample(4, rng, size, 3, max_objects=6, empty_prob=0.15)
        assert len(boxes) <= 6
        empty += not boxes
        g = _grey(img)
        dev = np.abs(g - np.median(g))
        inside = np.zeros_like(g, dtype=bool)
        for x1, y1, x2, y2, cls in boxes:
            assert 0 <= x1 < x2 <= size and 0 <= y1 < y2 <= size
            assert 0 <= cls < 4 and cls == int(cls)
            classes.add(int(cls))
            inside[int(y1) : int(y2), int(x1) : int(x2)] = True
        if boxes:
            in_dev.append(dev[inside].mean())
            out_dev.append(dev[~inside].mean())
    assert 0.08 < empty / n < 0.25, empty / n
    assert classes == {0, 1, 2, 3}
    assert np.mean(in_dev) > 1.5 * np.mean(out_dev)


def test_detection_no_empty_images_when_disabled():
    rng = np.random.default_rng(13)
    assert all(S.detection_sample(2, rng, empty_prob=0.0)[1] for _ in range(30))
    assert not any(S.detection_sample(2, rng, empty_prob=1.0)[1] for _ in range(10))


# ------------------------------------------------------------------ captions / scenes
def test_captions():
    rng = np.random.default_rng(14)
    cap = S.caption(["crater", "dune"], rng)
    assert cap.endswith(".") and cap[0].isupper()
    assert "crater" in cap and "dune" in cap
    assert "featureless" in S.caption([], rng)
    caps = {S.caption(["crater", "dune"], rng) for _ in range(30)}
    assert len(caps) >= 5  # several templates/phrasings
    words = {"boulder": ("boulder", "rock"), "frost": ("frost",), "dust_devil": ("dust devil",)}
    for motif, keys in words.items():
        c = S.caption([motif], rng).lower()
        assert any(k in c for k in keys), c
    with pytest.raises(ValueError):
        S.caption(["unicorn"], rng)


def test_scene_with_motifs_is_retrievable():
    # Landform retrieval: the scenes of one motif must be closer to each other than to others.
    rng = np.random.default_rng(15)
    motifs = ["crater", "dune", "frost", "layered", "boulder", "channel"]
    x, y = [], []
    for i, m in enumerate(motifs):
        for _ in range(30):
            x.append(_features(S.scene_with_motifs([m], rng, 64, 3)))
            y.append(i)
    assert _fit_score(np.array(x), np.array(y)) > 0.8


# ------------------------------------------------------------------ mosaic
def test_global_mosaic_sites():
    rng = np.random.default_rng(16)
    landforms = ["crater", "cone", "dune", "frost", "dust_devil", "boulder"]
    width, height = 720, 360
    img, sites = S.global_mosaic(landforms, rng, width, height, n_sites=5)
    assert img.shape == (height, width) and img.dtype == np.uint8
    assert set(sites) == set(landforms)
    med = np.median(img)
    half = height // 36
    site_dev = []
    for name, centres in sites.items():
        assert len(centres) == 5
        for r, c in centres:
            assert 0 <= r < height and 0 <= c < width
            patch = img[r - half : r + half + 1, c - half : c + half + 1].astype(float)
            dev = np.abs(patch - med).max()
            assert dev > 25, (name, r, c, dev)
            site_dev.append(np.abs(patch - med).mean())
    # Random patches of the same size deviate far less from the median than site patches.
    rand = [
        np.abs(img[r - half : r + half + 1, c - half : c + half + 1].astype(float) - med).mean()
        for r, c in zip(
            rng.integers(half, height - half, 200),
            rng.integers(half, width - half, 200),
            strict=True,
        )
    ]
    assert np.mean(site_dev) > 1.5 * np.median(rand)


def test_global_mosaic_object_size_scales_with_height():
    def crater_area(height):
        img, sites = S.global_mosaic(["crater"], np.random.default_rng(0), 2 * height, height, 1)
        r, c = sites["crater"][0]
        win = 3 * max(4, height // 36)
        patch = img[max(0, r - win) : r + win, max(0, c - win) : c + win].astype(float)
        return (patch < np.median(img) - 20).sum()

    small, large = crater_area(360), crater_area(1080)
    assert small > 10
    assert 5 < large / small < 15  # area grows ~ (1080/360)^2 = 9
