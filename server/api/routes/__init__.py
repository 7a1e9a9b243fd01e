"""One router per resource; `api_router` holds them all. Under /v1 every route needs the API
key (`deps.require_api_key`); health, metrics, the websockets and the spectator page do not
(docs/SERVER.md, Security)."""

from fastapi import APIRouter

from server.api.routes import health, live, matches, recordings, sessions

api_router = APIRouter()
for module in (health, sessions, matches, recordings, live):
    api_router.include_router(module.router)
