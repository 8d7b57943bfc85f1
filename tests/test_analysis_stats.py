"""Channel-weight statistics and figures, checked against independent NumPy computations."""

import json
import math

import numpy as np
import pytest

from keras_chanattn.analysis import (
    channel_correlation,
    channel_statistics,
    class_mean_gates,
    constant_channels,
    correlation_heatmaps,
    distinct_images,
    effective_rank,
    gate_distribution,
    gate_histograms,
    mean_abs_offdiagonal,
    model_statistics,
    statistics_table,
    top_activating,
    top_activating_grid,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _numpy_mean_abs_offdiagonal(weights):
    corr = np.corrcoef(weights, rowvar=False)
    return np.abs(corr[~np.eye(len(corr), dtype=bool)]).mean()


# ----- correlation -----------------------------------------------------------------------


def test_identical_channels_correlate_perfectly():
    column = np.random.default_rng(0).uniform(size=(30, 1))
    weights = np.repeat(column, 5, axis=1)
    weights[:, 4] = 1.0 - column[:, 0]  # anti-correlated: |corr| is still 1
    corr = channel_correlation(weights)
    expected = np.ones((5, 5))
    expected[4, :4] = expected[:4, 4] = -1.0
    np.testing.assert_allclose(corr, expected, atol=1e-12)
    assert mean_abs_offdiagonal(corr) == pytest.approx(1.0)


def test_independent_channels_are_nearly_uncorrelated():
    n = 4000
    weights = np.random.default_rng(1).uniform(size=(n, 16))
    # For independent channels each r is about N(0, 1/N), so E|r| = sqrt(2 / (pi N)); the
    # mean over 120 pairs is close to it.
    expected = math.sqrt(2.0 / (math.pi * n))
    value = mean_abs_offdiagonal(channel_correlation(weights))
    assert 0.5 * expected < value < 2.0 * expected


def test_correlation_matches_numpy_corrcoef():
    rng = np.random.default_rng(2)
    weights = rng.normal(size=(50, 7)) @ rng.normal(size=(7, 7))  # correlated channels
    corr = channel_correlation(weights.astype(np.float32))
    np.testing.assert_allclose(corr, np.corrcoef(weights, rowvar=False), atol=1e-5)
    assert mean_abs_offdiagonal(corr) == pytest.approx(
        _numpy_mean_abs_offdiagonal(weights), abs=1e-5
    )


def test_constant_channels_are_nan_and_left_out_of_the_summary():
    rng = np.random.default_rng(3)
    weights = rng.uniform(size=(40, 5)).astype(np.float32)
    weights[:, 1] = 1.0  # saturated gate
    weights[:, 3] = np.float32(1.0) - np.float32(6e-8) * (np.arange(40) % 2)  # last-bit noise
    assert constant_channels(weights).tolist() == [False, True, False, True, False]
    corr = channel_correlation(weights)
    assert np.isnan(corr[[1, 3], :]).all() and np.isnan(corr[:, [1, 3]]).all()
    live = weights[:, [0, 2, 4]].astype(np.float64)
    np.testing.assert_allclose(corr[np.ix_([0, 2, 4], [0, 2, 4])], np.corrcoef(live.T))
    assert mean_abs_offdiagonal(corr) == pytest.approx(_numpy_mean_abs_offdiagonal(live))
    stats = channel_statistics(weights)
    assert stats["constant_channels"] == 2 and stats["constant_channel_indices"] == [1, 3]
    assert stats["mean_abs_offdiagonal"] == pytest.approx(_numpy_mean_abs_offdiagonal(live))


def test_summary_is_none_when_fewer_than_two_channels_vary():
    weights = np.ones((10, 3))
    weights[:, 0] = np.linspace(0.0, 1.0, 10)
    assert math.isnan(mean_abs_offdiagonal(channel_correlation(weights)))
    assert channel_statistics(weights)["mean_abs_offdiagonal"] is None


# ----- effective rank --------------------------------------------------------------------


def _numpy_effective_rank(weights):
    """exp(entropy) of the singular values, from the eigenvalues of the scatter matrix."""
    centred = weights - weights.mean(axis=0)
    eigenvalues = np.linalg.eigvalsh(centred.T @ centred)
    s = np.sqrt(eigenvalues[eigenvalues > 1e-9 * eigenvalues.max()])
    p = s / s.sum()
    return math.exp(-(p * np.log(p)).sum())


def test_effective_rank_of_rank_one_and_isotropic_data():
    rng = np.random.default_rng(4)
    rank_one = 0.5 + np.outer(rng.normal(size=200), rng.normal(size=8))  # offset: centred away
    assert effective_rank(rank_one) == pytest.approx(1.0, abs=1e-6)
    isotropic = rng.normal(size=(4000, 8))
    # Singular values lie within sqrt(N) +- sqrt(C): nearly equal, so exp(H) is close to C.
    assert 0.95 * 8 < effective_rank(isotropic) <= 8.0 + 1e-9
    assert effective_rank(np.full((6, 4), 0.3)) == 0.0


def test_effective_rank_matches_an_eigenvalue_computation():
    rng = np.random.default_rng(5)
    weights = rng.normal(size=(60, 3)) @ rng.normal(size=(3, 10))  # rank 3 of 10
    value = effective_rank(weights)
    assert value == pytest.approx(_numpy_effective_rank(weights), rel=1e-6)
    assert 1.0 < value < 3.0 + 1e-9


# ----- distribution, classes, top-activating ---------------------------------------------


def test_gate_distribution_on_constructed_values():
    values = np.array([[0.0, 0.05], [0.1, 0.3], [0.5, 0.9], [0.95, 1.0]])
    share = gate_distribution(values, low=0.1, high=0.9, bins=2)
    assert share["near_zero"] == pytest.approx(3 / 8)  # 0, 0.05, 0.1
    assert share["near_one"] == pytest.approx(3 / 8)  # 0.9, 0.95, 1.0
    assert share["between"] == pytest.approx(2 / 8)
    assert share["edges"] == pytest.approx([0.0, 0.5, 1.0])
    assert share["counts"] == [4, 4]  # [0, 0.5) and [0.5, 1]
    wide = gate_distribution(np.array([[-1.0, 2.0], [0.5, 0.5]]), bins=3)
    assert wide["edges"][0] == -1.0 and wide["edges"][-1] == 2.0 and sum(wide["counts"]) == 4


def test_class_mean_gates_match_a_loop():
    rng = np.random.default_rng(6)
    weights = rng.uniform(size=(25, 4))
    labels = rng.integers(0, 3, size=25)
    labels[:3] = [0, 1, 2]  # every class present
    expected = np.stack([weights[labels == c].mean(axis=0) for c in range(3)])
    np.testing.assert_allclose(class_mean_gates(weights, labels), expected)
    padded = class_mean_gates(weights, labels.astype(np.float32), num_classes=5)
    assert padded.shape == (5, 4) and np.isnan(padded[3:]).all()
    np.testing.assert_allclose(padded[:3], expected)


def test_top_activating_on_constructed_weights():
    weights = np.array(
        [
            [0.1, 0.5, 0.2],
            [0.9, 0.5, 0.2],
            [0.3, 0.7, 0.2],
            [0.9, 0.1, 0.8],
        ]
    )
    top = top_activating(weights, k=3)
    # Highest first; ties go to the lower image index.
    assert top.tolist() == [[1, 3, 2], [2, 0, 1], [3, 0, 1]]
    for c in range(3):
        by_hand = sorted(range(4), key=lambda n, c=c: (-weights[n, c], n))[:3]
        assert top[c].tolist() == by_hand


def test_distinct_images_counts_each_image_once():
    assert distinct_images(np.array([[0, 1], [1, 0], [0, 1]])) == 2
    assert distinct_images(np.array([[0, 1], [2, 3], [4, 5]])) == 6
    assert distinct_images(top_activating(np.eye(4), k=1)) == 4  # one image per channel


def test_channel_statistics_is_json_ready():
    rng = np.random.default_rng(7)
    weights = rng.uniform(size=(12, 6)).astype(np.float32)
    labels = np.arange(12) % 3
    stats = channel_statistics(weights, labels)
    json.dumps(stats, allow_nan=False)
    assert (stats["images"], stats["channels"], stats["top_k"]) == (12, 6, 5)
    assert stats["mean_abs_offdiagonal"] == pytest.approx(
        _numpy_mean_abs_offdiagonal(weights.astype(np.float64)), abs=1e-6
    )
    expected = np.stack([weights[labels == c].mean(axis=0) for c in range(3)])
    np.testing.assert_allclose(stats["class_mean_gates"], expected, rtol=1e-6)


def test_model_statistics_lists_every_layer():
    rng = np.random.default_rng(8)
    se = rng.uniform(size=(20, 8))
    labels = np.arange(20) % 2
    gates = {
        "se_1": {"channel": se},
        "sa_1": {"spatial": rng.uniform(size=(20, 4, 4))},
        "odd": {"channel": rng.uniform(size=(20, 2, 8))},
    }
    rows = model_statistics(gates, labels)
    assert [row["layer"] for row in rows] == ["se_1", "sa_1", "odd"]
    first = rows[0]
    assert first["skipped"] is None and (first["channels"], first["images"]) == (8, 20)
    assert first["mean_abs_offdiagonal"] == pytest.approx(_numpy_mean_abs_offdiagonal(se))
    assert first["near_zero"] == pytest.approx(np.mean(se <= 0.1))
    class_means = np.stack([se[labels == c].mean(axis=0) for c in range(2)])
    assert first["class_spread"] == pytest.approx(class_means.std(axis=0).mean())
    assert "no 'channel' gate" in rows[1]["skipped"] and rows[1]["effective_rank"] is None
    assert "shape" in rows[2]["skipped"]
    table = statistics_table(rows)
    assert table.splitlines()[0].startswith("| layer") and "no 'channel' gate" in table
    one_image = model_statistics({"x": {"channel": np.ones((1, 3))}})
    assert "1 image" in one_image[0]["skipped"]


# ----- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: channel_correlation(np.ones(5)), ValueError, "2-D"),
        (lambda: effective_rank(np.ones((2, 3, 4))), ValueError, "2-D"),
        (lambda: channel_correlation(np.ones((1, 4))), ValueError, "at least 2"),
        (lambda: channel_statistics(np.ones((1, 4))), ValueError, "at least 2"),
        (lambda: channel_correlation(np.zeros((0, 4))), ValueError, "image"),
        (lambda: channel_correlation(np.zeros((4, 0))), ValueError, "no channels"),
        (lambda: channel_correlation(np.array([[1.0, np.nan], [0, 1]])), ValueError, "NaN"),
        (lambda: channel_correlation(np.array([["a", "b"]])), TypeError, "numeric"),
        (lambda: mean_abs_offdiagonal(np.ones((3, 4))), ValueError, "square"),
        (lambda: class_mean_gates(np.ones((4, 2)), [0, 1, 0]), ValueError, "3 entries"),
        (lambda: class_mean_gates(np.ones((4, 2)), np.eye(4)), ValueError, "argmax"),
        (lambda: class_mean_gates(np.ones((2, 2)), [0, -1]), ValueError, "non-negative"),
        (lambda: class_mean_gates(np.ones((2, 2)), [0.5, 1]), ValueError, "integer"),
        (lambda: class_mean_gates(np.ones((2, 2)), [0, 3], num_classes=2), ValueError, "3"),
        (lambda: channel_statistics(np.ones((4, 2)), [0, 1]), ValueError, "one label per"),
        (lambda: top_activating(np.ones((3, 2)), k=4), ValueError, "k=4"),
        (lambda: top_activating(np.ones((3, 2)), k=0), ValueError, "positive"),
        (lambda: distinct_images(np.ones((2, 2))), ValueError, "integer"),
        (lambda: gate_distribution(np.ones((2, 2)), low=0.9, high=0.1), ValueError, "below"),
        (lambda: gate_distribution(np.ones((2, 2)), bins=0), ValueError, "bins"),
        (lambda: model_statistics([np.ones((2, 2))]), TypeError, "collect_gates"),
        (
            lambda: model_statistics({"a": {"channel": np.ones((4, 2))}}, labels=[0, 1]),
            ValueError,
            "one label per",
        ),
        (
            lambda: model_statistics({"a": {"channel": np.full((4, 2), np.inf)}}),
            ValueError,
            r"a\['channel'\]",
        ),
    ],
)
def test_bad_input_is_refused(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ----- figures ---------------------------------------------------------------------------


def _read_png(path):
    from matplotlib.image import imread

    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    image = imread(path)
    assert image.ndim == 3 and np.ptp(image) > 0  # something is drawn
    return image.shape[:2]  # (height, width)


def test_correlation_heatmaps_write_pngs_one_panel_per_label(tmp_path):
    rng = np.random.default_rng(9)
    weights = rng.uniform(size=(30, 6))
    weights[:, 2] = 1.0  # a NaN row and column to draw
    corr = channel_correlation(weights)
    one = correlation_heatmaps({"SE": corr}, tmp_path / "one.png")
    two = correlation_heatmaps(
        {"SE": corr, "SRM": channel_correlation(rng.uniform(size=(30, 9)))},
        tmp_path / "new" / "two.png",
        title="block 1",
    )
    assert one == str(tmp_path / "one.png") and two == str(tmp_path / "new" / "two.png")
    (h1, w1), (h2, w2) = _read_png(one), _read_png(two)
    assert w2 > 1.5 * w1 and h2 >= h1


def test_gate_histograms_write_pngs(tmp_path):
    rng = np.random.default_rng(10)
    one = gate_histograms({"SE": rng.uniform(size=(20, 4))}, tmp_path / "h1.png")
    two = gate_histograms(
        {"SE": rng.uniform(size=(20, 4)), "SRM": rng.beta(0.3, 0.3, size=(10, 8))},
        tmp_path / "h2.png",
    )
    (h1, w1), (h2, w2) = _read_png(one), _read_png(two)
    assert w2 > 1.5 * w1 and h1 == h2


def test_top_activating_grid_rows_are_channels_columns_are_ranks(tmp_path):
    rng = np.random.default_rng(11)
    weights = rng.uniform(size=(12, 6))
    rgb = rng.integers(0, 256, size=(12, 8, 8, 3), dtype=np.uint8)
    grey = rng.normal(size=(12, 8, 8))
    grey[0] = 3.0  # a flat image displays too
    tall = top_activating_grid(rgb, top_activating(weights, k=3), tmp_path / "tall.png")
    short = top_activating_grid(
        grey, top_activating(weights, k=3), tmp_path / "short.png", channels=[0, 5]
    )
    wide = top_activating_grid(
        grey[..., None], top_activating(weights, k=6), tmp_path / "wide.png", max_channels=2
    )
    (ht, wt), (hs, ws), (hw, ww) = _read_png(tall), _read_png(short), _read_png(wide)
    assert ht > 2 * hs and wt == ws  # 6 rows against 2, 3 columns each
    assert ww > 1.5 * ws and hw == hs  # 6 columns against 3, 2 rows each


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p: correlation_heatmaps({"a": np.eye(3)}, p / "x.jpg"), r"\.png"),
        (lambda p: correlation_heatmaps({}, p / "x.png"), "non-empty"),
        (lambda p: correlation_heatmaps({"a": np.ones((2, 3))}, p / "x.png"), "square"),
        (lambda p: gate_histograms({"a": np.ones(4)}, p / "x.png"), "2-D"),
        (lambda p: gate_histograms({"a": np.ones((2, 2))}, p / "x.png", bins=0), "bins"),
        (lambda p: top_activating_grid(np.ones((4, 8)), [[0]], p / "x.png"), "shape"),
        (lambda p: top_activating_grid(np.ones((4, 8, 8, 2)), [[0]], p / "x.png"), "shape"),
        (lambda p: top_activating_grid(np.ones((4, 8, 8)), [[4]], p / "x.png"), "4 images"),
        (lambda p: top_activating_grid(np.ones((4, 8, 8)), [[0]], p / "x.png", [1]), r"\[0, 1\)"),
        (
            lambda p: top_activating_grid(np.ones((4, 8, 8)), [[0], [1]], p / "x.png", [0, 1], 1),
            "max_channels",
        ),
    ],
)
def test_figures_refuse_bad_input_before_writing(tmp_path, call, match):
    with pytest.raises(ValueError, match=match):
        call(tmp_path)
    assert not list(tmp_path.iterdir())
