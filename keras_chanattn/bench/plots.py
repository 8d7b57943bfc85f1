"""The bench's two figures: latency overhead per model and format, and cost against fidelity."""

import io

import numpy as np
from matplotlib.figure import Figure

from keras_chanattn.bench.results import ratio_column


def _figure(width, height):
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(figure):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def plot_latency_overhead(result):
    """PNG bytes: latency overhead over the first baseline, in percent, per model and format."""
    baseline = result.baselines[0]
    labels = list(dict.fromkeys(r["model"] for r in result.rows if r["model"] != baseline))
    figure = _figure(max(6.0, 0.35 * len(labels) * len(result.formats) + 2.0), 4.5)
    axes = figure.add_subplot()
    width = 0.8 / len(result.formats)
    for k, fmt in enumerate(result.formats):
        values = []
        for label in labels:
            ratio = result.row(label, fmt)[ratio_column(baseline)]
            values.append(np.nan if ratio is None else 100.0 * (ratio - 1.0))
        positions = np.arange(len(labels)) + (k - (len(result.formats) - 1) / 2) * width
        axes.bar(positions, values, width, label=fmt)
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.set_xticks(np.arange(len(labels)), labels, rotation=30, ha="right")
    axes.set_ylabel(f"latency over {baseline} (%)")
    axes.set_title(
        f"Latency over {baseline}, per model and format\n{result.config['num_threads']} "
        f"thread(s), median of {result.config['runs']} interleaved runs, LiteRT + XNNPACK",
        fontsize=10,
    )
    for container in axes.containers:
        axes.bar_label(container, fmt="%+.0f%%", fontsize=7, padding=2)
    axes.margins(y=0.15)
    if labels:
        axes.legend(title="format", fontsize=8)
    return _png(figure)


def plot_cost_vs_fidelity(result):
    """PNG bytes: accuracy (labels given) or relative error against latency, per format."""
    use_accuracy = bool(result.config.get("accuracy"))
    key = "accuracy" if use_accuracy else "relative_error"
    count = len(result.formats)
    figure = _figure(4.0 * count + 0.5, 4.0)
    for k, fmt in enumerate(result.formats):
        axes = figure.add_subplot(1, count, k + 1)
        rows = [
            r
            for r in result.rows
            if r["format"] == fmt and r["latency_median_ms"] is not None and r[key] is not None
        ]
        x = [r["latency_median_ms"] for r in rows]
        y = [r[key] for r in rows]
        axes.scatter(x, y, color=f"C{k}")
        for r, xi, yi in zip(rows, x, y, strict=True):
            axes.annotate(r["model"], (xi, yi), textcoords="offset points", xytext=(3, 3))
        if not use_accuracy and y and min(y) > 0 and max(y) > 10 * min(y):
            axes.set_yscale("log")
        axes.set_xlabel("median latency (ms)")
        axes.set_ylabel(
            "top-1 accuracy of the .tflite" if use_accuracy else "relative error vs Keras"
        )
        axes.set_title(fmt)
        axes.grid(True, alpha=0.3)
    return _png(figure)
