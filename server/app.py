"""The FastAPI application: `create_app(settings)` builds it, with its routers
(server/api/routes/: sessions, matches, recordings, health and metrics, the websockets and
the spectator page). The model is loaded once, in the lifespan, never at import; the lifespan
also makes the services the routes use and keeps them on `app.state` (server/api/deps.py).

    POST   /v1/sessions                 {} is enough: a standard start, default everything
    GET    /v1/sessions                 list
    GET    /v1/sessions/{id}
    DELETE /v1/sessions/{id}
    POST   /v1/sessions/{id}/reset
    GET    /v1/sessions/{id}/recording[?game=N]
    WS     /v1/sessions/{id}/play?token=T[&token=T2]
    WS     /v1/sessions/{id}/watch
    GET    /watch/{id}                  the browser spectator page
    GET    /assets/characters.json      character sizes and hitboxes, for that page
    POST   /v1/matches                  -> 202, runs in the background
    GET    /v1/matches/{id}[?wait=true]
    GET    /v1/matches/{id}/frames[?format=json|parquet]
    GET    /v1/matches/{id}/recording
    GET    /healthz, /metrics
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from core.host_memory import arrow_on_the_c_heap, keep_freed_host_memory
from model.checkpoint import load_model
from model.quantize import maybe_quantize
from server.api.routes import api_router
from server.engine import Engine
from server.live_socket import LiveSockets
from server.match_downloads import DownloadCache
from server.match_service import MatchService
from server.memory_janitor import MemoryJanitor
from server.recorder import file_sha256
from server.recordings import Recordings
from server.recovery import finish_interrupted_recordings
from server.requests import BadRequest
from server.security import BodySizeLimit, is_loopback
from server.session_service import SessionService
from server.settings import ServerSettings

log = logging.getLogger(__name__)


async def start_engine(settings: ServerSettings) -> Engine:
    """The served model loaded (and quantized if asked), the recordings a stopped server left
    finished, and an engine warmed up on it."""
    # A tick allocates and frees blocks of megabytes (snapshots kept for a rollback, a large
    # model's step): the allocator keeps them for reuse instead of returning them to the OS
    # and faulting them in again (core.host_memory).
    keep_freed_host_memory()
    arrow_on_the_c_heap()  # and what one-off work freed is returned (server/memory_janitor.py)
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
    checkpoint = settings.resolved_checkpoint()
    engine.recordings.info = {
        "model": model_name,
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "checkpoint_sha256": await asyncio.to_thread(file_sha256, checkpoint),
    }
    return engine


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The engine and the services for the server's life; stopped in order at its end."""
    settings: ServerSettings = app.state.settings
    # Replays come from clients, and one the parser panics on is that client's bad file (a
    # 400). With RUST_BACKTRACE set, the first panic would print a symbolized backtrace and load
    # 40 MB of debug information that the process keeps for its life.
    os.environ["RUST_BACKTRACE"] = "0"
    engine = await start_engine(settings)
    # Everything made so far (the model, torch, the app) lives as long as the server. Frozen
    # out of the collector's sight, it is not walked again by a full collection, which took
    # 20-180 ms here at start-up while holding the GIL: a tick's budget is 16.7 ms. (None ran
    # in 50 s of load either way; this keeps the rare one off the tick's path.)
    gc.collect()
    gc.freeze()
    matches, sockets = MatchService(engine), LiveSockets(engine)
    app.state.engine, app.state.matches, app.state.sockets = engine, matches, sockets
    app.state.sessions = SessionService(engine)
    app.state.recordings = Recordings(settings.recordings_dir)
    app.state.downloads = DownloadCache()
    tasks = [
        asyncio.create_task(engine.run()),
        asyncio.create_task(matches.run()),
        asyncio.create_task(MemoryJanitor().run()),
    ]
    log.info(
        "serving %s on %s at %.0f Hz (torch threads: %d; step: %s)",
        engine.model_name,
        engine.device,
        settings.tick_rate,
        torch.get_num_threads(),
        engine.sim.last_step_path,  # after the warm-up: the path the first ticks take
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


async def bad_request(_: Request, exc: BadRequest) -> JSONResponse:
    """A request that names something unusable (server/requests.py): 400, saying what."""
    return JSONResponse({"detail": str(exc)}, status_code=400)


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    if settings.api_key is None and not is_loopback(settings.host):
        raise ValueError(
            f"a server bound to {settings.host} is reachable from other machines and needs an "
            "API key: set PLAYMODEL_API_KEY (`playmodel serve` makes one up and prints it)"
        )
    app = FastAPI(title="Play the Model", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.add_middleware(BodySizeLimit, max_bytes=settings.body_limit())
    app.add_exception_handler(BadRequest, bad_request)
    app.include_router(api_router)
    return app
