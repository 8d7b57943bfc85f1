"""The errors export raises besides `ValueError` (bad input) and `FileExistsError`, and the
base of the reports they carry."""

import dataclasses
import json


class CheckReport:
    """Base of the export's report dataclasses: passed when `failures` is empty."""

    @property
    def passed(self):
        return not self.failures

    def to_dict(self):
        return dataclasses.asdict(self) | {"passed": self.passed}

    def to_json(self, indent=2):
        return json.dumps(self.to_dict(), indent=indent)


class ExportVerificationError(RuntimeError):
    """An exported artefact does not compute what the Keras model computes.

    Nothing is written when it is raised.

    Attributes:
        report: the report of the failed check (`VerificationReport` for TFLite,
            `SavedModelReport` for SavedModel), with the figures and the failed checks in
            `report.failures`; `report.to_json()` serialises it.
    """

    def __init__(self, report):
        self.report = report
        what = getattr(report, "quantization", None) or "SavedModel"
        hints = getattr(report, "hints", None) or []
        super().__init__(
            f"Export verification failed ({what}): "
            + "; ".join(report.failures)
            + "."
            + "".join(f" Hint: {hint}." for hint in hints)
        )


class ConversionError(RuntimeError):
    """The TFLite converter rejected the model (for example an op with no TFLite builtin)."""
