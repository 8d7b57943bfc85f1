"""`analyze_models`: what saved models' attention learned, written as a folder of figures,
tables and a Markdown report comparing the models (`chanattn analyze`).

Per model: the channel-weight statistics of every block (CSV and JSON), the top-activating
images of one block and Grad-CAM overlays of a few images; across the models: the
correlation heatmaps and gate histograms of each stage side by side. A stage is a run of
consecutive blocks whose channel gate has the same width (a ResNet's stages, say); its
last block stands for it, and the n-th stage of each model is compared with the n-th of
the others. Everything is checked before any image is run, and the folder is written in a
staging folder beside it that replaces it only once complete.
"""

import csv
import dataclasses
import difflib
import json
import pathlib
import re

import numpy as np

from keras_chanattn.analysis.figures import (
    correlation_heatmaps,
    gate_histograms,
    top_activating_grid,
)
from keras_chanattn.analysis.gates import attention_layers, collect_gates
from keras_chanattn.analysis.gradcam import check_classifier, grad_cam, resolve_layer
from keras_chanattn.analysis.overlay import overlay
from keras_chanattn.analysis.stats import (
    STATISTICS_COLUMNS,
    channel_correlation,
    distinct_images,
    model_statistics,
    top_activating,
)
from keras_chanattn.export.files import atomic_output, check_output_path
from keras_chanattn.tables import Column, format_table

REPORT = "report.md"
MARKER = "analysis.json"  # what marks a folder as an earlier analysis (written with it)
NO_BLOCK = "no attention block"
STATISTICS_FIELDS = [c.key for c in STATISTICS_COLUMNS] + ["distinct_top_images", "stage"]
ROW_COLUMNS = (*STATISTICS_COLUMNS[:-1], Column("distinct_top_images", "distinct top"),
               STATISTICS_COLUMNS[-1])  # fmt: skip


@dataclasses.dataclass
class _Subject:
    """One model to analyse and what was decided for it before any work."""

    label: str
    model: object
    source: str
    spec: object  # its ImageSpec
    channel_blocks: dict  # {block path: channels of its "channel" gate}, in call order
    collect: bool = False  # whether its gates are collected (it holds blocks, gates not False)
    block: str | None = None  # the block whose top-activating images are drawn
    cam_layer: str | None = None  # Grad-CAM's layer (None: no Grad-CAM)

    @property
    def stage_of(self):
        """`{block path: "stage<n>"}`: a stage is a run of blocks of one channel-gate width."""
        found, previous, count = {}, None, 0
        for path, channels in self.channel_blocks.items():
            count += channels != previous
            found[path], previous = f"stage{count}", channels
        return found

    @property
    def stages(self):
        """`{"stage1": its last block's path, ...}`."""
        return {stage: path for path, stage in self.stage_of.items()}


def analyze_models(
    models,
    data="digits",
    out_dir="analysis",
    *,
    labels=None,
    image_size=None,
    samples=256,
    top_k=5,
    grid_channels=16,
    grad_cam_images=8,
    layer=None,
    block=None,
    gates=None,
    overwrite=False,
    seed=0,
    batch_size=32,
    log=print,
):
    """Analyses the attention of `models` on `data` and writes the figures and a report.

    Writes into `out_dir`: `report.md` (a table per model: each block's mean |off-diagonal|
    channel correlation, effective rank, fractions near 0 and 1, distinct top images;
    links to the figures), `analysis.json` (the settings and everything the report says),
    per model `<label>/statistics.csv` and `.json` (`model_statistics` rows plus
    `distinct_top_images` and `stage`), `<label>/top_activating.png` and `<label>/grad_cam.png`, and
    per stage `correlation_<stage>.png` and `gates_<stage>.png` (the models side by side).

    Args:
        models: `.keras` file paths or `keras.Model`s (mixed is fine).
        data: a `load_data` source (`"digits"`, `"tfds:<name>"`, an image folder), whose
            validation split is resized to each model's input; or `(images, labels)`
            arrays already of the models' input shape. Defaults to `"digits"`.
        out_dir: the folder to write. Defaults to `"analysis"`.
        labels: one name per model for the tables and sub-folders. Defaults to the models'
            names (the file's folder and stem where two names are alike).
        image_size: `(height, width)` for models of free input size. Defaults to `None`.
        samples: images the gates are collected on (the first of the split). Defaults to 256.
        top_k: images per channel in the top-activating grid. Defaults to 5.
        grid_channels: channels (rows) drawn in that grid, the first ones. Defaults to 16.
        grad_cam_images: images drawn with their Grad-CAM map; 0 skips Grad-CAM. Defaults to 8.
        layer: Grad-CAM's layer name in every model. Defaults to the last 4-D feature map.
        block: the block (path as `attention_layers` names it) of the top-activating grid.
            Defaults to each model's last block with a `"channel"` gate.
        gates: `None` analyses the gates of the models that hold blocks (the others are
            reported as having none); `True` requires at least one model with blocks;
            `False` skips the gates (Grad-CAM only). Defaults to `None`.
        overwrite: replace an earlier analysis in `out_dir`. Defaults to `False`.
        seed: seed of the data source's split. Defaults to 0.
        batch_size: images per forward pass. Defaults to 32.
        log: where one line per model goes; `None` for silence. Defaults to `print`.

    Returns:
        The `analysis.json` content as a dict; its `"report"` is the report's path.

    Raises:
        FileNotFoundError: a model file does not exist.
        FileExistsError: `out_dir` holds files and `overwrite` is false, or holds files
            that are not an earlier analysis.
        ValueError: an unreadable model file; no model with blocks while `gates=True` or
            `block` asks for them; an unknown `block` or `layer`; a model Grad-CAM cannot
            explain (not a one-image-input classifier) while `grad_cam_images > 0`; bad
            numbers. All before any image is run or anything written.
    """
    _check_numbers(samples=samples, top_k=top_k, grid_channels=grid_channels, batch_size=batch_size)
    _check_numbers(grad_cam_images=grad_cam_images, minimum=0)
    out = _check_out_dir(out_dir, overwrite)
    subjects = _subjects(models, labels, image_size, gates, block, layer, grad_cam_images)
    images = _images(data, subjects, samples, seed)
    settings = {"data": "arrays" if isinstance(data, tuple) else str(data), "samples": samples,
                "top_k": top_k, "grid_channels": grid_channels, "grad_cam_images": grad_cam_images,
                "seed": seed}  # fmt: skip
    # Written beside `out` and renamed over it once complete: a failure leaves `out` as it was.
    with atomic_output(out, overwrite, "directory", marker=MARKER) as staging:
        staging = pathlib.Path(staging)
        staging.mkdir()
        summary = _write_analysis(subjects, images, staging, settings, batch_size, log)
    summary["report"] = str(out / REPORT)
    return summary


def _write_analysis(subjects, images, out, settings, batch_size, log):
    """Every model's files, the stage figures, `report.md` and `analysis.json`, into `out`."""
    results = [_analyze(s, *images[s.spec.shape], out, settings, batch_size, log) for s in subjects]
    figures = _stage_figures(subjects, results, out)
    summary = {**settings, "models": [r["summary"] for r in results], "figures": figures}
    (out / REPORT).write_text(_report_text(summary))
    (out / MARKER).write_text(json.dumps(summary, indent=2))
    return summary


def _check_numbers(minimum=1, **values):
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    if values.get("samples", 2) < 2:
        raise ValueError("`samples` must be at least 2: a correlation needs two images.")


def _check_out_dir(out_dir, overwrite):
    """`out_dir` as a Path, refused when it holds files (without `overwrite`), or files that
    are not an earlier analysis (even with it): `export.files.check_output_path`'s rules."""
    out = pathlib.Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a folder; choose another output folder.")
    check_output_path(out, overwrite, "directory", marker=MARKER)
    return out


def _load(models):
    """`[(model, source)]`: every path checked to exist before any is loaded."""
    import keras

    from keras_chanattn.model_files import load_model_file

    if isinstance(models, (str, pathlib.Path, keras.Model)):
        models = [models]
    models = list(models)
    if not models:
        raise ValueError("No model given: pass one or more .keras files or keras.Models.")
    for item in models:
        if not isinstance(item, keras.Model) and not pathlib.Path(item).exists():
            raise FileNotFoundError(
                f"`{item}` does not exist: give the path of a .keras model file."
            )
    return [
        (item, f"<{item.name}>") if isinstance(item, keras.Model)
        else (load_model_file(item), str(item))
        for item in models
    ]  # fmt: skip


def _labels(loaded, labels):
    """One distinct label per model, safe as a folder name."""
    if labels is not None:
        labels = [str(label) for label in labels]
        if len(labels) != len(loaded) or len(set(labels)) != len(labels):
            raise ValueError(f"labels must be {len(loaded)} distinct names, got {labels}.")
    else:
        names = [model.name for model, _ in loaded]
        labels = list(names)
        for i, (_, source) in enumerate(loaded):
            if names.count(names[i]) > 1 and not source.startswith("<"):
                path = pathlib.Path(source)
                labels[i] = f"{path.parent.name}_{path.stem}" if path.parent.name else path.stem
    safe = [re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "model" for label in labels]
    for i, label in enumerate(safe):
        count = safe[:i].count(label)
        if count:
            safe[i] = f"{label}-{count + 1}"
    return safe


def _subjects(models, labels, image_size, gates, block, layer, grad_cam_images):
    """Every model loaded and checked: what is analysed in each, decided before any work."""
    from keras_chanattn.images import image_input_spec

    if gates is False and block is not None:
        raise ValueError(f"block={block!r} asks for the gate analysis that gates=False skips.")
    loaded = _load(models)
    subjects = []
    for label, (model, source) in zip(_labels(loaded, labels), loaded, strict=True):
        collect = gates is not False and bool(attention_layers(model))
        cam_layer = None
        try:
            spec = image_input_spec(model, image_size)
            if grad_cam_images:
                check_classifier(model)
                cam_layer = resolve_layer(model, layer)[0].name
            blocks = _channel_blocks(model, spec) if collect else {}
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None
        subject = _Subject(label, model, source, spec, blocks, collect, cam_layer=cam_layer)
        subject.block = _chosen_block(subject, block)
        subjects.append(subject)
    if (gates or block is not None) and not any(attention_layers(s.model) for s in subjects):
        raise ValueError(
            f"No model given holds an attention block, so there are no gates to analyse: "
            f"{', '.join(s.source for s in subjects)}. Pass models with blocks, or drop "
            "--gates/--block (Grad-CAM alone runs on any classifier)."
        )
    return subjects


def _channel_blocks(model, spec):
    """`{block path: channels}` of the blocks with a `"channel"` gate, found by one probe
    image (zeros) through the model."""
    probe = np.zeros((1, *spec.shape), dtype="float32")
    return {
        path: int(found["channel"].shape[-1])
        for path, found in collect_gates(model, probe, batch_size=1).items()
        if "channel" in found and found["channel"].ndim == 2
    }


def _chosen_block(subject, block):
    """The block of the top-activating grid: `block`, checked, or the last channel block."""
    if block is None:
        return next(reversed(subject.channel_blocks), None)
    if not subject.collect:
        return None  # reported as a model without blocks
    if block not in subject.channel_blocks:
        paths = list(attention_layers(subject.model))
        if block in paths:
            raise ValueError(
                f"{subject.source}: block {block!r} has no 'channel' gate (N, C) to rank "
                f"images by; blocks with one: {list(subject.channel_blocks) or 'none'}."
            )
        close = difflib.get_close_matches(block, paths, n=3, cutoff=0.5)
        raise ValueError(
            f"{subject.source}: no attention block {block!r}; "
            + (f"close matches: {close}." if close else f"its blocks: {paths}.")
        )
    return block


def _images(data, subjects, samples, seed):
    """`{(h, w, c): (images, class labels)}`: the first `samples` validation images at each
    input shape the models take."""
    from keras_chanattn.images import as_images

    found = {}
    for subject in subjects:
        shape = subject.spec.shape
        if shape in found:
            continue
        if isinstance(data, tuple) and len(data) == 2:
            images = as_images(data[0], subject.spec, "images", limit=samples)
            classes = np.asarray(data[1])[: len(images)].astype("int64")
        else:
            from keras_chanattn.data import load_data

            split = load_data(data, shape[:2], shape[2], seed=seed).validation.take(samples)
            pairs = list(split.as_numpy_iterator())
            images = np.stack([x for x, _ in pairs]) if pairs else np.zeros((0, *shape))
            classes = np.array([int(y) for _, y in pairs], dtype="int64")
        if len(images) < 2 or len(classes) != len(images):
            raise ValueError(
                f"The data gives {len(images)} images with {len(classes)} labels; the analysis "
                "needs at least 2 images, one label each."
            )
        found[shape] = (images, classes)
    return found


def _analyze(subject, images, classes, out, settings, batch_size, log):
    """One model's statistics and figures, written under `out/<label>/`."""
    top_k, count = settings["top_k"], settings["grad_cam_images"]
    folder = out / subject.label
    folder.mkdir()
    summary = {"label": subject.label, "source": subject.source, "name": subject.model.name,
               "input_shape": list(subject.spec.shape), "blocks": [], "statistics": [],
               "stages": subject.stages, "top_activating": None, "grad_cam": None,
               "gates": NO_BLOCK}  # fmt: skip
    weights = {}
    if not subject.collect and attention_layers(subject.model):
        summary["gates"] = "not analysed (gates=False)"
    if subject.collect:
        collected = collect_gates(subject.model, images, batch_size)
        weights = {path: collected[path]["channel"] for path in subject.channel_blocks}
        rows = _statistics_rows(collected, weights, classes, top_k)
        for row in rows:
            row["stage"] = subject.stage_of.get(row["layer"])
        _write_rows(folder, rows)
        summary.update(blocks=list(collected), statistics=rows, gates=None)
    if subject.block is not None:
        indices = top_activating(weights[subject.block], min(top_k, len(images)))
        path = folder / "top_activating.png"
        top_activating_grid(images, indices, path, max_channels=settings["grid_channels"])
        summary["top_activating"] = {"block": subject.block, "k": int(indices.shape[1]),
                                     "distinct_images": distinct_images(indices),
                                     "figure": f"{subject.label}/top_activating.png"}  # fmt: skip
    if subject.cam_layer is not None:
        summary["grad_cam"] = _grad_cam(subject, images[:count], classes[:count], folder,
                                        batch_size)  # fmt: skip
    if log is not None:
        log(_log_line(summary))
    return {"summary": summary, "weights": weights}


def _statistics_rows(collected, weights, classes, top_k):
    """`model_statistics` rows, each with the distinct count of its top-activating images."""
    rows = model_statistics(collected, classes)
    for row in rows:
        array = weights.get(row["layer"])
        row["distinct_top_images"] = (
            None if array is None or row["skipped"]
            else distinct_images(top_activating(array, min(top_k, len(array))))
        )  # fmt: skip
    return rows


def _write_rows(folder, rows):
    (folder / "statistics.json").write_text(json.dumps(rows, indent=2))
    with open(folder / "statistics.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=STATISTICS_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _grad_cam(subject, images, classes, folder, batch_size):
    """Grad-CAM of the predicted classes over `images`, drawn as `grad_cam.png`."""
    result = grad_cam(subject.model, images, subject.cam_layer, batch_size=batch_size)
    titles = [f"y={y} p={p}" for y, p in zip(classes, result.class_index, strict=True)]
    overlay(images, result.upsampled, folder / "grad_cam.png", titles=titles)
    return {"layer": result.layer, "score": result.score, "images": len(images),
            "correct": int(np.sum(result.class_index == classes)),
            "figure": f"{subject.label}/grad_cam.png"}  # fmt: skip


def _log_line(summary):
    parts = [f"{summary['label']}: "]
    if summary["gates"] == NO_BLOCK:
        parts.append(NO_BLOCK)
    else:
        parts.append(f"{len(summary['blocks'])} blocks")
    if summary["top_activating"]:
        top = summary["top_activating"]
        parts.append(f", {top['distinct_images']} distinct top-{top['k']} images")
    if summary["grad_cam"]:
        parts.append(f", Grad-CAM at {summary['grad_cam']['layer']}")
    return "".join(parts)


def _stage_figures(subjects, results, out):
    """Per stage, the models' correlation heatmaps and gate histograms side by side."""
    figures = {}
    keys = dict.fromkeys(key for subject in subjects for key in subject.stages)
    for key in keys:
        panels = {
            subject.label: result["weights"][subject.stages[key]]
            for subject, result in zip(subjects, results, strict=True)
            if key in subject.stages
        }
        title = f"Channel-weight correlation, {key} (last block of each model's stage)"
        correlations = {label: channel_correlation(w) for label, w in panels.items()}
        correlation_heatmaps(correlations, out / f"correlation_{key}.png", title=title)
        gate_histograms(panels, out / f"gates_{key}.png")
        figures[key] = {"correlation": f"correlation_{key}.png", "gates": f"gates_{key}.png",
                        "blocks": {s.label: s.stages[key] for s in subjects
                                   if key in s.stages}}  # fmt: skip
    return figures


def _report_text(summary):
    """`report.md`: the settings, a comparison table, one table per model, the figures."""
    lines = ["# What the attention learned", "",
             f"Data `{summary['data']}` (validation split), {summary['samples']} images at "
             f"most; top-{summary['top_k']} images per channel; Grad-CAM on "
             f"{summary['grad_cam_images']} images per model.", "",
             "## Models", "", _comparison_table(summary["models"]), ""]  # fmt: skip
    for key, figure in summary["figures"].items():
        blocks = ", ".join(f"{label}: `{path}`" for label, path in figure["blocks"].items())
        lines += [f"## Stage {key.removeprefix('stage')} ({blocks})", "",
                  f"![correlation {key}]({figure['correlation']})",
                  f"![gates {key}]({figure['gates']})", ""]  # fmt: skip
    for model in summary["models"]:
        lines += [f"## {model['label']}", "", f"From `{model['source']}` (model "
                  f"`{model['name']}`, input {tuple(model['input_shape'])}).", ""]  # fmt: skip
        if model["gates"]:
            lines += [f"Gates: {model['gates']}.", ""]
        else:
            lines += [format_table(model["statistics"], ROW_COLUMNS), ""]
        if model["top_activating"]:
            top = model["top_activating"]
            lines += [f"Top-{top['k']} images per channel of `{top['block']}`: "
                      f"{top['distinct_images']} distinct.", "",
                      f"![top-activating images]({top['figure']})", ""]  # fmt: skip
        if model["grad_cam"]:
            cam = model["grad_cam"]
            lines += [f"Grad-CAM at `{cam['layer']}` ({cam['score']}, predicted classes; "
                      f"{cam['correct']} of {cam['images']} correct):", "",
                      f"![Grad-CAM]({cam['figure']})", ""]  # fmt: skip
    return "\n".join(lines)


def _mean(rows, key):
    values = [row[key] for row in rows if row.get(key) is not None]
    return float(np.mean(values)) if values else None


COMPARISON_COLUMNS = (
    Column("label", "model", align="left"),
    Column("blocks", "blocks"),
    Column("mean_abs_offdiagonal", "mean abs corr", "{:.3f}"),
    Column("effective_rank", "eff. rank", "{:.1f}"),
    Column("near_zero", "near 0", "{:.1%}"),
    Column("near_one", "near 1", "{:.1%}"),
    Column("distinct", "distinct top"),
    Column("cam", "Grad-CAM layer", align="left"),
)


def _comparison_table(models):
    """One row per model: means over its blocks, the chosen block's distinct images."""
    rows = [
        {"label": m["label"], "blocks": len(m["blocks"]) or NO_BLOCK,
         **{k: _mean(m["statistics"], k)
            for k in ("mean_abs_offdiagonal", "effective_rank", "near_zero", "near_one")},
         "distinct": (m["top_activating"] or {}).get("distinct_images"),
         "cam": (m["grad_cam"] or {}).get("layer")}
        for m in models
    ]  # fmt: skip
    return format_table(rows, COMPARISON_COLUMNS) + (
        "\n\nMeans over each model's blocks with a channel gate; distinct top: the "
        "top-activating grid's block."
    )
