"""Training from the teach page: one `pipeline-train` run at a time in a subprocess (a crash or a
slow board never blocks the HTTP server), its progress, its report, and switching the running
pipeline to the model it wrote or back to the one that ran before.

    jobs = TrainingJobs(dataset, models_dir, pipeline_name)
    jobs.start() -> <job>          ValueError (one line) while one runs or without a dataset
    jobs.status() -> <job>         {"state": "idle"|"running"|"done"|"failed", "progress": 0..1,
                                    "message": str, "model": path or None, "report": dict or None}
    jobs.report_image(name) -> Path or None    name "confusion" or "errors" (of the last job)
    jobs.deploy(model_path=None) -> (ok, message)   None: the last trained model
    jobs.rollback() -> (ok, message)               the model that ran before the last deploy
    jobs.close()                   stops a training under way
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from pipeline.client.deploy import request_deploy
from pipeline.client.model import running_model
from pipeline.config import WEIGHTS_SPECIAL
from pipeline.outputs import write_whole
from pipeline.train.report import report_files
from workers.inference.model_files import builtin_onnx, builtin_weights

IDLE, RUNNING, DONE, FAILED = "idle", "running", "done", "failed"
REPORT_IMAGES = {"confusion": "confusion_png", "errors": "errors_png"}
MAX_MESSAGE = 300  # characters of a line shown on the page


class TrainingJobs:
    """The training job of one dataset folder (the last one's outcome is kept until the next),
    and the deploys made from the page."""

    def __init__(self, dataset: str | Path, models_dir: str | Path, pipeline_name: str | None):
        self.dataset = Path(dataset).resolve()
        self.models_dir = Path(models_dir).resolve()
        self.pipeline = pipeline_name
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.job: dict[str, Any] = {"state": IDLE, "progress": 0.0, "message": "", "model": None,
                                    "report": None}
        self.previous: tuple[str, list[str]] | None = None  # what ran before the last deploy
        self.switching = threading.Lock()  # one deploy or rollback at a time

    # -- training -------------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        """Start training on the dataset; ValueError while a training runs."""
        with self.lock:
            if self.job["state"] == RUNNING:
                raise ValueError("a training is running already; wait for it to finish")
            if not self.dataset.is_dir():
                raise ValueError(f"no dataset folder {self.dataset}")
            self.models_dir.mkdir(parents=True, exist_ok=True)
            name = self.dataset.name
            out = self.models_dir / f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.onnx"
            cmd = [sys.executable, "-m", "pipeline.cli.train", str(self.dataset), "--out", str(out),
                   "--name", name, "--progress-json"]
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, text=True, errors="replace")
            self.job = {"state": RUNNING, "progress": 0.0, "message": "starting", "model": str(out),
                        "report": None}
            threading.Thread(target=self._follow, args=(self.proc, out), daemon=True,
                             name="teach-train").start()
            return dict(self.job)

    def _follow(self, proc: subprocess.Popen, out: Path) -> None:
        """Reads the run's progress lines until it exits, then its report or its error."""
        last = ""
        assert proc.stderr is not None
        for line in _lines(proc.stderr):
            try:
                step = json.loads(line)
                progress, message = float(step["progress"]), str(step["message"])
            except (ValueError, KeyError, TypeError):
                last = line  # an error or a warning, said in one line
                continue
            with self.lock:
                self.job.update(progress=progress, message=message[:MAX_MESSAGE])
        code = proc.wait()
        outcome: dict[str, Any]
        if code == 0:
            try:
                report = json.loads(Path(report_files(out)["report_json"]).read_text())
                outcome = {"state": DONE, "progress": 1.0, "report": report,
                           "message": f"trained {report.get('model', out.stem)}: validation accuracy "
                                      f"{100 * float(report.get('accuracy_deployed', 0)):.1f}%"}
            except (OSError, ValueError) as e:
                outcome = {"state": FAILED, "model": None, "message": f"no report for {out}: {e}"}
        else:
            why = last.removeprefix("pipeline-train: ") or f"pipeline-train exited with code {code}"
            outcome = {"state": FAILED, "model": None, "message": why[:MAX_MESSAGE]}
        with self.lock:
            if self.proc is proc:
                self.job.update(outcome)
                self.proc = None

    def status(self) -> dict[str, Any]:
        """The job now: see the module's docstring."""
        with self.lock:
            return dict(self.job)

    def report_image(self, name: str) -> Path | None:
        """The last job's confusion matrix ("confusion") or misclassified images ("errors")."""
        with self.lock:
            report = self.job["report"] if self.job["state"] == DONE else None
        key = REPORT_IMAGES.get(name)
        if not report or not key:
            return None
        path = (report.get("files") or {}).get(key)
        return Path(path) if path and Path(path).is_file() else None

    def close(self) -> None:
        """Stops a training under way (it writes nothing then)."""
        with self.lock:
            proc, self.proc = self.proc, None
            if proc is not None:
                self.job.update(state=FAILED, model=None, message="stopped")
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # -- deploy and rollback ----------------------------------------------------------------
    def deploy(self, model_path: str | None = None) -> tuple[bool, str]:
        """Switch the running pipeline to `model_path` (a model in the models folder; None: the
        last trained); the model it ran before is kept for `rollback`."""
        if model_path is None:
            job = self.status()
            if job["state"] != DONE or not job["model"]:
                return False, "no trained model to deploy yet: train one first"
            model_path = job["model"]
        path = Path(model_path).resolve()
        if not path.is_relative_to(self.models_dir) or path.suffix != ".onnx":
            return False, f"model: {model_path} is not a .onnx file in {self.models_dir}"
        if not path.is_file():
            return False, f"model: no such file {path}"
        return self._switch(str(path))

    def rollback(self) -> tuple[bool, str]:
        """Switch back to the model that ran before the last deploy."""
        if self.previous is None:
            return False, "nothing to roll back to: no model was deployed from this page"
        return self._switch(*self.previous)

    def _switch(self, weights: str, labels: list[str] | None = None) -> tuple[bool, str]:
        """Deploy `weights` (with these class names, if given); remember what ran before."""
        with self.switching:
            model = running_model(self.pipeline)
            before = _weights_of(model)
            labels_file = ""
            if labels:  # the names it ran with (a file without its own, deployed with --labels)
                labels_file = str(self.models_dir / ".rollback-labels.txt")
                write_whole(labels_file, "".join(f"{name}\n" for name in labels))
            ok, message = request_deploy(self.pipeline, weights, labels_file)
            if ok and before is not None:
                self.previous = (before, [] if before == "builtin" else list(model.get("labels") or []))
            return ok, message


def _weights_of(model: dict[str, Any]) -> str | None:
    """What model.weights names a running model: "builtin" for the shipped one, else its file."""
    file = model.get("file")
    if not file:
        return None
    if file in WEIGHTS_SPECIAL or Path(file).resolve() in (builtin_onnx(), builtin_weights()):
        return "builtin"
    return str(file)


def _lines(stream: IO[str]):
    """The stream's lines, stripped, until it closes."""
    for line in stream:
        line = line.strip()
        if line:
            yield line
