"""The labelling page's HTTP routes under `/teach`, served by the preview consumer's server (see
docs/protocol.md for the API).

Reading needs nothing more than the preview's Host check. Every change is a POST that must carry
the write token (`X-Teach-Token`), must not come from another origin (an `Origin` header, which
browsers send with any cross-origin POST, must be `http://<Host>`), and, but for an upload, is JSON
of at most 64 KiB; a refused request changes nothing and its body is not read.
"""

from __future__ import annotations

import hmac
import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

from pipeline.client.model import running_model
from pipeline.train.dataset import UNLABELLED

from .store import MAX_UPLOAD, NotFound, Store, StoreError

PAGE = Path(__file__).with_name("page.html")
MAX_JSON = 64 << 10
NO_DATASET = ("the labelling page needs a dataset folder: pipeline-attach --consumer preview --dataset DIR "
              "(or dataset = \"DIR\" in the config's [[consumers]])")


class TeachApp:
    """The routes of one dataset. `sources` lists the sources the preview has seen;
    `host_allowed` is the preview's Host check."""

    def __init__(self, store: Store, token: str, models: Path, pipeline: str,
                 sources: Callable[[], list[str]], host_allowed: Callable[[str | None], bool]):
        self.store = store
        self.token = token.encode()
        self.models = models
        self.pipeline = pipeline
        self.sources = sources
        self.host_allowed = host_allowed
        self.jobs: Any = None  # the training jobs (made on first use)
        self._jobs_lock = threading.Lock()

    # -- GET ------------------------------------------------------------------------------------
    def get(self, h: BaseHTTPRequestHandler) -> None:
        url = urlsplit(h.path)
        path, query = url.path, parse_qs(url.query)
        try:
            if path in ("/teach", "/teach/"):
                send(h, HTTPStatus.OK, PAGE.read_bytes(), "text/html; charset=utf-8")
            elif path == "/teach/api/state":
                send_json(h, HTTPStatus.OK, self.state())
            elif path == "/teach/api/examples":
                source = query.get("source", [None])[-1] or None
                send_json(h, HTTPStatus.OK, {"examples": self.store.examples(source)})
            elif path.startswith("/teach/img/"):
                thumb = query.get("thumb", ["0"])[-1] in ("1", "true", "yes")
                body, ctype = self.store.image(unquote(path[len("/teach/img/"):]), thumb)
                send(h, HTTPStatus.OK, body, ctype)
            elif path == "/teach/api/job":
                send_json(h, HTTPStatus.OK, self.job())
            elif path.startswith("/teach/report/"):
                self._report(h, unquote(path[len("/teach/report/"):]))
            else:
                send_json(h, HTTPStatus.NOT_FOUND, {"error": f"no such page: {path[:80]}"})
        except NotFound as e:
            send_json(h, HTTPStatus.NOT_FOUND, {"error": str(e)})
        except StoreError as e:
            send_json(h, HTTPStatus.BAD_REQUEST, {"error": str(e)})

    def state(self) -> dict[str, Any]:
        model = running_model(self.pipeline)
        counts = self.store.counts()
        undo = self.store.undo_text()
        return {"dataset": str(self.store.root), "sources": self.sources(),
                "classes": self.store.classes(), "counts": counts,
                "model": {k: model.get(k) for k in ("name", "id", "labels")} if model else None,
                "job": self.job(), "can_undo": bool(undo), "undo": undo}

    def job(self) -> dict[str, Any]:
        return self._jobs().status()

    def _report(self, h: BaseHTTPRequestHandler, name: str) -> None:
        image = self._jobs().report_image(name.removesuffix(".png")) if name.endswith(".png") else None
        if image is None:
            send_json(h, HTTPStatus.NOT_FOUND, {"error": f"no report image {name[:60]!r}: confusion.png "
                                                         "or errors.png, once a training is done"})
        else:
            send(h, HTTPStatus.OK, image.read_bytes(), "image/png")

    def _jobs(self) -> Any:
        """The training jobs of this dataset (made on first use: the import is not small)."""
        with self._jobs_lock:
            if self.jobs is None:
                from .jobs import TrainingJobs

                self.jobs = TrainingJobs(self.store.root, self.models, self.pipeline)
            return self.jobs

    # -- POST -----------------------------------------------------------------------------------
    def post(self, h: BaseHTTPRequestHandler) -> None:
        url = urlsplit(h.path)
        refused = self.refusal(h)
        if refused:
            h.close_connection = True
            send_json(h, HTTPStatus.FORBIDDEN, {"error": refused})
            _drain(h)
            return
        try:
            length = int(h.headers.get("Content-Length", ""))
        except ValueError:
            length = -1
        upload = url.path == "/teach/api/upload"
        limit = MAX_UPLOAD if upload else MAX_JSON
        if not 0 <= length <= limit:
            h.close_connection = True
            status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE if length > limit else HTTPStatus.LENGTH_REQUIRED
            send_json(h, status, {"error": f"a request body is at most {limit} bytes with its "
                                           f"Content-Length; this one: {length if length >= 0 else 'none'}"})
            return
        body = h.rfile.read(length)
        ctype = h.headers.get("Content-Type", "")
        try:
            if upload:
                query = parse_qs(url.query)
                ident = self.store.upload(query.get("class", [UNLABELLED])[-1], query.get("name", [""])[-1],
                                          ctype, body)
                send_json(h, HTTPStatus.OK, {"ok": True, "id": ident, **self._undo()})
                return
            if ctype.split(";")[0].strip().lower() != "application/json":
                raise StoreError(f"send JSON (Content-Type: application/json), not {ctype[:60]!r}")
            try:
                request = json.loads(body or b"{}")
            except ValueError:
                raise StoreError("the body is not JSON") from None
            if not isinstance(request, dict):
                raise StoreError("the body is a JSON object")
            status, answer = self.action(url.path, request)
            send_json(h, status, answer)
        except NotFound as e:
            send_json(h, HTTPStatus.NOT_FOUND, {"error": str(e)})
        except StoreError as e:
            send_json(h, HTTPStatus.BAD_REQUEST, {"error": str(e)})

    def refusal(self, h: BaseHTTPRequestHandler) -> str | None:
        """Why a POST is refused (None when it is not)."""
        host = h.headers.get("Host")
        if not self.host_allowed(host):
            return "this page answers only to this machine's names and addresses (--allow-host NAME adds one)"
        origin = h.headers.get("Origin")
        if origin is not None and (host is None or origin.lower() != f"http://{host}".lower()):
            return "a change must come from this page itself, not from another origin"
        given = h.headers.get("X-Teach-Token", "").encode()
        if not hmac.compare_digest(given, self.token):
            return ("a change needs the write token (X-Teach-Token): open the teach: URL printed at start, "
                    "with its #token=")
        return None

    def action(self, path: str, request: dict[str, Any]) -> tuple[HTTPStatus, dict[str, Any]]:
        store = self.store
        if path == "/teach/api/label":
            ids = store.label(request.get("ids"), _text(request, "class"))  # type: ignore[arg-type]
            return HTTPStatus.OK, {"ok": True, "ids": ids, **self._undo()}
        if path == "/teach/api/class":
            what = request.get("action")
            if what == "create":
                store.create(_text(request, "name"))
            elif what == "rename":
                store.rename(_text(request, "name"), _text(request, "to"))
            else:
                raise StoreError(f"action is create or rename, not {str(what)[:40]!r}")
            return HTTPStatus.OK, {"ok": True, "classes": store.classes(), **self._undo()}
        if path == "/teach/api/delete":
            n = store.delete(request.get("ids"))  # type: ignore[arg-type]
            return HTTPStatus.OK, {"ok": True, "deleted": n, **self._undo()}
        if path == "/teach/api/undo":
            done = store.undo()
            return HTTPStatus.OK, {"ok": True, "undone": done, **self._undo()}
        if path in ("/teach/api/train", "/teach/api/deploy", "/teach/api/rollback"):
            return self._job_action(path, request)
        if path == "/teach/api/roi":
            from .roi import apply_roi

            source = _text(request, "source")
            applied, line, message = apply_roi(self.pipeline, source, request.get("roi"))
            if not line:  # a region the config would refuse
                raise StoreError(message)
            return HTTPStatus.OK, {"line": line, "applied": applied, "message": message}
        return HTTPStatus.NOT_FOUND, {"error": f"no such action: {path[:80]}"}

    def _job_action(self, path: str, request: dict[str, Any]) -> tuple[HTTPStatus, dict[str, Any]]:
        jobs = self._jobs()
        if path == "/teach/api/train":
            try:
                return HTTPStatus.OK, jobs.start()
            except ValueError as e:
                return HTTPStatus.CONFLICT, {"error": str(e)}
        if path == "/teach/api/deploy":
            model = request.get("model")
            if model is not None and not isinstance(model, str):
                raise StoreError("model: the path of a trained model, or null for the last one")
            ok, message = jobs.deploy(model)
        else:
            ok, message = jobs.rollback()
        return HTTPStatus.OK, {"ok": ok, "message": message}

    def close(self) -> None:
        """Stop a training under way."""
        if self.jobs is not None:
            self.jobs.close()

    def _undo(self) -> dict[str, Any]:
        undo = self.store.undo_text()
        return {"can_undo": bool(undo), "undo": undo}


def _drain(h: BaseHTTPRequestHandler) -> None:
    """Read a refused request's body if it is small, so that closing the connection does not
    reset it before the client reads the answer; a large one is left unread (it is cut)."""
    try:
        length = int(h.headers.get("Content-Length", "0"))
        if 0 < length <= MAX_JSON:
            h.rfile.read(length)
    except (ValueError, OSError):
        pass


def _text(request: dict[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str):
        raise StoreError(f"{key}: a string, not {json.dumps(value)[:40]}")
    return value


def no_dataset(h: BaseHTTPRequestHandler) -> None:
    """The answer to /teach... when the preview has no dataset."""
    send(h, HTTPStatus.NOT_FOUND, NO_DATASET.encode() + b"\n", "text/plain; charset=utf-8")


def send_json(h: BaseHTTPRequestHandler, status: HTTPStatus, obj: dict[str, Any]) -> None:
    send(h, status, json.dumps(obj).encode(), "application/json")


def send(h: BaseHTTPRequestHandler, status: HTTPStatus, body: bytes, ctype: str) -> None:
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body)))
    h.send_header("Cache-Control", "no-store")
    h.send_header("X-Frame-Options", "DENY")  # no other site may frame the page (clickjacking)
    h.send_header("X-Content-Type-Options", "nosniff")
    h.send_header("Referrer-Policy", "no-referrer")
    if h.close_connection:
        h.send_header("Connection", "close")
    h.end_headers()
    h.wfile.write(body)
