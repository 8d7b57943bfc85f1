"""The prune job: load a trained model, prune it, fine-tune, export, verify and compare.

`prune_job` is what `chanattn prune MODEL.keras --ratio 0.5 ...` runs. It writes into
`out_dir`: `pruned.keras`, each exported format of the unpruned and the pruned model
(verified, reports beside them) and `report.json` / `report.md` with the parameters,
FLOPs, accuracy before and after the fine-tune, full-int8 sizes and LiteRT latencies of
both models measured in one interleaved run.
"""

import dataclasses
import json
import pathlib
import types

import numpy as np

from keras_chanattn.export.files import check_output_path, replacing_folder
from keras_chanattn.images import images_and_labels
from keras_chanattn.layers.common import check_positive_int
from keras_chanattn.prune import criteria
from keras_chanattn.prune.plan import check_prune_ratio, plan_pruning
from keras_chanattn.prune.sites import check_functional

CRITERIA = ("attention", "l1", "random")
FORMATS = ("float32", "int8")
MARKER = "report.json"  # written last: marks a finished prune job's folder


def _check_job(model_path, ratio, criterion, fine_tune_epochs, out_dir, overwrite):
    """Every argument checked before any work; returns the output folder as a Path."""
    check_prune_ratio(ratio)
    if criterion not in CRITERIA:
        raise ValueError(f"`criterion` must be one of {list(CRITERIA)}, got {criterion!r}.")
    check_positive_int("fine_tune_epochs", fine_tune_epochs, minimum=0)
    if not pathlib.Path(model_path).is_file():
        raise FileNotFoundError(f"No model file at {str(model_path)!r}; pass a .keras file.")
    out = pathlib.Path(out_dir)
    if out.is_file():
        raise ValueError(f"`out_dir` {str(out)!r} is a file; pass a folder.")
    check_output_path(out, overwrite, "directory", marker=MARKER)
    return out


def _load_checked(model_path, ratio, min_channels, divisor, image_size):
    """The loaded model and its input size; refuses unprunable models before any data."""
    from keras_chanattn.model_files import load_model_file

    model = load_model_file(model_path)
    check_functional(model)
    head = model.layers[-1].get_config().get("activation")
    if head not in (None, "linear"):
        raise ValueError(
            f"The model ends with a {head!r} activation; the fine-tune expects logits (as "
            "`chanattn run`'s models give). Save the model with classifier_activation=None."
        )
    # Every check of the pruning itself (sites, sliceable blocks, constraints), on dummy
    # scores, before the data is loaded.
    plan_pruning(model, criteria.random_scores(model), ratio, min_channels, divisor)
    height, width = model.input.shape[1:3]
    size = image_size or (height if height == width and height is not None else None)
    if size is None:
        raise ValueError(
            f"The model takes inputs of shape {tuple(model.input.shape)}; pass image_size "
            "(--image-size) for the data."
        )
    return model, int(size)


def _accuracy(model, images, labels):
    logits = model.predict(images, batch_size=128, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def _prune(model, criterion, ratio, images, seed, **kwargs):
    if criterion == "attention":
        return criteria.prune_by_attention(model, images, ratio, **kwargs)
    if criterion == "l1":
        return criteria.prune_by_l1(model, ratio, **kwargs)
    return criteria.prune_by_random(model, ratio, seed=seed, **kwargs)


def _fine_tune(model, data, epochs, seed, verbose):
    from keras_chanattn.pipeline import default_train_config
    from keras_chanattn.train import fit_classifier

    if epochs == 0:
        return model
    config = dataclasses.replace(default_train_config(), epochs=epochs, seed=seed)
    tuned, _ = fit_classifier(lambda: model, data, config, verbose=verbose)
    return tuned


def _export_and_time(models, out, calibration, held_out, seed, num_threads, latency_runs):
    """Exports each model (verified); times their full-int8 files interleaved."""
    from keras_chanattn.bench.latency import measure_latency
    from keras_chanattn.pipeline import export_variant

    settings = types.SimpleNamespace(
        formats=FORMATS, num_threads=num_threads, train=types.SimpleNamespace(seed=seed)
    )
    reports = {
        key: export_variant(model, out / key, calibration, held_out, settings)
        for key, model in models.items()
    }
    latency = measure_latency(
        {key: out / key / "model_int8.tflite" for key in models},
        num_threads=num_threads,
        runs=latency_runs,
        seed=seed,
    )
    return reports, latency


def _complexity(model):
    from keras_chanattn.models.params import count_flops, count_params

    flops = count_flops(model) if None not in model.input.shape[1:] else None
    return {"params": count_params(model)[0], "flops": flops}


def prune_job(
    model_path,
    ratio,
    data="digits",
    criterion="attention",
    fine_tune_epochs=2,
    out_dir="export/prune",
    image_size=None,
    overwrite=False,
    min_channels=8,
    divisor=8,
    score_images=256,
    seed=0,
    num_threads=2,
    latency_runs=30,
    verbose=1,
    log=print,
):
    """Prunes a trained `.keras` classifier, fine-tunes, exports, verifies and reports.

    Args:
        model_path: the trained model (logits out), e.g. a `chanattn run` model.
        ratio: fraction of each prunable block's channels to remove, in [0, 1).
        data: the data source (`keras_chanattn.data.load_data`). Defaults to `"digits"`.
        criterion: `"attention"` (mean gates over `score_images` training images), `"l1"`
            or `"random"`. Defaults to `"attention"`.
        fine_tune_epochs: epochs of the main job's recipe after pruning. Defaults to `2`.
        out_dir: output folder. Defaults to `"export/prune"`.
        image_size: the data's size where the model's input leaves it open.
        overwrite: replace an earlier prune job's output in `out_dir` (a folder holding
            other files is refused even then); a failed or interrupted job puts the earlier
            output back. Defaults to `False`.
        min_channels, divisor: kept-count constraints (see `plan_pruning`).
        score_images: training images that score the channels. Defaults to `256`.
        seed: data split, random criterion, fine-tune and latency order. Defaults to `0`.
        num_threads, latency_runs: LiteRT settings of verification and timing.
        verbose: `0` for silence, `1` for progress lines and fit bars.
        log: where progress lines go. Defaults to `print`.

    Returns:
        The report as a dict (also written to `out_dir/report.json` and `report.md`).
    """
    from keras_chanattn.data import load_data

    out = _check_job(model_path, ratio, criterion, fine_tune_epochs, out_dir, overwrite)
    model, size = _load_checked(model_path, ratio, min_channels, divisor, image_size)
    dataset = load_data(data, size, seed=seed)
    job = types.SimpleNamespace(
        model_path=str(model_path), ratio=ratio, data=data, size=size, criterion=criterion,
        fine_tune_epochs=fine_tune_epochs, min_channels=min_channels, divisor=divisor,
        score_images=score_images, seed=seed, num_threads=num_threads,
        latency_runs=latency_runs, verbose=verbose,
    )  # fmt: skip
    say = log if verbose else (lambda *_: None)
    # A failure puts an earlier job's output back, or leaves no partial one.
    with replacing_folder(out, MARKER, keep_unfinished=False):
        return _prune_and_report(model, dataset, out, job, say)


def _prune_and_report(model, dataset, out, job, say):
    """Prunes, fine-tunes, exports and times into `out`; writes the report (MARKER last)."""
    train_x, _ = images_and_labels(dataset.train, max(job.score_images, 200))
    held_out = images_and_labels(dataset.validation)
    say(f"pruning {model.name} ({job.criterion}, ratio {job.ratio}) ...")
    pruned = _prune(
        model, job.criterion, job.ratio, train_x[: job.score_images], job.seed,
        min_channels=job.min_channels, divisor=job.divisor,
    )  # fmt: skip
    report = {
        "model": job.model_path, "criterion": job.criterion, "ratio": job.ratio,
        "data": job.data, "image_size": job.size, "fine_tune_epochs": job.fine_tune_epochs,
        "unpruned": {**_complexity(model), "accuracy": _accuracy(model, *held_out)},
        "pruned": _complexity(pruned),
    }  # fmt: skip
    report["pruned"]["accuracy_before_fine_tune"] = _accuracy(pruned, *held_out)
    say(f"fine-tuning {job.fine_tune_epochs} epoch(s) ...")
    pruned = _fine_tune(pruned, dataset, job.fine_tune_epochs, job.seed, job.verbose)
    report["pruned"]["accuracy"] = _accuracy(pruned, *held_out)
    pruned.save(out / "pruned.keras")
    say("exporting and timing ...")
    reports, latency = _export_and_time(
        {"unpruned": model, "pruned": pruned}, out, train_x[:200], held_out, job.seed,
        job.num_threads, job.latency_runs,
    )  # fmt: skip
    for key, formats in reports.items():
        report[key]["int8_bytes"] = formats["int8"].size_bytes
        report[key]["int8_latency_ms"] = latency[key].median_ms
        report[key]["failures"] = [f"{f}: {x}" for f, r in formats.items() for x in r.failures]
    report["latency_ratio"] = latency["pruned"].median_ms / latency["unpruned"].median_ms
    (out / "report.md").write_text(_markdown(report))
    (out / MARKER).write_text(json.dumps(report, indent=2))
    say(_markdown(report))
    return report


def _markdown(report):
    rows = [("parameters", "params"), ("FLOPs", "flops"), ("accuracy", "accuracy")]
    rows += [("int8 bytes", "int8_bytes"), ("int8 latency (ms)", "int8_latency_ms")]
    lines = [
        f"# Pruned {report['model']}: {report['criterion']}, ratio {report['ratio']}",
        "",
        "| | unpruned | pruned |",
        "|---|---|---|",
    ]
    for label, key in rows:
        a, b = report["unpruned"].get(key), report["pruned"].get(key)
        lines.append(f"| {label} | {_fmt(a)} | {_fmt(b)} |")
    lines.append(
        f"| accuracy before fine-tune | | {_fmt(report['pruned']['accuracy_before_fine_tune'])} |"
    )
    lines += ["", f"Latency ratio pruned / unpruned (full int8): {report['latency_ratio']:.2f}"]
    failures = report["unpruned"]["failures"] + report["pruned"]["failures"]
    lines.append("Verification: " + ("all passed" if not failures else "; ".join(failures)))
    return "\n".join(lines) + "\n"


def _fmt(value):
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else f"{value:,}"
