"""The bench's results: one row per model and format, the table, and the report files."""

import csv
import dataclasses
import io
import json
import os

from keras_chanattn.export.accelerators import gpu_column
from keras_chanattn.export.files import write_bytes, write_text
from keras_chanattn.tables import Column, format_table

# The files `bench` writes into its output directory (besides `TFLITE_DIR`).
REPORT_FILES = {
    "table": "bench.txt",
    "csv": "bench.csv",
    "json": "bench.json",
    "latency_plot": "latency_overhead.png",
    "fidelity_plot": "cost_vs_fidelity.png",
}
TFLITE_DIR = "tflite"

# The columns of every row, in order; `ratio_vs_<baseline>` columns follow `latency_min_ms`.
COLUMNS = (
    "model",  # the model's label
    "format",  # TFLite format
    "params",  # all parameters (trainable and not)
    "trainable_params",
    "flops",  # multiply-adds of one forward pass at batch 1 (models.params.count_flops)
    "size_bytes",  # the .tflite file's size
    "path",  # the .tflite file
    "threads",  # interpreter threads
    "runs",  # timed runs
    "xnnpack",  # XNNPACK took the model (else LiteRT's own kernels ran it)
    "latency_median_ms",
    "latency_p90_ms",
    "latency_mean_ms",
    "latency_min_ms",
    "partitions",  # XNNPACK delegate partitions
    "undelegated_ops",  # ops outside XNNPACK, as "OP (layer)"
    "cpu_fully_accelerated",  # LiteRT's v2 API: every op on its CPU accelerator
    "gpu",  # GPU delegate: "all", "<n> refused" or "?" (export.accelerators, gpu_rules)
    "gpu_refused_ops",  # the ops the GPU delegate refuses, as "OP (layer): reason"
    "softmax_head",  # None, "kept", or "left to the app" (the file outputs logits)
    "float_ops",  # full int8: float ops kept, as "OP (layer)"
    "widened_ranges",  # full int8: ranges widened for XNNPACK, as "OP (layer)"
    "max_abs_error",  # held-out images, TFLite against Keras
    "relative_error",  # max abs error / max |Keras output|: the worst image's
    "image_relative_error_median",  # each image's own max abs error / max |Keras output|
    "image_relative_error_p99",  # the same, 99th percentile
    "saturated_images",  # full int8: held-out images with an output beyond the int8 range
    "clipped_relative_error",  # full int8: the relative error with that clipping taken out
    "top1_agreement",
    "probe_relative_error",  # out-of-distribution probes
    "probe_top1_agreement",
    "held_out_source",  # where the held-out images came from
    "verified",  # the export passed every verification check
    "failures",  # the failed checks
    "accuracy",  # top-1 accuracy of the .tflite on labelled held-out images
    "keras_accuracy",  # top-1 accuracy of the Keras model on the same images
    "error",  # why the model could not be converted to this format
)


def ratio_column(baseline):
    """The name of the column holding latency ratios against model `baseline`."""
    return f"ratio_vs_{baseline}"


@dataclasses.dataclass
class Measurements:
    """What the bench's phases measured.

    Attributes:
        counts: `{label: {"params", "trainable_params", "flops"}}`.
        reports: `{(label, format): VerificationReport}` of the exported files.
        errors: `{(label, format): why the conversion failed}`.
        latency: `{(label, format): LatencyStats}`.
        accuracy: `{(label, format): top-1 accuracy of the .tflite}`.
        keras_accuracy: `{label: top-1 accuracy of the Keras model}`.
    """

    counts: dict = dataclasses.field(default_factory=dict)
    reports: dict = dataclasses.field(default_factory=dict)
    errors: dict = dataclasses.field(default_factory=dict)
    latency: dict = dataclasses.field(default_factory=dict)
    accuracy: dict = dataclasses.field(default_factory=dict)
    keras_accuracy: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class BenchResult:
    """What `bench` measured.

    Attributes:
        rows: one dict per model and format, with the keys `columns`.
        columns: `COLUMNS` with the `ratio_vs_<baseline>` columns inserted.
        baselines: the models latency ratios are taken against.
        formats: the TFLite formats.
        config: how the run was made (threads, runs, warm-up, seed, sample counts).
        skipped: `{label: reason}` for models left out before the run.
        files: `{kind: path}` of the reports written (see `REPORT_FILES`).
        reports: `{(label, format): VerificationReport}`.
    """

    rows: list
    columns: list
    baselines: list
    formats: list
    config: dict
    skipped: dict = dataclasses.field(default_factory=dict)
    files: dict = dataclasses.field(default_factory=dict)
    reports: dict = dataclasses.field(default_factory=dict, repr=False)

    def row(self, model, fmt):
        """The row of `model` (label) in format `fmt`."""
        for row in self.rows:
            if row["model"] == model and row["format"] == fmt:
                return row
        raise KeyError(f"No row for model {model!r} in format {fmt!r}.")

    def to_dict(self):
        return {
            "config": self.config,
            "baselines": self.baselines,
            "formats": self.formats,
            "columns": self.columns,
            "skipped": self.skipped,
            "rows": self.rows,
        }

    def to_json(self, indent=2):
        return json.dumps(self.to_dict(), indent=indent)

    def table(self, markdown=False):
        """The rows as a text (or Markdown) table, with a legend."""
        text = results_table(self.rows, self.baselines, markdown=markdown)
        notes = [f"skipped {label}: {reason}" for label, reason in self.skipped.items()]
        return "\n".join([text, *notes])

    def to_csv(self):
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow(
                {
                    k: "; ".join(map(str, v)) if isinstance(v, list) else ("" if v is None else v)
                    for k, v in row.items()
                }
            )
        return buffer.getvalue()


# --- rows --------------------------------------------------------------------------------------


def make_rows(labels, formats, baselines, measured, num_threads):
    """`(rows, columns)`: one row per label and format from `measured` (`Measurements`),
    with the latency ratios to each of `baselines` in the same format."""
    columns = list(COLUMNS)
    at = columns.index("latency_min_ms") + 1
    columns[at:at] = [ratio_column(b) for b in baselines]
    rows = []
    for label in labels:
        for fmt in formats:
            key = (label, fmt)
            row = _export_fields(label, fmt, measured.counts[label], measured.reports.get(key))
            row.update(_latency_fields(measured.latency.get(key)), threads=num_threads)
            row.update(
                accuracy=measured.accuracy.get(key),
                keras_accuracy=measured.keras_accuracy.get(label),
                error=measured.errors.get(key),
            )
            rows.append(row)
    medians = {(r["model"], r["format"]): r["latency_median_ms"] for r in rows}
    for row in rows:
        for b in baselines:
            reference, mine = medians[(b, row["format"])], row["latency_median_ms"]
            row[ratio_column(b)] = (
                None if reference is None or mine is None else float(mine / reference)
            )
    return [{c: row.get(c) for c in columns} for row in rows], columns


def _latency_fields(stats):
    if stats is None:
        return {}
    return {
        "runs": stats.runs,
        "xnnpack": stats.xnnpack,
        "latency_median_ms": stats.median_ms,
        "latency_p90_ms": stats.p90_ms,
        "latency_mean_ms": stats.mean_ms,
        "latency_min_ms": stats.min_ms,
    }


def _export_fields(label, fmt, counts, report):
    """The model's counts and the export's figures (verification report) of one row."""
    row = {"model": label, "format": fmt, **counts}
    if report is None:
        return row
    held, probes = report.held_out, report.probes
    row.update(
        size_bytes=int(os.path.getsize(report.path)) if report.path else report.size_bytes,
        path=report.path,
        partitions=report.xnnpack_partitions,
        undelegated_ops=list(report.undelegated_ops),
        cpu_fully_accelerated=report.cpu_fully_accelerated,
        gpu=gpu_column(report.gpu_delegate),
        gpu_refused_ops=[
            f"{r['op']} ({r.get('layer')}): {r['reason']}"
            for r in (report.gpu_delegate or {}).get("refused", [])
        ],
        softmax_head=report.softmax_head,
        float_ops=[f"{f['op']} ({f['layer']})" for f in report.float_ops],
        widened_ranges=[f"{w['op']} ({w['layer']})" for w in report.widened_ranges],
        max_abs_error=held.max_abs_error if held else None,
        relative_error=held.relative_error if held else None,
        image_relative_error_median=held.median_image_relative_error if held else None,
        image_relative_error_p99=held.p99_image_relative_error if held else None,
        saturated_images=held.saturated_images if held else None,
        clipped_relative_error=held.clipped_relative_error if held else None,
        top1_agreement=held.top1_agreement if held else None,
        probe_relative_error=probes.relative_error if probes else None,
        probe_top1_agreement=probes.top1_agreement if probes else None,
        held_out_source=report.held_out_source,
        verified=report.passed,
        failures=list(report.failures),
    )
    return row


# --- the table ---------------------------------------------------------------------------------


def _table_columns(baselines):
    """The figures that decide which block to ship."""
    return [
        Column("model", "model", align="left"),
        Column("format", "format", align="left"),
        Column("params", "params", "{:,}"),
        Column("flops", "MFLOPs", lambda v: f"{v / 1e6:.1f}"),
        Column("size_bytes", "KiB", lambda v: f"{v / 1024:.1f}"),
        Column("latency_median_ms", "median ms", "{:.3f}"),
        Column("latency_p90_ms", "p90 ms", "{:.3f}"),
        *[Column(ratio_column(b), f"x {b}", "{:.3f}") for b in baselines],
        Column("partitions", "parts"),
        Column("undelegated_ops", "outside"),
        Column("gpu", "gpu"),
        Column("float_ops", "float"),
        Column("relative_error", "rel err", "{:.2g}"),
        Column("top1_agreement", "top-1 agr", "{:.3f}"),
        Column("probe_relative_error", "probe err", "{:.2g}"),
        Column("accuracy", "acc", "{:.3f}"),
        Column("verified", "verified"),
    ]


def results_table(rows, baselines, markdown=False):
    """One line per model and format, a legend, and a note per failed export or XNNPACK
    refusal."""
    shown = [{**row, "verified": "no export"} if row.get("error") else row for row in rows]
    ratio_note = ", ".join(f"'x {b}'" for b in baselines)
    out = [
        format_table(shown, _table_columns(baselines), markdown=markdown),
        "",
        f"Latency: LiteRT interpreter with XNNPACK, batch 1, median and p90 of interleaved "
        f"runs; {ratio_note}: median over that model's median in the same format. parts: "
        "XNNPACK partitions; outside: ops left to LiteRT's kernels; gpu: ops the GPU delegate "
        "takes ('all', 'n refused'; by the package's screen of its documented rules where "
        "TensorFlow's Analyzer lacks them; '?' not checked); float: float ops "
        "in full int8. rel err / top-1 agr: .tflite against the Keras model on held-out "
        "images; probe err: on out-of-distribution probes; acc: top-1 accuracy of the .tflite "
        "(labels given).",
    ]
    for row in rows:
        if row.get("error"):
            out.append(f"{row['model']} {row['format']}: {row['error']}")
        elif row.get("xnnpack") is False:
            out.append(
                f"{row['model']} {row['format']}: XNNPACK could not take the model; timed on "
                "LiteRT's own kernels."
            )
    return "\n".join(out)


# --- the files ---------------------------------------------------------------------------------


def write_reports(result, files, overwrite=False):
    """Writes the table, CSV, JSON and plots of `result` to `files` (`{kind: path}`) atomically;
    sets `result.files`."""
    figures = {}
    if any(kind.endswith("_plot") for kind in files):  # matplotlib: only when plots are asked
        from keras_chanattn.bench import plots

        figures = {
            "latency_plot": plots.plot_latency_overhead,
            "fidelity_plot": plots.plot_cost_vs_fidelity,
        }
    texts = {
        "table": lambda: result.table() + "\n",
        "csv": result.to_csv,
        "json": lambda: result.to_json() + "\n",
    }
    written = {}
    for kind, path in files.items():
        if kind in texts:
            written[kind] = write_text(path, texts[kind](), overwrite)
        elif kind in figures:
            written[kind] = write_bytes(path, figures[kind](result), overwrite)
    result.files = written
    return written
