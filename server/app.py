"""The FastAPI application: REST for sessions and matches, websockets for play and watch,
health and metrics. `create_app(settings)` builds it; the model is loaded once, in the
lifespan, never at import.

    POST   /v1/sessions                 {} is enough: a standard start, default everything
    GET    /v1/sessions                 list
    GET    /v1/sessions/{id}
    DELETE /v1/sessions/{id}
    POST   /v1/sessions/{id}/reset
    WS     /v1/sessions/{id}/play?token=T[&token=T2]
    WS     /v1/sessions/{id}/watch
    GET    /watch/{id}                  the browser spectator page
    GET    /assets/characters.json      character sizes and hitboxes, for that page
    POST   /v1/matches                  -> 202, runs in the background
    GET    /v1/matches/{id}[?wait=true]
    GET    /v1/matches/{id}/frames[?format=json|parquet]
    GET    /healthz, /metrics
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import io
import json
import logging
import math
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pyarrow.parquet as pq
import torch
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from core import game_state as gs
from core.host_memory import keep_freed_host_memory
from model.frames import table_from_frames
from model.quantize import maybe_quantize
from server.engine import Engine, ServerFull
from server.live_socket import LiveSockets
from server.match import load_model
from server.match_service import FinishedMatch, MatchesFull, MatchService
from server.recorder import file_sha256, read_recording
from server.recovery import finish_interrupted_recordings, match_from_recording
from server.requests import (
    BadRequest,
    MatchRequest,
    SessionRequest,
    game_setup,
    policy,
    replay_start,
)
from server.security import (
    BodySizeLimit,
    check_api_key,
    check_session_token,
    is_loopback,
)
from server.sessions import TooManyResets
from server.settings import ServerSettings
from server.wire_frames import batch_columns, frame_message

log = logging.getLogger(__name__)

RECORDING_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
WATCH_PAGE = Path(__file__).resolve().parent / "static" / "watch.html"
CHARACTERS_JSON = Path(__file__).resolve().parent.parent / "assets" / "characters.json"


@functools.cache
def character_data() -> bytes:
    """What the spectator page draws characters with, as the pygame client does
    (client/figures.py): assets/characters.json's sizes and hitboxes, compact."""
    table = json.loads(CHARACTERS_JSON.read_text(encoding="utf-8"))
    subset = {key: table[key] for key in ("source", "characters", "hitboxes")}
    return json.dumps(subset, separators=(",", ":")).encode()


# Bodies of match downloads kept for the next asks. A 1,740-frame match is 1.4 MB of JSON and
# 133 KB of parquet; the cache holds the most recently asked ones up to this many bytes.
DOWNLOAD_CACHE_BYTES = 32 << 20


class DownloadCache:
    """Match downloads made once, on a worker thread, and kept for the next asks of the same
    match and format (the least recently asked leave first, past `max_bytes` in all); asks
    that come while one is being made wait for it. 40 downloads of a 1,740-frame match back
    to back encoded it 40 times, about 100 ms of CPU each on a 2-core machine, and the live
    sessions played at 31 fps meanwhile (issue 21)."""

    def __init__(self, max_bytes: int = DOWNLOAD_CACHE_BYTES):
        self.max_bytes = max_bytes
        self.bodies: OrderedDict[tuple, tuple[bytes, str]] = OrderedDict()
        self.size = 0
        self._making: dict[tuple, asyncio.Future] = {}

    async def get(self, key: tuple, make: Callable[[], tuple[bytes, str]]) -> tuple[bytes, str]:
        if (body := self.bodies.get(key)) is not None:
            self.bodies.move_to_end(key)
            return body
        making = self._making.get(key)
        if making is None:
            making = self._making[key] = asyncio.ensure_future(asyncio.to_thread(make))
            making.add_done_callback(partial(self._made, key))
        return await asyncio.shield(making)

    def _made(self, key: tuple, future: asyncio.Future) -> None:
        del self._making[key]
        if future.cancelled() or future.exception() is not None:
            return  # the asks waiting for it get the exception; the next ask tries again
        body = future.result()
        if len(body[0]) > self.max_bytes:
            return
        self.bodies[key] = body
        self.size += len(body[0])
        while self.size > self.max_bytes:
            _, (old, _) = self.bodies.popitem(last=False)
            self.size -= len(old)


def match_frames_body(result: FinishedMatch, format: str) -> tuple[bytes, str]:
    """A match's trajectory as (body, media type): parquet in the dataset schema, or a JSON
    list of `frame` messages. Runs off the event loop (`asyncio.to_thread`)."""
    frames = result.frames
    if format == "parquet":
        table = table_from_frames(
            frames, metadata={b"schema_version": str(gs.SCHEMA_VERSION).encode()}
        )
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        return buffer.getvalue(), "application/vnd.apache.parquet"
    columns = batch_columns(frames)
    by_frame: dict[int, list] = {}
    for event in result.events:
        by_frame.setdefault(event.frame, []).append(event)
    messages = [
        frame_message(columns, t, by_frame.get(int(columns["frame"][t]), ()))
        for t in range(len(columns["frame"]))
    ]
    # As FastAPI's JSONResponse renders it.
    body = json.dumps(messages, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return body.encode("utf-8"), "application/json"


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    if settings.api_key is None and not is_loopback(settings.host):
        raise ValueError(
            f"a server bound to {settings.host} is reachable from other machines and needs an "
            "API key: set PLAYMODEL_API_KEY (`playmodel serve` makes one up and prints it)"
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # A tick allocates and frees blocks of megabytes (snapshots kept for a rollback, a
        # large model's step): the allocator keeps them for reuse instead of returning them to
        # the OS and faulting them in again (core.host_memory).
        keep_freed_host_memory()
        device = settings.resolved_device()
        threads = settings.resolved_threads(device)
        if threads:
            torch.set_num_threads(threads)
        model, model_name = await asyncio.to_thread(
            load_model, settings.checkpoint, settings.untrained_config, device
        )
        if settings.quantize != "none":
            if torch.device(device).type != "cpu":
                log.warning(
                    "QUANTIZE=%s is for CPU inference; ignored on %s", settings.quantize, device
                )
            else:
                model = await asyncio.to_thread(maybe_quantize, model, settings.quantize)
                model_name += f" ({settings.quantize})"
        if settings.recordings_dir and str(settings.recordings_dir) != ".":
            # Before any new game is recorded: what a server stopped mid-game left unfinished.
            await asyncio.to_thread(finish_interrupted_recordings, Path(settings.recordings_dir))
        engine = Engine(model, model_name, settings)
        # The first sessions' frames do not stall on a trace or a CUDA graph capture.
        await engine.on_device(engine.sim.warm_up, 3, settings.max_sessions)
        # Everything made so far (the model, torch, the app) lives as long as the server. Frozen
        # out of the collector's sight, it is not walked again by a full collection, which took
        # 20-180 ms here at start-up while holding the GIL: a tick's budget is 16.7 ms. (None
        # ran in 50 s of load either way; this keeps the rare one off the tick's path.)
        gc.collect()
        gc.freeze()
        checkpoint = settings.resolved_checkpoint()
        engine.recording_info = {
            "model": model_name,
            "checkpoint": None if checkpoint is None else str(checkpoint),
            "checkpoint_sha256": await asyncio.to_thread(file_sha256, checkpoint),
        }
        matches = MatchService(engine)
        sockets = LiveSockets(engine)
        app.state.engine, app.state.matches, app.state.sockets = engine, matches, sockets
        app.state.downloads = DownloadCache()
        tasks = [asyncio.create_task(engine.run()), asyncio.create_task(matches.run())]
        log.info(
            "serving %s on %s at %.0f Hz (torch threads: %d)",
            model_name,
            device,
            settings.tick_rate,
            torch.get_num_threads(),
        )
        try:
            yield
        finally:
            await sockets.close_all("server shutting down")
            engine.stop()
            matches.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            engine.executor.shutdown(wait=True)
            await asyncio.to_thread(engine.finish_all_recordings)
            gc.unfreeze()  # an app made again in this process (tests) lets this one go

    app = FastAPI(title="Play the Model", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.add_middleware(BodySizeLimit, max_bytes=settings.body_limit())

    def engine_of(request: Request) -> Engine:
        return request.app.state.engine

    def require_key(x_api_key: str | None = Header(None)) -> None:
        check_api_key(settings, x_api_key)

    @app.exception_handler(BadRequest)
    async def bad_request(_: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    # ------------------------------------------------------------------ operations
    @app.get("/healthz")
    async def healthz(request: Request) -> dict:
        engine = engine_of(request)
        return {
            "status": "ok",
            "model": engine.model_name,
            "device": engine.device,
            "sessions": len(engine.sessions),
            "matches_active": request.app.state.matches.active(),
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics(request: Request) -> PlainTextResponse:
        engine, matches = engine_of(request), request.app.state.matches
        text = engine.metrics.render(len(engine.sessions), matches.active())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    # ------------------------------------------------------------------ sessions
    @app.post("/v1/sessions", status_code=201, dependencies=[Depends(require_key)])
    async def create_session(body: SessionRequest, request: Request) -> dict:
        engine = engine_of(request)
        if len(engine.sessions) >= settings.max_sessions:
            raise HTTPException(
                503,
                f"the server is full: {len(engine.sessions)} sessions of {settings.max_sessions}",
                headers={"Retry-After": "30"},
            )
        if len(body.policies) == 2:
            # A game of two policies runs with nobody playing until it ends or times out.
            bots = sum(not s.tokens for s in engine.sessions.values())
            if bots >= settings.max_bot_sessions:
                raise HTTPException(
                    503,
                    f"policies: {bots} sessions of two policies run already, this server's "
                    f"limit (PLAYMODEL_MAX_BOT_SESSIONS={settings.max_bot_sessions}); use "
                    "POST /v1/matches, or try again later",
                    headers={"Retry-After": "30"},
                )
        setup = game_setup(body)
        policies = {
            int(port): policy(spec, f"policies.{port}", settings)
            for port, spec in body.policies.items()
        }
        replay = await asyncio.to_thread(replay_start, body.start, settings)
        start_frame = body.start.frame if body.start else None
        snapshot = await asyncio.to_thread(engine.prepare_start, setup, replay, start_frame)
        info = {
            "stage": snapshot.setup.stage,
            "characters": list(snapshot.setup.characters),
            "seed": setup.seed,
            "start": body.start.model_dump(exclude={"data"}) if body.start else "standard",
            "policies": dict(body.policies),
        }
        delay = settings.input_delay if body.input_delay is None else body.input_delay
        try:
            session = engine.add_session(snapshot, policies, delay, info)
        except ServerFull as e:
            raise HTTPException(503, str(e), headers={"Retry-After": "30"}) from None
        base = str(request.base_url).rstrip("/")
        ws_base = "ws" + base[len("http") :] if base.startswith("http") else base
        return {
            **session.describe(),
            "tokens": {str(p): t for p, t in session.tokens.items()},
            "session_token": session.owner_token,  # needed to reset or delete it over REST
            "play_url": f"{ws_base}/v1/sessions/{session.id}/play",
            "watch_url": f"{ws_base}/v1/sessions/{session.id}/watch",
            "spectator_page": f"{base}/watch/{session.id}",
        }

    def session_or_404(request: Request, session_id: str):
        session = engine_of(request).sessions.get(session_id)
        if session is None:
            raise HTTPException(404, f"no session {session_id!r}")
        return session

    @app.get("/v1/sessions", dependencies=[Depends(require_key)])
    async def list_sessions(request: Request) -> list[dict]:
        return [s.describe() for s in engine_of(request).sessions.values()]

    @app.get("/v1/sessions/{session_id}", dependencies=[Depends(require_key)])
    async def get_session(session_id: str, request: Request) -> dict:
        return session_or_404(request, session_id).describe()

    @app.delete("/v1/sessions/{session_id}", status_code=204, dependencies=[Depends(require_key)])
    async def delete_session(
        session_id: str, request: Request, x_session_token: str | None = Header(None)
    ) -> Response:
        session = session_or_404(request, session_id)
        check_session_token(session, x_session_token, "deleting a session", ports_too=False)
        engine_of(request).close_session(session, "session deleted")
        return Response(status_code=204)

    @app.post("/v1/sessions/{session_id}/reset", dependencies=[Depends(require_key)])
    async def reset_session(
        session_id: str, request: Request, x_session_token: str | None = Header(None)
    ) -> dict:
        engine = engine_of(request)
        session = session_or_404(request, session_id)
        # The token first: a refused caller does not use up the session's resets.
        check_session_token(session, x_session_token, "resetting a session", ports_too=True)
        try:
            engine.reset_session(session)
        except TooManyResets as e:
            retry = str(math.ceil(e.retry_after))
            raise HTTPException(429, str(e), headers={"Retry-After": retry}) from None
        engine.broadcast_status(session, "reset")
        return session.describe()

    def recording_response(recording_id: str) -> Response:
        if not RECORDING_ID.fullmatch(recording_id):
            raise HTTPException(404, f"no recording {recording_id!r}")
        folder = settings.recordings_dir
        table = None
        if folder and str(folder) != ".":
            table = read_recording(Path(folder) / recording_id)
        if table is None:
            raise HTTPException(404, f"no recording {recording_id!r} (yet)")
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        return Response(
            buffer.getvalue(),
            media_type="application/vnd.apache.parquet",
            headers={"Content-Disposition": f'attachment; filename="{recording_id}.parquet"'},
        )

    @app.get("/v1/sessions/{session_id}/recording", dependencies=[Depends(require_key)])
    async def session_recording(
        session_id: str, request: Request, game: int | None = Query(None, ge=0)
    ) -> Response:
        """A session's recording as parquet: its current game (or `game` N, counting resets);
        also after the session has ended."""
        session = engine_of(request).sessions.get(session_id)
        if game is None:
            if session is not None:
                game = max(0, session.games_recorded - 1)
            else:
                folder = settings.recordings_dir
                games = [] if not folder else sorted(Path(folder).glob(f"{session_id}-*"))
                numbers = [int(p.name.rsplit("-", 1)[1]) for p in games]
                game = max(numbers, default=0)
        return await asyncio.to_thread(recording_response, f"{session_id}-{game}")

    @app.get("/v1/matches/{match_id}/recording", dependencies=[Depends(require_key)])
    async def match_recording(match_id: str) -> Response:
        return await asyncio.to_thread(recording_response, match_id)

    @app.websocket("/v1/sessions/{session_id}/play")
    async def play(websocket: WebSocket, session_id: str) -> None:
        await websocket.app.state.sockets.play(websocket, session_id)

    @app.websocket("/v1/sessions/{session_id}/watch")
    async def watch(websocket: WebSocket, session_id: str) -> None:
        await websocket.app.state.sockets.watch(websocket, session_id)

    @app.get("/watch/{session_id}", response_class=HTMLResponse)
    async def watch_page(session_id: str, request: Request) -> HTMLResponse:
        """The browser spectator page: static HTML drawing the watch websocket on a canvas."""
        session_or_404(request, session_id)
        return HTMLResponse(WATCH_PAGE.read_text(encoding="utf-8"))

    @app.get("/assets/characters.json")
    async def characters() -> Response:
        """Public data (libmelee's tables), like the page itself: no key."""
        return Response(
            character_data(),
            media_type="application/json",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    # ------------------------------------------------------------------ matches
    @app.post("/v1/matches", status_code=202, dependencies=[Depends(require_key)])
    async def create_match(body: MatchRequest, request: Request) -> dict:
        engine = engine_of(request)
        matches: MatchService = request.app.state.matches
        if matches.active() >= settings.max_matches:
            raise HTTPException(
                503,
                f"{matches.active()} matches are queued or running (max_matches="
                f"{settings.max_matches}); try again later",
                headers={"Retry-After": "10"},
            )
        setup = game_setup(body)
        policies = (policy(body.p1, "p1", settings), policy(body.p2, "p2", settings))
        max_frames = min(body.max_frames or settings.max_match_frames, settings.max_match_frames)
        try:
            matches.make_room(max_frames)  # before the work of preparing its start
        except MatchesFull as e:
            raise HTTPException(503, str(e), headers={"Retry-After": "10"}) from None
        replay = await asyncio.to_thread(replay_start, body.start, settings)
        start_frame = body.start.frame if body.start else None
        snapshot = await asyncio.to_thread(engine.prepare_start, setup, replay, start_frame)
        info = body.model_dump(exclude={"start"}) | {
            "start": body.start.model_dump(exclude={"data"}) if body.start else "standard",
            "max_frames": max_frames,
            "setup": dataclasses.asdict(snapshot.setup),
        }
        try:
            job = matches.submit(policies, max_frames, snapshot, info)
        except MatchesFull as e:
            raise HTTPException(503, str(e), headers={"Retry-After": "10"}) from None
        return {"match_id": job.id, "status": job.status, "url": f"/v1/matches/{job.id}"}

    def job_or_404(request: Request, match_id: str):
        job = request.app.state.matches.jobs.get(match_id)
        if job is None:
            raise HTTPException(404, f"no match {match_id!r}")
        return job

    @app.get("/v1/matches/{match_id}", dependencies=[Depends(require_key)])
    async def get_match(
        match_id: str,
        request: Request,
        wait: bool = Query(False, description="block until the match is done"),
        timeout: float = Query(600.0, gt=0, le=3600, description="seconds to wait at most"),
    ) -> dict:
        job = request.app.state.matches.jobs.get(match_id)
        if job is None and RECORDING_ID.fullmatch(match_id):
            # Not held here: finished and forgotten, or from a run stopped before it ended.
            known = await asyncio.to_thread(match_from_recording, settings.recordings_dir, match_id)
            if known is not None:
                return known
        job = job_or_404(request, match_id)
        if wait:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.done.wait(), timeout)
        return job.describe()

    @app.get("/v1/matches/{match_id}/frames", dependencies=[Depends(require_key)])
    async def match_frames(
        match_id: str, request: Request, format: str = Query("json", pattern="^(json|parquet)$")
    ) -> Response:
        job = job_or_404(request, match_id)
        if job.result is None:
            raise HTTPException(409, f"match {match_id} is {job.status}; its frames come when done")
        # 0.1-0.35 s for 1,739 frames on a 2-core CPU (issue 21): on the event loop, every
        # live session's frames would wait for it, so the encoding runs on a worker thread,
        # once per match and format (`DownloadCache`).
        body, media_type = await request.app.state.downloads.get(
            (match_id, format), partial(match_frames_body, job.result, format)
        )
        return Response(body, media_type=media_type)

    return app
