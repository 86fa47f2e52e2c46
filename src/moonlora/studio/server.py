"""`moonlora studio`: the local web app (Starlette on uvicorn), its routes and how it starts.

Every page, script and style is in the package (`studio/static/`): nothing is fetched from another
host, and it works with no network. What a route may touch is decided in `studio.guard`; what it
shows comes from the run folder, manifest, compare and decode code the commands use.
"""

from __future__ import annotations

import contextlib
import html
import secrets
import socket
import threading
from collections import OrderedDict
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from moonlora.configs import StudioConfig
from moonlora.errors import MissingInput, MoonloraError, one_line
from moonlora.studio import recorder
from moonlora.studio.guard import (ACCESS_COOKIE, Guard, PathRefused, Tokens, UploadRefused, read_body,
                                   relative_to_root, under_root)
from moonlora.studio.jobs import Jobs
from moonlora.studio.listen import listen, side_by_side
from moonlora.studio.models import BASE, ModelShelf, choose
from moonlora.studio.runs import find_runs, list_runs, run_detail
from moonlora.studio.takes import Take, take_from_upload

STATIC = Path(__file__).parent / "static"
KEPT_TAKES = 32  # takes held for a correction to be saved, newest kept
CHOICE_SUFFIXES = {"manifests": (".jsonl", ".json", ".tsv"), "prompts": (".txt",), "grids": (".toml",)}


class Studio:
    """What the routes share: the root, the config, the tokens, the jobs, the models and recent takes."""

    def __init__(self, config: StudioConfig, tokens: Tokens):
        self.config, self.tokens = config, tokens
        self.root = Path(config.root).resolve()
        if not self.root.is_dir():
            raise MissingInput(f"--root {config.root}: no such folder")
        self.jobs = Jobs(self.root)
        self.models = ModelShelf()
        self.takes: OrderedDict[str, Take] = OrderedDict()
        self.takes_lock = threading.Lock()

    def hold(self, take: Take) -> str:
        take_id = secrets.token_hex(8)
        with self.takes_lock:
            self.takes[take_id] = take
            while len(self.takes) > KEPT_TAKES:
                self.takes.popitem(last=False)
        return take_id

    def held(self, take_id: str) -> Take:
        with self.takes_lock:
            if take_id not in self.takes:
                raise recorder.RecordError("that take is no longer held; record it again")
            return self.takes[take_id]

    def choice(self, label: str):
        run_dir = None if label in ("", BASE) else under_root(self.root, label)
        return choose(label or BASE, run_dir, self.config.model, self.config.device)


def error_response(error: Exception) -> JSONResponse:
    status = 403 if isinstance(error, PathRefused) else 404 if isinstance(error, (MissingInput, FileNotFoundError)) \
        else 413 if isinstance(error, UploadRefused) and "limit" in str(error) else 400
    return JSONResponse({"error": one_line(error)}, status_code=status)


def handled(endpoint):
    """An async endpoint whose moonlora errors become one-line JSON refusals."""
    async def wrapper(request: Request) -> Response:
        try:
            return await endpoint(request)
        except (MoonloraError, FileNotFoundError) as error:
            return error_response(error)
    return wrapper


def threaded(function):
    """A blocking endpoint body (file reads, decoding) run off the event loop, returning JSON."""
    async def endpoint(request: Request) -> Response:
        studio: Studio = request.app.state.studio
        try:
            body = await request.json() if request.method == "POST" else None
        except ValueError:
            return JSONResponse({"error": "the body is not JSON; send a JSON object"}, status_code=400)
        if request.method == "POST" and not isinstance(body, dict):
            return JSONResponse({"error": "send a JSON object"}, status_code=400)
        result = await run_in_threadpool(function, studio, dict(request.query_params), body)
        return JSONResponse(result)
    return handled(endpoint)


def _float(value: str | None) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except ValueError:
        raise recorder.RecordError(f"{value!r}: not a number") from None


def _int(value: str | None, default: int) -> int:
    try:
        return default if value in (None, "") else int(value)
    except ValueError:
        raise recorder.RecordError(f"{value!r}: not a whole number") from None


# --- pages and files ---


async def index(request: Request) -> Response:
    studio: Studio = request.app.state.studio
    access = request.query_params.get("access")
    if access and studio.tokens.access:  # the Guard has checked it: keep it as a cookie, drop it from the URL
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(ACCESS_COOKIE, access, httponly=True, samesite="strict")
        return response
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    page = page.replace("{{SESSION_TOKEN}}", studio.tokens.session).replace("{{ROOT}}", html.escape(str(studio.root)))
    return HTMLResponse(page, headers={"Cache-Control": "no-store"})


async def files(request: Request) -> Response:
    studio: Studio = request.app.state.studio
    try:
        path = under_root(studio.root, request.path_params["path"])
    except PathRefused as error:
        return error_response(error)
    if not path.is_file():
        return JSONResponse({"error": f"{request.path_params['path']}: no such file under the root"}, status_code=404)
    return FileResponse(path)


# --- runs and listening ---


def api_runs(studio: Studio, query: dict, body) -> dict:
    return {**list_runs(studio.root), "jobs": studio.jobs.listing()}


def api_run(studio: Studio, query: dict, body) -> dict:
    path = query.get("path", "")
    return run_detail(studio.root, path, studio.jobs.log_tail(path))


def api_listen(studio: Studio, query: dict, body) -> dict:
    return listen(studio.root, query.get("folder", ""), query.get("set") or "main", query.get("sort") or "worst",
                  query.get("flag") or None, query.get("speaker") or None, _float(query.get("min")),
                  _float(query.get("max")), query.get("q") or None, query.get("changed") in ("1", "true"),
                  _int(query.get("offset"), 0), _int(query.get("limit"), 50))


def api_compare(studio: Studio, query: dict, body) -> dict:
    return side_by_side(studio.root, query.get("a", ""), query.get("b", ""), query.get("set") or "main")


def api_choices(studio: Studio, query: dict, body) -> dict:
    """Runs with adapters, and the manifests, prompt files and grid files under the root (for the forms)."""
    from moonlora.data.synth.domains import DOMAINS
    from moonlora.studio.runs import walk_folders

    found = {name: [] for name in CHOICE_SUFFIXES}
    for folder in walk_folders(studio.root, depth=4):
        with contextlib.suppress(OSError):
            for entry in sorted(folder.iterdir()):
                for name, suffixes in CHOICE_SUFFIXES.items():
                    if entry.is_file() and entry.suffix in suffixes and not entry.name.startswith("."):
                        found[name].append(relative_to_root(studio.root, entry))
    adapters = [relative_to_root(studio.root, run) for run in find_runs(studio.root) if (run / "adapter").is_dir()]
    return {**{k: v[:500] for k, v in found.items()}, "adapters": adapters, "domains": list(DOMAINS),
            "model": studio.config.model}


# --- recording and correcting ---


def api_record_start(studio: Studio, query: dict, body: dict) -> dict:
    folder = str(body.get("folder") or "")
    if not folder:
        raise recorder.RecordError("folder: name the recording folder (relative to the root)")
    prompts = []
    if body.get("prompts_file"):
        prompts = recorder.read_prompt_file(under_root(studio.root, str(body["prompts_file"])))
    elif body.get("domain"):
        prompts = recorder.domain_prompts(str(body["domain"]), _int(str(body.get("count") or ""), 50))
    path = under_root(studio.root, folder)
    if not prompts and not (path / recorder.PROMPTS).is_file():
        raise recorder.RecordError("prompts: give a prompt file (one sentence per line) or a domain template")
    opened, resumed = recorder.start_folder(studio.root, folder, prompts)
    return {**recorder.state(opened), "resumed": resumed}


def api_record_state(studio: Studio, query: dict, body) -> dict:
    return recorder.state(recorder.open_folder(studio.root, query.get("folder", "")))


def api_record_undo(studio: Studio, query: dict, body: dict) -> dict:
    folder = recorder.open_folder(studio.root, str(body.get("folder") or ""))
    removed = recorder.undo(folder)
    return {**recorder.state(folder), "removed": removed}


async def upload(request: Request) -> Take:
    studio: Studio = request.app.state.studio
    data = await read_body(request, studio.config.max_upload_bytes)
    return await run_in_threadpool(take_from_upload, data)


@handled
async def api_record_take(request: Request) -> Response:
    studio: Studio = request.app.state.studio
    query = request.query_params
    folder = recorder.open_folder(studio.root, query.get("folder", ""))  # refused before the body is read
    take = await upload(request)
    row = await run_in_threadpool(recorder.record_prompt, folder, _int(query.get("prompt"), -1),
                                  query.get("speaker", ""), take)
    state = await run_in_threadpool(recorder.state, folder)
    return JSONResponse({**state, "kept": row, "seconds": take.seconds, "rms_dbfs": round(take.rms_dbfs, 1)})


@handled
async def api_transcribe(request: Request) -> Response:
    """Correct: one take through the chosen model; the take is held for saving as a training row."""
    studio: Studio = request.app.state.studio
    choice = studio.choice(request.query_params.get("model", BASE))
    take = await upload(request)
    result = await run_in_threadpool(studio.models.transcribe, choice, take.waveform)
    return JSONResponse({**result, "take_id": studio.hold(take), "seconds": take.seconds})


def api_correct_save(studio: Studio, query: dict, body: dict) -> dict:
    folder = recorder.open_folder(studio.root, str(body.get("folder") or ""))
    take = studio.held(str(body.get("take_id") or ""))
    row = recorder.save_correction(folder, str(body.get("speaker") or ""), take, str(body.get("text") or ""),
                                   str(body.get("hyp") or ""), str(body.get("model") or BASE))
    return {**recorder.state(folder), "kept": row}


@handled
async def api_try(request: Request) -> Response:
    """Try: the base model and a run's adapter on one take, side by side with their timing."""
    studio: Studio = request.app.state.studio
    adapted = studio.choice(request.query_params.get("adapter", "")) if request.query_params.get("adapter") else None
    take = await upload(request)
    base = await run_in_threadpool(studio.models.transcribe, studio.choice(BASE), take.waveform)
    tuned = await run_in_threadpool(studio.models.transcribe, adapted, take.waveform) if adapted else None
    return JSONResponse({"base": base, "adapted": tuned, "seconds": take.seconds})


# --- training ---


def api_train_start(studio: Studio, query: dict, body: dict) -> dict:
    form = body.get("form") or {}
    if not isinstance(form, dict):
        raise recorder.RecordError("form: a JSON object of flag -> value")
    return studio.jobs.start(str(body.get("kind") or "experiment"), form)


def api_train_stop(studio: Studio, query: dict, body: dict) -> dict:
    return studio.jobs.stop(str(body.get("job") or ""))


def api_train_resume(studio: Studio, query: dict, body: dict) -> dict:
    return studio.jobs.resume(str(body.get("job") or ""))


def api_run_resume(studio: Studio, query: dict, body: dict) -> dict:
    return studio.jobs.resume_run(str(body.get("path") or ""))


def api_jobs(studio: Studio, query: dict, body) -> dict:
    return {"jobs": studio.jobs.listing()}


def build_app(config: StudioConfig, tokens: Tokens | None = None):
    """The ASGI app: routes behind the Guard. `tokens` default: a new session token (and an access token
    when bound beyond loopback)."""
    tokens = tokens or Tokens.for_host(config.remote)
    studio = Studio(config, tokens)
    get = ("GET",)
    post = ("POST",)
    routes = [
        Route("/", index, methods=get),
        Route("/files/{path:path}", files, methods=get),
        Route("/api/runs", threaded(api_runs), methods=get),
        Route("/api/run", threaded(api_run), methods=get),
        Route("/api/listen", threaded(api_listen), methods=get),
        Route("/api/compare", threaded(api_compare), methods=get),
        Route("/api/choices", threaded(api_choices), methods=get),
        Route("/api/jobs", threaded(api_jobs), methods=get),
        Route("/api/record/state", threaded(api_record_state), methods=get),
        Route("/api/record/start", threaded(api_record_start), methods=post),
        Route("/api/record/take", api_record_take, methods=post),
        Route("/api/record/undo", threaded(api_record_undo), methods=post),
        Route("/api/transcribe", api_transcribe, methods=post),
        Route("/api/correct/save", threaded(api_correct_save), methods=post),
        Route("/api/try", api_try, methods=post),
        Route("/api/train/start", threaded(api_train_start), methods=post),
        Route("/api/train/stop", threaded(api_train_stop), methods=post),
        Route("/api/train/resume", threaded(api_train_resume), methods=post),
        Route("/api/run/resume", threaded(api_run_resume), methods=post),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await run_in_threadpool(studio.jobs.interrupt_all)

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.studio = studio
    return Guard(app, tokens, config.host, config.max_upload_bytes), studio


def bind(config: StudioConfig) -> socket.socket:
    """The listening socket (port 0: a free one), bound before the URL is printed."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError as error:
        sock.close()
        raise MoonloraError(f"--host {config.host} --port {config.port}: cannot listen there ({error.strerror}); "
                            "pick another --port") from None
    sock.listen(1024)  # a burst of connections waits in the backlog instead of being refused
    return sock


def url_of(config: StudioConfig, sock: socket.socket, tokens: Tokens) -> str:
    host = config.host if ":" not in config.host else f"[{config.host}]"
    port = sock.getsockname()[1]
    return f"http://{host}:{port}/" + (f"?access={tokens.access}" if tokens.access else "")


def make_server(config: StudioConfig):
    """(uvicorn server, its socket, the URL to open, the Studio): the caller runs `server.run(sockets=[sock])`."""
    import uvicorn

    app, studio = build_app(config)
    sock = bind(config)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5))
    return server, sock, url_of(config, sock, studio.tokens), studio


def serve(config: StudioConfig) -> None:
    server, sock, url, studio = make_server(config)
    print(f"moonlora studio: serving {studio.root} at {url}", flush=True)
    if studio.tokens.access:
        print(f"moonlora studio: bound to {config.host}: every request needs the access token "
              f"{studio.tokens.access} (the URL above carries it once, then a cookie does)", flush=True)
    print("moonlora studio: Ctrl-C stops it (its running jobs are interrupted, resumable)", flush=True)
    if config.open_browser:
        import webbrowser

        webbrowser.open(url)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shut down cleanly, then raised the captured Ctrl-C again
        pass
    print("moonlora studio: stopped", flush=True)
