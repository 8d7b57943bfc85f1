"""The main job's report: the results table, `report.md`, `results.csv` and `results.json`."""

import csv
import json

from keras_chanattn.tables import Column, format_table

COLUMNS = (
    Column("variant", "block", align="left"),
    Column("params", "params", "{:,}"),
    Column("val_accuracy", "val acc", "{:.4f}"),
    Column("seconds_per_epoch", "s/epoch", "{:.1f}"),
    Column("failures", "verified", lambda failed: "FAILED" if failed else "yes"),
)


def results_table(rows, markdown=True):
    """The training and verification results, one row per variant (present columns only)."""
    columns = [c for c in COLUMNS if rows and c.key in rows[0]]
    return format_table(rows, columns, markdown=markdown)


def failures(rows):
    """`(variant, failure)` for every failed verification check in `rows`."""
    return [(row["variant"], f) for row in rows for f in row.get("failures", [])]


def write_report(run_dir, config, rows, measured, elapsed):
    """Writes `report.md`, `results.json` and `results.csv` into `run_dir`."""
    (run_dir / "results.json").write_text(json.dumps(rows, indent=2))
    with open(run_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    text = [
        f"# keras-chanattn run `{run_dir.name}`",
        "",
        f"Backbone `{config.backbone}` {config.backbone_kwargs}, data `{config.data}` at "
        f"{config.image_size}x{config.image_size}, {config.train.epochs} epochs, wall time "
        f"{elapsed:.0f} s.",
        "",
        "## Training (held-out accuracy) and export verification",
        "",
        results_table(rows),
    ]
    if measured is not None:
        text += _measurement_section(config, measured)
    failed = failures(rows)
    if failed:
        text += ["", "## Verification failures", ""] + [f"- {v}: {f}" for v, f in failed]
    text += ["", "Configuration: `config.json`; per-variant artefacts in the sub-folders."]
    (run_dir / "report.md").write_text("\n".join(text) + "\n")


def _measurement_section(config, measured):
    return [
        "",
        f"## On-device-style measurement (LiteRT + XNNPACK, {config.num_threads} threads, "
        f"{config.latency_runs} interleaved runs)",
        "",
        measured.table(markdown=True),
        "",
        "![latency overhead](bench/latency_overhead.png)",
        "![cost vs fidelity](bench/cost_vs_fidelity.png)",
        "",
        "Machine-readable: `bench/bench.csv`, `bench/bench.json`; per-file verification "
        "reports beside each `.tflite`.",
    ]
