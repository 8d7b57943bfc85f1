"""How far TFLite outputs lie from Keras outputs: errors, top-1 agreement, int8 clipping."""

import dataclasses

import numpy as np

# How many of the worst images a `ComparisonMetrics` names.
WORST_IMAGES = 3


@dataclasses.dataclass
class ComparisonMetrics:
    """TFLite against Keras on one set of images.

    Attributes:
        samples: number of images.
        max_abs_error: max |TFLite - Keras| over all outputs (finite values).
        mean_abs_error: mean |TFLite - Keras|.
        relative_error: `max_abs_error / max |Keras output|`.
        top1_agreement: fraction of images with the same top-1 class (`None` when no output
            has shape `(N, classes)`).
        nonfinite_outputs: NaN or infinite values in the TFLite outputs.
        median_image_relative_error: each image's own relative error (its max abs error
            over the same `max |Keras output|`), median over the images. `relative_error`
            is the largest of them: one outlier image sets it, and these say whether it
            is one image or the whole set.
        p99_image_relative_error: the same, 99th percentile (linear interpolation).
        worst_images: the images with the largest relative errors, worst first, at most
            `WORST_IMAGES`, as `{"index", "relative_error", "top1_agrees", "saturated"}`
            (`top1_agrees` is `None` when the model has no class output, `saturated` when
            no output is quantised).
        saturated_images: images with a Keras output outside the range its quantised
            TFLite output can represent (the range the calibration images set), where the
            int8 output clips; `None` when no output is quantised.
        clipped_relative_error: the relative error against the Keras outputs clipped to
            those ranges: what is left when the clipping is taken out (`None` when no
            output is quantised). Far below `relative_error`, the largest errors are the
            clipping's: calibrate on more images, or on images like the saturated ones.
            This, not `relative_error`, is what the relative-error limit applies to when an
            output is quantised (`checked_relative_error`).
    """

    samples: int
    max_abs_error: float
    mean_abs_error: float
    relative_error: float
    top1_agreement: float | None
    nonfinite_outputs: int
    median_image_relative_error: float | None = None
    p99_image_relative_error: float | None = None
    worst_images: list = dataclasses.field(default_factory=list)
    saturated_images: int | None = None
    clipped_relative_error: float | None = None

    @property
    def checked_relative_error(self):
        """The relative error the verification's limit applies to: `clipped_relative_error`
        when an output is quantised (a reference value beyond the int8 output's range is
        clipped to it before comparing, so one image whose logit clips does not fail an
        export whose top-1 agrees), else `relative_error`."""
        if self.clipped_relative_error is None:
            return self.relative_error
        return self.clipped_relative_error

    def error_figures(self):
        """`rel err X` for people, with the clipped error and count when an output is
        quantised: `rel err 0.051 with the int8 output's clipping taken out (0.23 raw, 1
        image clipped)`."""
        if self.clipped_relative_error is None:
            return f"rel err {self.relative_error:.3g}"
        if not self.saturated_images:
            return f"rel err {self.relative_error:.3g} (no image beyond the int8 output's range)"
        plural = "" if self.saturated_images == 1 else "s"
        return (
            f"rel err {self.clipped_relative_error:.3g} with the int8 output's clipping taken "
            f"out ({self.relative_error:.3g} raw, {self.saturated_images} image{plural} clipped)"
        )

    def image_error_summary(self):
        """`relative error per image: median ..., 99th percentile ...; worst #i ...`, or ""
        when no image has a finite error."""
        if self.median_image_relative_error is None:
            return ""

        def notes(w):
            said = []
            if w["top1_agrees"] is not None:
                said.append("same top-1" if w["top1_agrees"] else "other top-1")
            if w.get("saturated"):
                said.append("saturated")
            return f" ({', '.join(said)})" if said else ""

        worst = ", ".join(
            f"#{w['index']} {w['relative_error']:.3g}{notes(w)}" for w in self.worst_images
        )
        saturation = (
            f"; {self.saturated_images} of {self.samples} images beyond the quantised output's "
            f"range (relative error {self.clipped_relative_error:.3g} within it)"
            if self.saturated_images
            else ""
        )
        return (
            f"relative error per image: median {self.median_image_relative_error:.3g}, "
            f"99th percentile {self.p99_image_relative_error:.3g}; worst {worst}{saturation}"
        )


def quantized_range(details):
    """`(low, high)`: the values a quantised tensor (`litert.io_details`) holds without
    clipping, those that round to one of its dtype's codes (half a step beyond the extreme
    codes); `None` for a float tensor."""
    dtype = np.dtype(details["dtype"])
    if not np.issubdtype(dtype, np.integer) or not details["scale"] > 0:
        return None
    info = np.iinfo(dtype)
    zero_point, scale = details["zero_point"], details["scale"]
    return (
        float((info.min - zero_point - 0.5) * scale),
        float((info.max - zero_point + 0.5) * scale),
    )


def _top1_agrees(got, want):
    """Per image, whether the first `(N, classes)` output's argmax agrees; `None` if none."""
    for g, w in zip(got, want, strict=True):
        if g.ndim == 2 and g.shape[1] >= 2:
            return np.argmax(g, 1) == np.argmax(w, 1)
    return None


def _saturation(got, want, diffs, output_ranges, scale):
    """`(per-image saturated mask, saturated count, clipped relative error)`, or
    `(None, None, None)` when no output is quantised."""
    if not any(r is not None for r in output_ranges):
        return None, None, None
    beyond = np.zeros(len(want[0]), bool)
    clipped = []
    for g, w, d, limits in zip(got, want, diffs, output_ranges, strict=True):
        if limits is None:
            clipped.append(d)
            continue
        beyond |= ((w < limits[0]) | (w > limits[1])).reshape(len(w), -1).any(1)
        clipped.append(np.abs(g.astype("float64") - np.clip(w.astype("float64"), *limits)))
    finite_clipped = np.concatenate([c[np.isfinite(c)] for c in clipped])
    clipped_relative = float(finite_clipped.max()) / scale if finite_clipped.size else float("nan")
    return beyond, int(beyond.sum()), clipped_relative


def compare_outputs(got, want, output_ranges=None):
    """`ComparisonMetrics` of TFLite outputs `got` against Keras outputs `want` (array lists).

    `output_ranges`: for each output, the `(low, high)` its quantised TFLite tensor can
    represent, or `None` for a float output (`quantized_range`); gives the saturation
    figures. Defaults to `None`: no output quantised.
    """
    nonfinite = sum(int(np.size(g) - np.count_nonzero(np.isfinite(g))) for g in got)
    diffs = [
        np.abs(g.astype("float64") - w.astype("float64")) for g, w in zip(got, want, strict=True)
    ]
    finite = np.concatenate([d[np.isfinite(d)] for d in diffs])
    max_abs = float(finite.max()) if finite.size else float("nan")
    scale = max(max(float(np.max(np.abs(w))) for w in want), 1e-12)
    agrees = _top1_agrees(got, want)
    # Each image's largest finite error over all outputs (-inf for an image with none).
    per_image = (
        np.max([np.where(np.isfinite(d), d, -np.inf).reshape(len(d), -1).max(1) for d in diffs], 0)
        / scale
    )
    scored = np.flatnonzero(np.isfinite(per_image))
    worst = scored[np.argsort(-per_image[scored], kind="stable")][:WORST_IMAGES]
    beyond, saturated, clipped_relative = _saturation(
        got, want, diffs, output_ranges or [None] * len(want), scale
    )
    return ComparisonMetrics(
        samples=int(len(want[0])),
        max_abs_error=max_abs,
        mean_abs_error=float(finite.mean()) if finite.size else float("nan"),
        relative_error=max_abs / scale,
        top1_agreement=None if agrees is None else float(np.mean(agrees)),
        nonfinite_outputs=nonfinite,
        median_image_relative_error=float(np.median(per_image[scored])) if scored.size else None,
        p99_image_relative_error=(
            float(np.percentile(per_image[scored], 99)) if scored.size else None
        ),
        worst_images=[
            {
                "index": int(i),
                "relative_error": float(per_image[i]),
                "top1_agrees": None if agrees is None else bool(agrees[i]),
                "saturated": None if beyond is None else bool(beyond[i]),
            }
            for i in worst
        ],
        saturated_images=saturated,
        clipped_relative_error=clipped_relative,
    )
