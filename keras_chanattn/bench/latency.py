"""Latency of `.tflite` files in the LiteRT interpreter with XNNPACK, interleaved across models."""

import dataclasses
import time

import numpy as np

from keras_chanattn.export.litert import make_interpreter, quantize
from keras_chanattn.images import ImageSpec, synthetic_images


@dataclasses.dataclass
class LatencyStats:
    """Timings of one `.tflite` in milliseconds, and whether XNNPACK ran it."""

    runs: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    xnnpack: bool

    @classmethod
    def from_seconds(cls, seconds, xnnpack):
        ms = np.asarray(seconds, "float64") * 1e3
        return cls(
            runs=int(ms.size),
            median_ms=float(np.median(ms)),
            p90_ms=float(np.percentile(ms, 90)),
            mean_ms=float(ms.mean()),
            min_ms=float(ms.min()),
            xnnpack=bool(xnnpack),
        )


def read_tflite(tflite):
    """The flatbuffer bytes of `tflite`: a path or bytes."""
    if isinstance(tflite, (bytes, bytearray)):
        return bytes(tflite)
    with open(tflite, "rb") as f:
        return f.read()


def check_timing(runs, warmup, num_threads):
    """Raises `ValueError` unless `runs >= 1`, `warmup >= 0` and `num_threads >= 1`."""
    if runs < 1 or warmup < 0 or num_threads < 1:
        raise ValueError(
            f"Need runs >= 1, warmup >= 0 and num_threads >= 1; got runs={runs}, "
            f"warmup={warmup}, num_threads={num_threads}."
        )


def _prepared(key, tflite, image, num_threads, seed):
    """An interpreter of `tflite` with its input set to `image`, and whether XNNPACK took it."""
    interpreter, xnnpack_error = make_interpreter(read_tflite(tflite), num_threads)
    details = interpreter.get_input_details()
    if len(details) != 1:
        raise ValueError(f"{key}: expected one image input, found {len(details)} inputs.")
    shape = tuple(int(d) for d in details[0]["shape"][1:])
    if image is None:
        image = synthetic_images(ImageSpec(*shape, "float32"), 1, seed=seed)[0]
    if tuple(np.shape(image)) != shape:
        raise ValueError(f"{key}: takes images of shape {shape}, got {np.shape(image)}.")
    x = np.asarray(image, "float32")[None]
    interpreter.set_tensor(details[0]["index"], quantize(x, details[0]))
    return interpreter, xnnpack_error is None


def _timed_rounds(interpreters, warmup, runs, seed, on_round):
    """`{key: [seconds of each timed invoke()]}`, every round in a freshly shuffled order."""
    rng = np.random.default_rng(seed)
    keys = list(interpreters)
    times = {key: [] for key in keys}
    for round_index in range(warmup + runs):
        for i in rng.permutation(len(keys)):
            key = keys[i]
            start = time.perf_counter()
            interpreters[key].invoke()
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                times[key].append(elapsed)
        if on_round is not None:
            on_round()
    return times


def measure_latency(
    tflite_files,
    image=None,
    *,
    num_threads=2,
    warmup=5,
    runs=30,
    seed=0,
    on_round=None,
):
    """Times several `.tflite` models interleaved, in the LiteRT interpreter with XNNPACK.

    Every model gets its own interpreter (default XNNPACK delegate, `num_threads`), all
    alive at once. After `warmup` untimed rounds, each of `runs` rounds invokes every model
    once, in an order shuffled anew per round, and times `invoke()` alone; slow drift of the
    machine thus spreads over all models alike instead of favouring whichever ran first.

    Args:
        tflite_files: `{key: path or flatbuffer bytes}`.
        image: one input image `(H, W, C)` in the models' float range, quantised for int8
            inputs. Defaults to `None`: a smooth random image in [0, 1].
        num_threads: interpreter threads. Defaults to `2`.
        warmup: untimed rounds first. Defaults to `5`.
        runs: timed rounds. Defaults to `30`.
        seed: seed of the shuffling. Defaults to `0`.
        on_round: called with no argument after every round (for progress). Defaults to
            `None`.

    Returns:
        `{key: LatencyStats}`.
    """
    check_timing(runs, warmup, num_threads)
    interpreters, xnnpack = {}, {}
    for key, tflite in tflite_files.items():
        interpreters[key], xnnpack[key] = _prepared(key, tflite, image, num_threads, seed)
    times = _timed_rounds(interpreters, warmup, runs, seed, on_round)
    return {key: LatencyStats.from_seconds(times[key], xnnpack[key]) for key in interpreters}
