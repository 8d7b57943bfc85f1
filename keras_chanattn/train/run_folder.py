"""A training run's folder: resuming an interrupted run, refusing or staging over a finished one.

A finished run is marked by `summary.json`. An overwrite trains in `out/.overwrite/` and its
files replace the old run's only once it has finished, so a failed overwrite loses nothing.
In multi-worker training only the chief writes `out`; each other worker writes the same
files to its own `out/.<task>/` (e.g. `.worker-1`), resumes from there, and deletes it
once the run has finished.
"""

import dataclasses
import json
import os
import pathlib
import shutil

BACKUP, SUMMARY, STAGING = "backup", "summary.json", ".overwrite"
RUN_FILES = ("config.json", "log.csv", "last.keras", SUMMARY)  # besides BACKUP


@dataclasses.dataclass
class RunFolder:
    """Where a run writes: `work` is `out` itself, or `out/STAGING` for an overwrite;
    `scratch` marks a non-chief worker's private folder, deleted when the run finishes."""

    out: pathlib.Path
    work: pathlib.Path
    resume: bool
    scratch: bool = False

    @property
    def staged(self):
        return self.work != self.out


def finished_run(out):
    """The summary of the finished run in `out` (`{}` if unreadable), or `None` if none.

    A finished run is marked by `summary.json`; a `last.keras` without a backup is one
    too (runs written before the marker existed: the backup is deleted when fit ends).
    A staged overwrite that finished but was not swapped in yet counts as finished.
    """
    for marker in (out / STAGING / SUMMARY, out / SUMMARY):
        if marker.is_file():
            try:
                return json.loads(marker.read_text())
            except (OSError, ValueError):
                return {}
    if (out / "last.keras").is_file() and not (out / BACKUP).exists():
        import csv

        try:
            with open(out / "log.csv", newline="") as file:
                last = list(csv.DictReader(file))[-1]
            return {"epochs": int(last["epoch"]) + 1, "val_accuracy": float(last["val_accuracy"])}
        except (OSError, ValueError, KeyError, IndexError):
            return {}
    return None


def check_same_config(out, config):
    """Refuses to resume the interrupted run in `out` with a config other than its own."""
    path = out / "config.json"
    if not path.is_file():
        return  # nothing to compare with: resume
    given = json.loads(json.dumps(dataclasses.asdict(config)))
    try:
        saved = json.loads(path.read_text())
    except ValueError:
        saved = {}
    missing = "<missing>"
    differ = [
        f"`{key}` (saved {saved.get(key, missing)!r}, given {given.get(key, missing)!r})"
        for key in sorted(set(saved) | set(given))
        if saved.get(key, missing) != given.get(key, missing)
    ]
    if differ:
        raise ValueError(
            f"`out_dir` {out} holds an interrupted run with another TrainConfig: "
            f"{', '.join(differ)}. Resume it with the same config, pass overwrite=True "
            "(CLI: --overwrite) to start over, or choose another out_dir."
        )


def plan_out_dir(out_dir, config, overwrite):
    """Checks `out_dir` before any work and says where and how the run trains."""
    if out_dir is None:
        return None
    out = pathlib.Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"`out_dir` {out} is a file, not a folder; pass a folder path.")
    finished = finished_run(out)
    if finished is not None and not overwrite:
        known = "epochs" in finished and "val_accuracy" in finished
        what = (
            f"{finished['epochs']} epoch{'s' * (finished['epochs'] != 1)}, validation accuracy "
            f"{finished['val_accuracy']:.4f}"
            if known
            else "no readable summary"
        )
        raise FileExistsError(
            f"`out_dir` {out} holds a finished run ({what}); pass overwrite=True "
            "(CLI: --overwrite) or another out_dir."
        )
    has_run = finished is not None or any((out / n).exists() for n in (*RUN_FILES, BACKUP))
    if overwrite and has_run:
        return RunFolder(out, out / STAGING, resume=False)
    interrupted = (out / BACKUP).is_dir()
    if interrupted:
        check_same_config(out, config)
    return RunFolder(out, out, resume=interrupted)


def private_folder(out, task, config, overwrite):
    """The folder of non-chief worker `task` (e.g. `"worker-1"`) of a run in `out`.

    The worker writes there what the chief writes to `out` (its saves take part in the
    chief's cross-worker reductions) and resumes from its own backup there; `overwrite`,
    or a finished copy left by a crash, starts it afresh.
    """
    private = pathlib.Path(out) / f".{task}"
    if overwrite or finished_run(private) is not None:
        shutil.rmtree(private, ignore_errors=True)
    folder = plan_out_dir(private, config, overwrite=False)
    return RunFolder(folder.out, folder.work, folder.resume, scratch=True)


def swap_in(out):
    """Moves the finished staged run in `out/STAGING` over the old run's files.

    Its `summary.json` moves last: until then the staging folder still says a swap is
    pending, and the next call completes it, so a crash here never loses the new run.
    """
    staging = out / STAGING
    shutil.rmtree(out / BACKUP, ignore_errors=True)  # an interrupted old run's
    for name in RUN_FILES:
        if (staging / name).exists():
            os.replace(staging / name, out / name)
    shutil.rmtree(staging, ignore_errors=True)


def write_json(path, value):
    """Writes `value` as JSON to `path` atomically (a temporary file, then a rename)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=2))
    os.replace(partial, path)
