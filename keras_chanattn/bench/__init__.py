"""Side-by-side measurement of Keras image models as phones run them: cost and fidelity.

`bench(models, out_dir, ...)` exports every model to each TFLite format (`export_tflite`:
inference forms, builtin ops only, verified against the Keras model), then measures, in one
run and one table:

- parameters and FLOPs (`keras_chanattn.models.params`: multiply-adds at batch 1);
- the `.tflite` size per format;
- the latency per format in the LiteRT interpreter with its default XNNPACK delegate and
  `num_threads` threads, at batch 1 (`measure_latency`): `warmup` rounds, then `runs` timed
  rounds where each round invokes every model once in a freshly shuffled order, so that
  drift (thermal state, other processes, frequency scaling) hits every model alike; median,
  p90, mean and min, and the ratio of the medians to one or more named baseline models.
  The formats are timed one after the other, as ratios are taken within a format;
- the XNNPACK partitions, the ops left outside XNNPACK and the float ops kept in full int8,
  and the verification's fidelity figures (relative and max abs error, top-1 agreement
  with the Keras model on held-out images and out-of-distribution probes);
- top-1 accuracy of the Keras model and of each `.tflite`, when the held-out data carry
  labels.

It writes, atomically and without replacing anything unless asked: `bench.txt` (the
table), `bench.csv` and `bench.json` (one row per model and format), `latency_overhead.png`
and `cost_vs_fidelity.png`, and the `.tflite` files with their verification reports under
`tflite/`. `backbone_models` builds a preset plain and with each block: the models of a
comparison in one call.

Modules: `run` (settings and the phases in order), `phases`, `latency`, `heldout`,
`models`, `results` (rows, table, files), `plots`.
"""

from keras_chanattn.bench.latency import LatencyStats, measure_latency
from keras_chanattn.bench.models import backbone_models, load_model_files, preset_input_shape
from keras_chanattn.bench.results import (
    COLUMNS,
    REPORT_FILES,
    TFLITE_DIR,
    BenchResult,
    ratio_column,
    results_table,
    write_reports,
)
from keras_chanattn.bench.run import BenchConfig, bench
from keras_chanattn.models.presets import PLAIN

__all__ = [
    "COLUMNS",
    "PLAIN",
    "REPORT_FILES",
    "TFLITE_DIR",
    "BenchConfig",
    "BenchResult",
    "LatencyStats",
    "backbone_models",
    "bench",
    "load_model_files",
    "measure_latency",
    "preset_input_shape",
    "ratio_column",
    "results_table",
    "write_reports",
]
