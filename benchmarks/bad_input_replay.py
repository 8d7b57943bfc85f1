"""Replays the bad inputs and faults of issue 26 as a new user meets them, and classifies each.

Every case runs in a subprocess of its own, in a temporary folder of its own: a command line
of the installed `chanattn`, or a few lines of Python (`python -c`) calling the package.
Each gets one outcome:

- `clear`: nonzero exit with one `chanattn: error:` line (or argparse's usage error) that
  names the problem, no traceback; for Python, an exception of the package (a ValueError,
  FileExistsError, FileNotFoundError, FloatingPointError or RuntimeError, or a subclass,
  raised in `keras_chanattn`) whose message names the problem.
- `traceback`: a command whose message names the problem, under a traceback.
- `deep`: any other failure: a crash, an exception from deep inside TensorFlow or Keras,
  a message that does not name the problem.
- `silent`: exit 0 with a wrong result (NaN loss, all-zero output, an empty report).
- `lost`: a file of the user's (present before the case ran) was changed or removed, or a
  model's weights were changed by a failed call.
- `ok`: valid input, right result. `not-run`: the case could not be replayed (its setup
  failed, or the fault did not happen, e.g. the command finished before its interrupt).

The `expected` column is what a fixed library gives (`clear` for a bad input, `ok` for a
valid one); `reported` is what issue 26 saw. Tiny settings throughout (16-pixel digits, one
epoch, an 8-layer CIFAR ResNet) keep the whole replay to minutes on two cores:

    nice -n 10 .venv/bin/python benchmarks/bad_input_replay.py --json replay.json
    .venv/bin/python benchmarks/bad_input_replay.py --only 'export-*' --only sge-int32
"""

import argparse
import collections
import concurrent.futures
import dataclasses
import fnmatch
import hashlib
import json
import os
import pathlib
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
import zlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TRAIN_TINY = ["--image-size", "16", "--epochs", "1", "--backbone-args", '{"depth": 8}']
TRAIN_FIXTURE = [
    "train", "--image-size", "16", "--epochs", "1",
    "--backbone-args", '{"depth": 8, "shortcut": "projection"}',
]  # fmt: skip
ALLOWED_ERRORS = {
    "ValueError",
    "FileExistsError",
    "FileNotFoundError",
    "FloatingPointError",
    "RuntimeError",
}
ERROR_LINE = re.compile(r"^chanattn(?: [\w-]+)?: (?:error|interrupted)\b")
NOISE = re.compile(
    r"^(WARNING: All log messages before absl|[IWE]\d{4} \d|To enable the following"
    r"|\s*$)"
)
# A corrupt model's error must name the file and say what is wrong with it.
CORRUPT_MODEL = (
    r"(?=.*last\.keras).*(corrupt|truncat|damaged|invalid|unreadable|not (a )?(readable|valid))"
)
ANSI = re.compile(r"\x1b\[[0-9;]*m")
OUTCOMES = ("clear", "traceback", "deep", "silent", "lost", "ok", "not-run")


@dataclasses.dataclass
class Case:
    """One replayed input.

    Attributes:
        name: the case's name (`--only` matches it).
        reported: what issue 26 saw (`lost`, `silent`, `deep`, `held`: already right).
        expected: what a fixed library gives: `clear` or `ok`.
        argv: `chanattn` arguments, run in the case's folder; or `None`.
        code: Python run as `python -c` in the case's folder (`np` and `report(**values)`
            are defined); or `None`.
        setup: `setup(folder, fixtures)`, run before the case: the user's files.
        check: `check(result)` returning `(outcome or None, note)`: the case's own verdict
            on its result (`None` leaves it to the general rules), or `None`.
        names: a regular expression the error message must match to name the problem.
        interrupt: `when(folder)`: the command gets Ctrl-C (SIGINT) once it holds; or `None`.
        as_nobody: run as an unprivileged user when this runs as root (permissions).
        guard: report `lost` when a file present before the case changed.
    """

    name: str
    reported: str
    expected: str
    argv: list | None = None
    code: str | None = None
    setup: object = None
    check: object = None
    names: str = ""
    interrupt: object = None
    as_nobody: bool = False
    guard: bool = True


@dataclasses.dataclass
class Result:
    """What one subprocess did: exit status, output, time and the files it changed."""

    rc: int | None = None
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    folder: pathlib.Path | None = None
    timed_out: bool = False
    changed: list = dataclasses.field(default_factory=list)
    values: dict = dataclasses.field(default_factory=dict)
    error: dict | None = None
    setup_error: str = ""


# ---------------------------------------------------------------------------- processes


def chanattn_path():
    """The installed `chanattn` beside this Python, else the one on PATH."""
    beside = pathlib.Path(PYTHON).parent / "chanattn"
    return str(beside) if beside.exists() else (shutil.which("chanattn") or "chanattn")


def launch(command, cwd, timeout=600, interrupt=None, env=None):
    """Runs `command` in `cwd` in a session of its own and returns a `Result` (not yet
    classified). `interrupt` (a `when(folder)` predicate, polled twice a second) sends
    Ctrl-C (SIGINT) to the command's process group once it holds, as a terminal would."""
    start = time.monotonic()
    process = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        errors="replace", start_new_session=True, env=env,
    )  # fmt: skip
    result, sent = Result(), False
    while True:
        try:
            out, err = process.communicate(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            if time.monotonic() - start > timeout:
                os.killpg(process.pid, signal.SIGKILL)
                out, err = process.communicate()
                result.timed_out = True
                break
            if interrupt is not None and not sent and interrupt(pathlib.Path(cwd)):
                os.killpg(process.pid, signal.SIGINT)
                sent = True
    result.rc, result.stdout, result.stderr = process.returncode, out, err
    result.seconds = time.monotonic() - start
    return result


def file_lines(path, count):
    """An interrupt predicate: `path` (in the case's folder) has at least `count` lines
    (e.g. a training log with its first epoch)."""

    def when(folder):
        target = folder / path
        return target.is_file() and len(target.read_text(errors="replace").splitlines()) >= count

    return when


PRELUDE = """\
import json as _json, sys as _sys, traceback as _traceback
import numpy as np
def _hook(kind, error, trace):
    _traceback.print_exception(kind, error, trace)
    frames = _traceback.extract_tb(trace)
    info = {"type": kind.__name__, "module": kind.__module__, "message": str(error),
            "mro": [c.__name__ for c in kind.__mro__],
            "last_frame": frames[-1].filename if frames else ""}
    print("@@error " + _json.dumps(info), file=_sys.stderr)
_sys.excepthook = _hook
def report(**values):
    print("@@result " + _json.dumps(values, default=str), flush=True)
"""


def snapshot(folder):
    """`{relative path: sha256}` of the files under `folder` (the scratch HOME left out)."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.relative_to(folder).parts[0] == "home"
    }


def markers(text, tag):
    """The JSON objects of the `@@<tag> {...}` lines of `text`, in order."""
    found = []
    for line in text.splitlines():
        if line.startswith(f"@@{tag} "):
            try:
                found.append(json.loads(line[len(tag) + 3 :]))
            except json.JSONDecodeError:
                pass
    return found


def case_command(case, folder):
    """`(command, env)` of `case` in `folder`: `chanattn ...` or `python -c ...`."""
    env = dict(os.environ)
    env["PATH"] = f"{pathlib.Path(PYTHON).parent}{os.pathsep}{env.get('PATH', '')}"
    command = [chanattn_path(), *case.argv] if case.argv is not None else None
    if command is None:
        command = [PYTHON, "-c", PRELUDE + case.code]
    if case.as_nobody and os.geteuid() == 0:
        home = folder / "home"
        home.mkdir(exist_ok=True)
        home.chmod(0o777)
        env["HOME"] = str(home)
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    return command, env


def run_case(case, folder, fixtures, timeout):
    """Sets up `case` in `folder`, runs it, and returns its `Result` with the user's files
    that changed, the `report(...)` values and the Python exception it raised."""
    folder.mkdir(parents=True)
    folder.chmod(0o755)  # readable by the unprivileged user of `as_nobody`
    try:
        if case.setup:
            case.setup(folder, fixtures)
    except Exception as error:  # a setup failure is no outcome of the case itself
        return Result(folder=folder, setup_error=f"{type(error).__name__}: {error}")
    before = snapshot(folder)
    command, env = case_command(case, folder)
    result = launch(command, folder, timeout, case.interrupt, env)
    result.folder = folder
    after = snapshot(folder)
    result.changed = [path for path, digest in before.items() if after.get(path) != digest]
    for values in markers(result.stdout, "result"):
        result.values.update(values)
    errors = markers(result.stderr, "error")
    result.error = errors[-1] if errors else None
    return result


# ---------------------------------------------------------------------------- fixtures


FIXTURE_MODELS = """
import sys
import keras
from keras_chanattn.data import load_digits_images
from keras_chanattn.models.presets import build_model

run, out = sys.argv[1], sys.argv[2]
(x_train, _), (x_test, _) = load_digits_images(image_size=16)
np.save(f"{out}/val.npy", x_test[:64])
np.save(f"{out}/cal.npy", x_train[:64])
np.save(f"{out}/one.npy", x_test[0])
kwargs = dict(input_shape=(16, 16, 3), num_classes=10, classifier_activation=None, depth=8)
build_model("resnet20", None, shortcut="zero_pad", name="last", **kwargs).save(
    f"{out}/zero_pad.keras")
trained = keras.saving.load_model(f"{run}/last.keras")
keras.mixed_precision.set_global_policy("mixed_float16")
mixed = build_model("resnet20", None, shortcut="projection", name="mp", **kwargs)
mixed.set_weights(trained.get_weights())
mixed.save(f"{out}/mp.keras")
"""


class Fixtures:
    """Files several cases start from, each made once on first use, under `root`:

    - `run/`: a finished `chanattn train` run (8-layer ResNet, projection shortcuts).
    - `models/`: `val.npy` and `cal.npy` (64 digits each), `one.npy` (one image),
      `zero_pad.keras` (untrained, zero-pad shortcuts: fails verification), `mp.keras` (the
      trained weights under `mixed_float16`).
    - `export/`: `chanattn export` of the run's model, float32 and int8.
    """

    def __init__(self, root):
        self.root = pathlib.Path(root)
        self._lock = threading.RLock()
        self._made = {}

    def path(self, name):
        """The fixture `name`'s folder, made if needed; raises `RuntimeError` if it fails."""
        with self._lock:
            if name not in self._made:
                self._made[name] = None
                getattr(self, f"_make_{name}")(self.root / name)
                self._made[name] = True
            if not self._made[name]:
                raise RuntimeError(f"fixture {name!r} failed earlier")
            return self.root / name

    def _call(self, command, cwd, what):
        result = launch(command, cwd, timeout=600)
        if result.rc != 0:
            tail = " | ".join(meaningful(result.stderr)[-3:])
            raise RuntimeError(f"making {what} failed (exit {result.rc}): {tail}")

    def _make_run(self, folder):
        self._call([chanattn_path(), *TRAIN_FIXTURE, "--out", str(folder)], self.root, "run")

    def _make_models(self, folder):
        run = self.path("run")
        folder.mkdir(parents=True)
        code = PRELUDE + FIXTURE_MODELS
        self._call([PYTHON, "-c", code, str(run), str(folder)], self.root, "models")

    def _make_export(self, folder):
        models, run = self.path("models"), self.path("run")
        command = [
            chanattn_path(), "export", str(run / "last.keras"), "--format", "float32,int8",
            "--calibration", str(models / "cal.npy"), "--validation", str(models / "val.npy"),
            "--out", str(folder), "--no-enforce",
        ]  # fmt: skip
        self._call(command, self.root, "export")


# ---------------------------------------------------------------------------- setups


def put(*pairs):
    """A setup copying fixture files: `(fixture path, destination)` pairs, e.g.
    `("run/last.keras", "last.keras")`; a folder is copied whole."""

    def setup(folder, fixtures):
        for source, destination in pairs:
            name, _, rest = source.partition("/")
            source_path = fixtures.path(name) / rest
            target = folder / destination
            target.parent.mkdir(parents=True, exist_ok=True)
            if source_path.is_dir():
                shutil.copytree(source_path, target)
            else:
                shutil.copy2(source_path, target)

    return setup


def steps(*setups):
    """A setup running `setups` in order."""

    def setup(folder, fixtures):
        for step in setups:
            step(folder, fixtures)

    return setup


def write(path, data):
    """A setup writing `data` (bytes or text) to `path` in the case's folder."""

    def setup(folder, fixtures):
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        (target.write_bytes if isinstance(data, bytes) else target.write_text)(data)

    return setup


def edit(path, change):
    """A setup replacing the file `path` by `change(its bytes)`."""

    def setup(folder, fixtures):
        target = folder / path
        target.write_bytes(change(target.read_bytes()))

    return setup


def truncate(data):
    return data[: len(data) // 2]


def flip_bits(data):
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64]) + data[middle + 64 :]


def mangle_config(data):
    """A `.keras` zip whose `config.json` is cut in half (every other member kept)."""
    import io

    source, target = io.BytesIO(data), io.BytesIO()
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for item in old.infolist():
            content = old.read(item.filename)
            new.writestr(item, truncate(content) if item.filename == "config.json" else content)
    return target.getvalue()


def png(width, height, seed):
    """A valid RGB PNG of random pixels (written here, without TensorFlow)."""
    pixels = random.Random(seed).randbytes(width * height * 3)
    rows = b"".join(b"\0" + pixels[y * width * 3 : (y + 1) * width * 3] for y in range(height))

    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def image_folder(counts, corrupt=None):
    """A setup writing `imgs/<class>/<i>.png` (`counts`: `{class: images}`), and a corrupt
    PNG `imgs/<corrupt>/bad.png` if `corrupt` names a class."""

    def setup(folder, fixtures):
        for label, count in counts.items():
            (folder / "imgs" / label).mkdir(parents=True)
            for i in range(count):
                (folder / "imgs" / label / f"{i}.png").write_bytes(png(20, 20, f"{label}-{i}"))
        if corrupt:
            (folder / "imgs" / corrupt / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")

    return setup


def pickled_npy(path):
    """A setup writing a `.npy` of a pickled object array (which NumPy loads only with
    `allow_pickle=True`, running the pickle)."""

    def setup(folder, fixtures):
        import numpy as np

        array = np.empty((2, 16, 16, 3), dtype=object)
        array[...] = 0.5
        np.save(folder / path, array, allow_pickle=True)

    return setup


def read_only(path):
    """A setup making the folder `path` with mode 500 (no writes, for a user not root)."""

    def setup(folder, fixtures):
        (folder / path).mkdir()
        (folder / path).chmod(0o500)

    return setup


def prior_command(argv, interrupt=None):
    """A setup running `chanattn argv` first (its outcome not checked): the user's earlier
    command, e.g. a run that failed or was interrupted."""

    def setup(folder, fixtures):
        launch([chanattn_path(), *argv], folder, 600, interrupt)

    return setup


# ---------------------------------------------------------------------------- checks


def projection_kept(result):
    """`--backbone-args '{"depth": 8}'` must keep the preset's projection shortcuts."""
    if result.rc != 0:
        return None, ""
    with zipfile.ZipFile(result.folder / "run" / "last.keras") as model:
        config = model.read("config.json").decode()
    if "shortcut_conv" not in config:
        return "silent", "the saved model has no projection shortcut (preset's args replaced)"
    return None, "projection shortcuts kept"


def summary_finite(folder):
    """A check: a run that exits 0 must leave a finite validation loss in `summary.json`."""

    def check(result):
        if result.rc != 0:
            return None, ""
        path = result.folder / folder / "summary.json"
        if not path.exists():
            return "silent", f"exit 0 but no {folder}/summary.json"
        loss = json.loads(path.read_text().replace("NaN", '"nan"')).get("val_loss")
        if not isinstance(loss, float):
            return "silent", f"exit 0 with validation loss {loss}"
        return None, f"validation loss {loss:.4g}, epochs run {_epochs_run(path)}"

    return check


def _epochs_run(path):
    return json.loads(path.read_text().replace("NaN", '"nan"')).get("epochs_run")


def matches_float(result):
    """An integer input must give what the same values as float32 give."""
    values = result.values
    if result.rc != 0 or not values:
        return None, ""
    if values.get("zeros") or not values.get("finite") or values.get("max_rel", 1) > 1e-3:
        return "silent", f"output differs from float32 input's: {values}"
    return None, f"matches float32 input (max relative difference {values['max_rel']:.2g})"


def weights_kept(result):
    """A failed call must leave the model's weights as they were."""
    values = result.values
    if values.get("changed"):
        note = f"{values['changed']} weight arrays changed (NaN in them: {values.get('nan')})"
        return "lost", note
    if result.rc == 0 and values.get("nan"):
        return "silent", "exit 0 with NaN weights"
    return None, ""


def failed_export_kept(result):
    """`export --overwrite` failing verification: exit 1, the earlier artefact kept."""
    if result.changed:
        return "lost", f"changed: {', '.join(result.changed)}"
    if result.rc == 0:
        return "not-run", "verification passed: the failure was not forced"
    if result.rc == 1 and "FAILED" in result.stdout and not result.error:
        kept = "kept the earlier" in result.stdout
        return "clear", "FAILED listed, nothing replaced" + ("; says it kept the earlier" * kept)
    return None, ""


def forced_failure(result):
    """Python `export_artifacts(overwrite=True)` with a failing threshold."""
    if result.rc == 0 and result.values.get("passed"):
        return "not-run", "verification passed: the failure was not forced"
    return None, "report passed=False" if result.rc == 0 else ""


def interrupted(result):
    """Ctrl-C: a command that ended before it was interrupted did not replay the fault."""
    if result.rc == 0:
        return "not-run", f"finished in {result.seconds:.0f} s, before the interrupt"
    return None, ""


def resumed(result):
    """A 3-epoch run interrupted after its first epoch must finish, running fewer epochs."""
    outcome, note = summary_finite("run")(result)
    if outcome or result.rc != 0:
        return outcome, note
    done = _epochs_run(result.folder / "run" / "summary.json")
    if done >= 3:
        return "silent", f"started over: {done} epochs run after an interrupt after epoch 1"
    return None, f"resumed: {done} of 3 epochs run"


def files_exist(*paths):
    """A check: exit 0 must leave `paths` (relative to the case's folder)."""

    def check(result):
        if result.rc != 0:
            return None, ""
        missing = [p for p in paths if not (result.folder / p).exists()]
        if missing:
            return "silent", f"exit 0 without {', '.join(missing)}"
        return None, "wrote " + ", ".join(paths)

    return check


# ---------------------------------------------------------------------------- cases


def dtype_code(block, dtype, kwargs="small_network_kwargs(block, 16)"):
    """Python feeding block `block` integer images (`dtype`) and comparing with float32."""
    return f"""
import keras_chanattn
from keras_chanattn.layers.registry import small_network_kwargs
block = {block!r}
x = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 16)).astype({dtype!r})
layer = keras_chanattn.create_attention(block, **{kwargs})
y = np.asarray(layer(x))
ref = np.asarray(layer(x.astype("float32")))
report(finite=bool(np.isfinite(y).all()), zeros=bool(not y.any()),
       max_rel=float(np.abs(y - ref).max() / (np.abs(ref).max() + 1e-12)))
"""


FIT_CODE = """
from keras_chanattn.data import load_data
from keras_chanattn.models.presets import build_model
from keras_chanattn.train import TrainConfig, fit_classifier
data = load_data("digits", 16)
def build():
    return build_model("resnet20", None, input_shape=(16, 16, 3), num_classes=10,
                       classifier_activation=None, depth=8, shortcut="projection")
config = TrainConfig(epochs=1, learning_rate=float("nan"))
fit_classifier(build, data, config, out_dir={out!r}, overwrite={overwrite}, verbose=0)
"""

RECALIBRATE_CODE = """
import keras
from keras_chanattn.train import recalibrate_batch_norm
model = keras.saving.load_model("last.keras")
images = np.load("val.npy").copy()
images[3, 2, 2, 0] = np.nan
before = [w.numpy().copy() for w in model.weights]
try:
    recalibrate_batch_norm(model, images)
finally:
    after = [w.numpy() for w in model.weights]
    report(changed=sum(not np.array_equal(a, b, equal_nan=True) for a, b in zip(before, after)),
           nan=bool(any(np.isnan(a).any() for a in after if a.dtype.kind == "f")))
"""

FORCED_FAILURE_CODE = """
import dataclasses
import keras
from keras_chanattn.export import checks
from keras_chanattn.export.artifacts import export_artifacts
strict = dataclasses.replace(checks.DEFAULT_THRESHOLDS["float32"], max_relative_error=0.0)
checks.DEFAULT_THRESHOLDS["float32"] = strict  # every float32 export now fails
model = keras.saving.load_model("last.keras")
reports = export_artifacts(model, "out", ["float32"], validation_data=np.load("val.npy"),
                           stem="last", overwrite=True)
report(passed=reports["float32"].passed)
"""

UINT8_MODEL_CODE = """
import keras, keras_chanattn
inputs = keras.Input((8, 8, 16), dtype="uint8")
model = keras.Model(inputs, keras_chanattn.SqueezeExcite()(inputs))
x = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 16)).astype("uint8")
y = model.predict(x, verbose=0)
ref = np.asarray(model.layers[-1](x.astype("float32")))
report(finite=bool(np.isfinite(y).all()), zeros=bool(not y.any()),
       max_rel=float(np.abs(y - ref).max() / (np.abs(ref).max() + 1e-12)))
"""

CHANNELS_FIRST = (
    'import keras, keras_chanattn\nkeras.config.set_image_data_format("channels_first")\n'
)
RUN_CONFIG = json.dumps(
    {
        "backbone_kwargs": {"depth": 8, "shortcut": "projection"},
        "latency_runs": 2,
        "calibration_samples": 32,
    }
)
RUN_TINY = ["run", "--config", "cfg.json", "--blocks", "se", "--no-plain", "--image-size", "16",
            "--epochs", "1", "--out", "runs", "--name", "r", "--quiet"]  # fmt: skip
EXPORT = ["export", "last.keras", "--out", "out"]
MODEL = put(("run/last.keras", "last.keras"), ("models/val.npy", "val.npy"))
MODEL_CAL = steps(MODEL, put(("models/cal.npy", "cal.npy")))
FINISHED_RUN = put(("run", "run"))
INT8_EXPORT = put(("export/last_int8.tflite", "out/last_int8.tflite"),
                  ("export/last_int8.json", "out/last_int8.json"))  # fmt: skip
F32_EXPORT = put(("export/last_float32.tflite", "out/last_float32.tflite"),
                 ("export/last_float32.json", "out/last_float32.json"))  # fmt: skip
IMAGES = image_folder({"a": 6, "b": 6})

LOST = [
    Case("train-rerun-finished", "lost", "clear", argv=[*TRAIN_FIXTURE, "--out", "run"],
         setup=FINISHED_RUN, names=r"finished|--overwrite"),
    Case("train-rerun-finished-lr-nan", "lost", "clear",
         argv=[*TRAIN_FIXTURE, "--learning-rate", "nan", "--out", "run"], setup=FINISHED_RUN,
         names=r"learning.rate"),
    Case("train-overwrite-lr-nan-py", "lost", "clear", setup=FINISHED_RUN,
         code=FIT_CODE.format(out="run", overwrite=True), names=r"learning_rate"),
    Case("export-overwrite-failing", "lost", "clear", setup=steps(MODEL, F32_EXPORT, put(
         ("models/zero_pad.keras", "b/last.keras"))), check=failed_export_kept,
         argv=["export", "b/last.keras", "--format", "float32", "--validation", "val.npy",
               "--out", "out", "--overwrite"]),
    Case("export-overwrite-failing-py", "lost", "ok", setup=steps(MODEL, F32_EXPORT),
         code=FORCED_FAILURE_CODE, check=forced_failure),
    Case("recalibrate-nan-pixel", "lost", "clear", setup=MODEL, code=RECALIBRATE_CODE,
         check=weights_kept, names=r"nan"),
]  # fmt: skip

SILENT = [
    Case("train-backbone-args-merge", "silent", "ok", argv=["train", *TRAIN_TINY, "--out", "run"],
         check=projection_kept),
    Case("train-lr-nan", "silent", "clear", check=summary_finite("run"), names=r"learning.rate",
         argv=["train", *TRAIN_TINY, "--learning-rate", "nan", "--out", "run"]),
    Case("fit-lr-nan-py", "silent", "clear", code=FIT_CODE.format(out="fresh", overwrite=False),
         check=summary_finite("fresh"), names=r"learning_rate"),
    Case("run-no-blocks-no-plain", "silent", "clear", names=r"blocks",
         argv=["run", "--blocks", "", "--no-plain", "--out", "runs", "--name", "r"]),
    Case("sge-int32", "silent", "ok", code=dtype_code("sge", "int32"), check=matches_float),
    Case("export-3d-calibration-py", "silent", "clear", setup=MODEL,
         names=r"image\[None\]|single image|ambiguous", code="""
import keras
from keras_chanattn.export import export_tflite
model = keras.saving.load_model("last.keras")
val = np.load("val.npy")
export_tflite(model, "m.tflite", "int8", representative_data=val[0], validation_data=val)
"""),
    Case("export-3d-calibration", "silent", "clear", setup=steps(MODEL, put(
         ("models/one.npy", "one.npy"))), names=r"one\.npy",
         argv=[*EXPORT, "--format", "int8", "--calibration", "one.npy", "--validation",
               "val.npy"]),
    Case("srm-unbiased-no", "silent", "clear", names=r"unbiased",
         code="import keras_chanattn\nkeras_chanattn.StyleRecalibration(unbiased='no')\n"),
    Case("channels-first-block", "silent", "clear", names=r"channels_first|channels_last|NHWC",
         code=CHANNELS_FIRST + "keras_chanattn.SqueezeExcite()(keras.Input((16, 8, 8)))\n"),
    Case("channels-first-builder", "silent", "clear", names=r"channels_first|channels_last|NHWC",
         code=CHANNELS_FIRST + "keras_chanattn.models.cifar_resnet(8, 'se', "
         "input_shape=(3, 16, 16), num_classes=10)\n"),
]  # fmt: skip

DEEP = [
    Case("export-mixed-float16", "deep", "ok", setup=steps(MODEL_CAL, put(
         ("models/mp.keras", "mp.keras"))),
         argv=["export", "mp.keras", "--format", "savedmodel,float32,int8", "--calibration",
               "cal.npy", "--validation", "val.npy", "--out", "out"],
         check=files_exist("out/mp_saved_model", "out/mp_float32.tflite", "out/mp_int8.tflite")),
    Case("run-formats-int4", "deep", "clear", setup=write("cfg.json", RUN_CONFIG),
         argv=[*RUN_TINY, "--formats", "int4"], names=r"int4"),
    Case("run-after-failed-int4", "deep", "ok", guard=False,
         setup=steps(write("cfg.json", RUN_CONFIG),
                     prior_command([*RUN_TINY, "--formats", "int4"])),
         argv=[*RUN_TINY, "--formats", "int8"], check=files_exist("runs/r/report.md")),
    Case("export-truncated-keras", "deep", "clear", names=CORRUPT_MODEL,
         setup=steps(MODEL, edit("last.keras", truncate)),
         argv=[*EXPORT, "--format", "float32", "--validation", "val.npy"]),
    Case("export-bit-flipped-keras", "deep", "clear", names=CORRUPT_MODEL,
         setup=steps(MODEL, edit("last.keras", flip_bits)),
         argv=[*EXPORT, "--format", "float32", "--validation", "val.npy"]),
    Case("export-mangled-config", "deep", "clear", names=CORRUPT_MODEL,
         setup=steps(MODEL, edit("last.keras", mangle_config)),
         argv=[*EXPORT, "--format", "float32", "--validation", "val.npy"]),
    Case("export-unwritable-out", "deep", "clear", names=r"ro\b|permission", as_nobody=True,
         setup=steps(MODEL, read_only("ro")),
         argv=["export", "last.keras", "--format", "float32", "--validation", "val.npy",
               "--out", "ro/out"]),
    Case("export-batch-size-abc", "deep", "clear", names=r"batch.size",
         argv=[*EXPORT, "--batch-size", "abc"], setup=MODEL),
    Case("export-threads-0", "deep", "clear", names=r"threads",
         argv=[*EXPORT, "--threads", "0"], setup=MODEL),
    Case("train-tfds-made-up", "deep", "clear", names=r"made_up",
         argv=["train", *TRAIN_TINY, "--data", "tfds:made_up", "--out", "run"]),
    Case("train-backbone-args-list", "deep", "clear", names=r"backbone.args",
         argv=["train", "--backbone-args", "[8]", "--out", "run"]),
    Case("export-missing-calibration", "deep", "clear", names=r"nope\.npy", setup=MODEL,
         argv=[*EXPORT, "--format", "int8", "--calibration", "nope.npy", "--validation",
               "val.npy"]),
    Case("export-text-calibration", "deep", "clear", names=r"cal\.npy",
         setup=steps(MODEL, write("cal.npy", "0.1, 0.2, 0.3\n")),
         argv=[*EXPORT, "--format", "int8", "--calibration", "cal.npy", "--validation",
               "val.npy"]),
    Case("export-pickled-calibration", "deep", "clear", names=r"cal\.npy",
         setup=steps(MODEL, pickled_npy("cal.npy")),
         argv=[*EXPORT, "--format", "int8", "--calibration", "cal.npy", "--validation",
               "val.npy"]),
    Case("train-folder-corrupt-png", "deep", "clear", names=r"bad\.png",
         setup=image_folder({"a": 6, "b": 6}, corrupt="b"),
         argv=["train", *TRAIN_TINY, "--data", "imgs", "--out", "run"]),
    Case("train-folder-single-image-class", "deep", "ok", setup=image_folder({"a": 6, "b": 1}),
         argv=["train", *TRAIN_TINY, "--data", "imgs", "--out", "run"],
         check=summary_finite("run")),
    *(Case(f"uint8-{block}", "deep", "ok", code=dtype_code(block, "uint8"), check=matches_float)
      for block in ("se", "srm", "eca", "cbam", "gc")),
    Case("uint8-input-model-predict", "deep", "ok", code=UINT8_MODEL_CODE, check=matches_float),
]  # fmt: skip

HELD = [
    Case("train-unknown-block", "held", "clear", names=r"nope",
         argv=["train", "--attention", "nope", "--out", "run"]),
    Case("train-unknown-backbone", "held", "clear", names=r"vgg",
         argv=["train", "--backbone", "vgg", "--out", "run"]),
    Case("export-existing-no-overwrite", "held", "clear", names=r"exists|--overwrite",
         setup=steps(MODEL, F32_EXPORT),
         argv=[*EXPORT, "--format", "float32", "--validation", "val.npy"]),
    Case("export-missing-file", "held", "clear", names=r"missing\.keras",
         argv=["export", "missing.keras", "--out", "out"]),
    Case("params-resnet7", "held", "clear", names=r"resnet7", argv=["params", "resnet7"]),
    Case("bench-unknown-block", "held", "clear", names=r"nope",
         argv=["bench", "resnet20", "--blocks", "nope", "--data", "none", "--out", "b"]),
    Case("add-attention-unknown-block-py", "held", "clear", names=r"nope", code="""
import keras, keras_chanattn
inputs = keras.Input((8, 8, 16))
x = keras.layers.Conv2D(16, 3, padding="same")(inputs)
model = keras.Model(inputs, keras.layers.Add()([x, inputs]))
keras_chanattn.add_attention(model, "nope")
"""),
    Case("se-reduction-0-py", "held", "clear", names=r"reduction",
         code="import keras, keras_chanattn\n"
         "keras_chanattn.SqueezeExcite(reduction=0)(keras.Input((8, 8, 16)))\n"),
    Case("export-overwrite-ctrl-c", "held", "clear", names=r"interrupted",
         interrupt=file_lines("out/last_float32.json", 1),
         setup=steps(MODEL_CAL, INT8_EXPORT), check=interrupted,
         argv=[*EXPORT, "--format", "float32,float16,dynamic,int8", "--calibration", "cal.npy",
               "--validation", "val.npy", "--overwrite"]),
    Case("train-overwrite-ctrl-c", "held", "clear", names=r"interrupted",
         interrupt=file_lines("run/.overwrite/log.csv", 2),
         setup=FINISHED_RUN, check=interrupted,
         argv=["train", "--image-size", "16", "--epochs", "3", "--backbone-args",
               '{"depth": 8, "shortcut": "projection"}', "--out", "run", "--overwrite"]),
    Case("train-resume-after-ctrl-c", "held", "ok", guard=False, check=resumed,
         setup=prior_command(["train", *TRAIN_TINY[:2], "--epochs", "3", "--out", "run"],
                             file_lines("run/log.csv", 2)),
         argv=["train", *TRAIN_TINY[:2], "--epochs", "3", "--out", "run"]),
]  # fmt: skip

CASES = LOST + SILENT + DEEP + HELD


# ---------------------------------------------------------------------------- verdicts


def meaningful(text):
    """`text`'s lines without TensorFlow's start-up lines, colours and progress redraws."""
    lines = []
    for line in ANSI.sub("", text).splitlines():
        line = line.rsplit("\r", 1)[-1].rstrip()
        if not NOISE.match(line) and not line.startswith("@@"):
            lines.append(line)
    return lines


def _named(case, text):
    return not case.names or re.search(case.names, text, re.IGNORECASE) is not None


def cli_verdict(case, result):
    """`(outcome, note)` of a `chanattn` command that exited nonzero."""
    lines = meaningful(result.stderr)
    errors = [line for line in lines if ERROR_LINE.match(line)]
    if result.rc is not None and result.rc < 0:
        return "deep", f"killed by signal {-result.rc}"
    if "Traceback (most recent call last)" in result.stderr:
        last = lines[-1] if lines else ""
        return ("traceback" if _named(case, last) else "deep"), f"traceback; {last}"
    if errors:
        if _named(case, errors[-1]):
            return "clear", errors[-1]
        return "deep", f"does not name the problem ({case.names})"
    tail = (lines or meaningful(result.stdout) or [""])[-1]
    return "deep", f"exit {result.rc} without an error line; {tail}"


def python_verdict(case, result):
    """`(outcome, note)` of Python that raised (or crashed)."""
    info = result.error
    if not info:
        tail = (meaningful(result.stderr) or [""])[-1]
        return "deep", f"exit {result.rc} without a Python exception; {tail}"
    problems = []
    if not ALLOWED_ERRORS & set(info["mro"]):
        problems.append(f"type {info['type']}")
    if "keras_chanattn" not in info["last_frame"] and not info["module"].startswith(
        "keras_chanattn"
    ):
        problems.append(f"raised in {_short_path(info['last_frame'])}")
    if not _named(case, info["message"]):
        problems.append(f"message does not name the problem ({case.names})")
    if problems:
        return "deep", "; ".join(problems) + f"; {info['type']}: {info['message']}"
    return "clear", f"{info['type']}: {info['message']}"


def _short_path(path):
    parts = pathlib.Path(path).parts
    for anchor in ("site-packages", "keras_chanattn"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) + (anchor == "site-packages") :])
    return path


def classify(case, result):
    """`(outcome, note)`: the case's own check first, then lost files, then the exit."""
    if result.setup_error:
        return "not-run", f"setup failed: {result.setup_error}"
    outcome, note = case.check(result) if case.check else (None, "")
    if outcome:
        return outcome, note
    if case.guard and result.changed:
        return "lost", f"changed: {', '.join(result.changed[:4])}"
    if result.timed_out:
        return "deep", "timed out"
    if result.rc == 0:
        if case.expected == "ok":
            return "ok", note
        tail = (meaningful(result.stdout) or meaningful(result.stderr) or [""])[-1]
        return "silent", note or f"exit 0: the bad input was accepted; {tail}"
    verdict = python_verdict if case.code is not None else cli_verdict
    outcome, why = verdict(case, result)
    return outcome, "; ".join(part for part in (why, note) if part)


def excerpt(result, count=4):
    """The lines a user reads first: the end of stderr (the error), else of stdout."""
    lines = meaningful(result.stderr) or meaningful(result.stdout)
    return [line[:300] for line in lines[-count:]]


# ---------------------------------------------------------------------------- driver


def replay(case, root, fixtures, timeout):
    """Runs one case and returns its row."""
    result = run_case(case, root / "cases" / case.name, fixtures, timeout)
    outcome, note = classify(case, result)
    if case.as_nobody and os.geteuid() == 0:
        note = f"{note} (run as uid 65534: root ignores permissions)".strip()
    return {
        "case": case.name,
        "reported": case.reported,
        "expected": case.expected,
        "outcome": outcome,
        "seconds": round(result.seconds, 1),
        "note": note,
        "rc": result.rc,
        "command": case.argv if case.argv is not None else "python -c",
        "excerpt": excerpt(result),
        "changed": result.changed,
        "stdout_tail": "\n".join(meaningful(result.stdout)[-15:]),
        "stderr_tail": "\n".join(meaningful(result.stderr)[-15:]),
    }


def selected(patterns):
    """The cases matching any of `patterns` (names or globs; all when none)."""
    if not patterns:
        return list(CASES)
    wanted = [p for group in patterns for p in group.split(",") if p]
    cases = [c for c in CASES if any(fnmatch.fnmatchcase(c.name, p) for p in wanted)]
    if not cases:
        raise SystemExit(f"--only {', '.join(wanted)}: no such case; --list shows them")
    return cases


def print_rows(rows, seconds):
    """The table, the counts per outcome and, for every case not `clear` or `ok`, its
    output's last lines."""
    width = max(len(row["case"]) for row in rows)
    print(f"\n{'case':<{width}}  reported  expected  outcome    seconds  note")
    for row in rows:
        note = row["note"] if len(row["note"]) <= 90 else row["note"][:87] + "..."
        print(
            f"{row['case']:<{width}}  {row['reported']:<8}  {row['expected']:<8}  "
            f"{row['outcome']:<9}  {row['seconds']:>7.1f}  {note}"
        )
    counts = collections.Counter(row["outcome"] for row in rows)
    print("\n" + "  ".join(f"{name}: {counts[name]}" for name in OUTCOMES if counts[name]))
    met = sum(row["outcome"] == row["expected"] for row in rows)
    print(f"{met} of {len(rows)} cases as expected; {seconds:.0f} s in all")
    for row in rows:
        if row["outcome"] not in ("clear", "ok"):
            print(f"\n[{row['outcome']}] {row['case']} (exit {row['rc']}): {row['note']}")
            for line in row["excerpt"]:
                print(f"    {line}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", metavar="NAME", help="case names or globs")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--json", metavar="PATH", help="write the rows as JSON")
    parser.add_argument("--jobs", type=int, default=1, help="cases run at once (default 1)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per case")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = parser.parse_args(argv)
    cases = selected(args.only)
    if args.list:
        for case in cases:
            print(f"{case.name:<34} {case.reported:<7} {case.expected}")
        return 0
    # A command started in the background inherits SIGINT ignored, and its children with
    # it; handling it here makes every child start with the default, as from a terminal.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    root = pathlib.Path(tempfile.mkdtemp(prefix="chanattn-replay-"))
    root.chmod(0o755)
    fixtures, start = Fixtures(root / "fixtures"), time.monotonic()
    (root / "fixtures").mkdir()
    try:
        with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
            futures = [pool.submit(replay, c, root, fixtures, args.timeout) for c in cases]
            rows = []
            for future in futures:
                rows.append(future.result())
                row = rows[-1]
                print(f"{row['case']}: {row['outcome']} ({row['seconds']:.0f} s)", flush=True)
    finally:
        if args.keep:
            print(f"folders kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print_rows(rows, time.monotonic() - start)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
