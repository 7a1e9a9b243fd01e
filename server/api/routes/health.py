"""GET /healthz and GET /metrics: for anyone who can reach the port (counts, no ids)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from server.api.deps import EngineDep, MatchesDep
from server.api.schemas import Health
from server.metrics import CONTENT_TYPE

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz(engine: EngineDep, matches: MatchesDep) -> Health:
    return Health(
        status="ok",
        model=engine.model_name,
        device=engine.device,
        sessions=len(engine.sessions),
        matches_active=matches.active(),
        step=engine.sim.last_step_path,
    )


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(engine: EngineDep, matches: MatchesDep) -> PlainTextResponse:
    """Prometheus' text exposition format (version 0.0.4), written by prometheus_client."""
    text = engine.metrics.render(len(engine.sessions), matches.active())
    return PlainTextResponse(text, media_type=CONTENT_TYPE)
