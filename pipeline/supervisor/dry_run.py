"""`pipeline-up CONFIG --check`: everything a start would find wrong, found without starting:
the files and devices, the source (opened and one frame read), the cores, /dev/shm, the model
(planned, loaded and run once), then what would run where. What a user runs before installing the
service.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from pipeline.config import Config, ConfigError, check_files
from pipeline.config.credentials import mask_url
from pipeline.supervisor.shm import SHM_DIR, frame_bytes, free_bytes, preflight, ring_needs
from pipeline.supervisor.startup import plan_model
from pipeline.transport.rundir import running_pipelines

MIB = 2 ** 20


def dry_run(config: Config, path: str, host: str | None, say: Callable[[str], None]) -> int:
    """Print one line per finding; 0 when the pipeline would start, 1 when it would not."""
    problems: list[str] = []

    def line(what: str, text: str, problem: bool = False) -> None:
        say(f"{what:<11} {'PROBLEM: ' if problem else ''}{text}")
        if problem:
            problems.append(what)

    line("config", f"{path}: valid (pipeline '{config.name}'"
         + (f", host {host}" if host else "") + ")")
    try:
        check_files(config, host)
    except ConfigError as e:
        line("files", str(e), problem=True)
    busy = [p for p in running_pipelines() if p["name"] == config.name]
    if busy:
        line("name", f"a pipeline named '{config.name}' is running now (pid {busy[0]['pid']}); "
             f"stop it or choose another --name", problem=True)
    for inst in config.instances(host):
        src = config.source_list[inst.source] if inst.kind == "capture" else None
        if src is not None and not problems:
            _check_source(config, inst.source, line)
    line("cores", ", ".join(f"{i.name} {config.cores_for(i)}" for i in config.instances(host))
         + (f"; model threads {config.inference.threads or 'one per core'}"))
    sizes = frame_bytes(config, host)
    needs = ring_needs(config, sizes, host)
    refusal = preflight(config, sizes, host=host)
    line("shm", refusal or f"rings need {sum(n.total for n in needs) / MIB:.1f} MiB; {SHM_DIR} has "
         f"{free_bytes() / MIB:.0f} MiB free", problem=bool(refusal))
    workers = [i for i in config.instances(host) if i.kind == "inference"]
    if workers:
        _check_model(config, workers[0], line, say)
    consumers = ", ".join(c.kind for c in config.consumers) or "none"
    line("consumers", consumers)
    if problems:
        say(f"check: {len(problems)} problem(s) ({', '.join(problems)}); nothing was started")
        return 1
    say("check: OK, the pipeline would start (nothing was started)")
    return 0


def _check_source(config: Config, index: int, line: Callable[..., None]) -> None:
    """Open the source and read one frame, as capture would; an image folder also says which
    images it will skip (from every file's header)."""
    from workers.capture.sources import open_source

    sid = config.source_ids()[index]
    src = config.source_list[index]
    try:
        source = open_source(src)
    except Exception as e:  # noqa: BLE001 (any failure to open is the finding)
        line("source", f"{sid}: cannot open: {e}", problem=True)
        return
    frame: list[np.ndarray] = []
    try:
        def buffer_for(shape: tuple[int, ...]) -> np.ndarray:
            frame.append(np.empty(shape, np.uint8))
            return frame[-1]
        meta = source.read(buffer_for)
    except Exception as e:  # noqa: BLE001
        line("source", f"{sid}: opened, but reading a frame failed: {e}", problem=True)
        return
    finally:
        source.close()
    if meta is None or not frame:
        line("source", f"{sid}: opened, but it gave no frame", problem=True)
        return
    h, w = frame[-1].shape[:2]
    try:
        roi = src.roi_box(w, h)
    except ValueError as e:
        line("source", f"{'sources[%d]' % index if config.sources else 'source'}.{e}", problem=True)
        return
    where = getattr(src, "path", None) or getattr(src, "device", None)
    where = mask_url(where) if isinstance(where, str) else where  # never a password
    survey = getattr(source, "survey", None)  # an image folder: what its headers said
    skips = survey.note() if survey is not None else ""
    line("source", f"{sid}: {src.kind}{f' {where}' if where is not None else ''}, first frame {w}x{h}"
         + (f", region of interest {roi[2] - roi[0]}x{roi[3] - roi[1]} at ({roi[0]}, {roi[1]})"
            if roi else "") + (f"; {skips}" if skips else ""))


def _check_model(config: Config, worker: object, line: Callable[..., None],
                 say: Callable[[str], None]) -> None:
    """Plan the runtime as the supervisor would, load the model as a worker would, run it once."""
    from workers.inference.classifier import load_planned_classifier, warm_up_classifier

    plan = plan_model(config, worker, say)
    if isinstance(plan, str):
        line("model", plan, problem=True)
        return
    threads = config.inference.threads or len(config.cores_for(worker))
    t0 = time.perf_counter()
    try:
        clf = load_planned_classifier(plan, config, threads)
        loaded = time.perf_counter() - t0
        warm_up_classifier(clf, config.preprocess.crop_size, 3)
        ms = warm_up_classifier(clf, config.preprocess.crop_size, 5)
    except Exception as e:  # noqa: BLE001
        line("model", f"{plan.name} on {plan.runtime}: cannot load or run it: {e}", problem=True)
        return
    names = ", ".join(clf.labels[:6]) + (", ..." if len(clf.labels) > 6 else "")
    line("model", f"{plan.name} (id {plan.id}) on {plan.runtime} ({plan.reason}), "
         f"{len(clf.labels)} classes ({names}); loaded in {loaded:.1f} s, {ms:.1f} ms a frame here "
         f"with {threads} thread(s)")
