"""What the routes depend on: the server's settings and services (made once, in the app's
lifespan, and kept on `app.state`), the API key, and a session's own token. Each is a FastAPI
dependency, so a test can swap one (`app.dependency_overrides`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, HTTPException
from starlette.requests import HTTPConnection

from server.engine import Engine
from server.live_socket import LiveSockets
from server.match_downloads import DownloadCache
from server.match_service import MatchJob, MatchService
from server.recordings import Recordings
from server.security import check_api_key, check_match_token, check_session_token
from server.session_service import SessionService
from server.sessions import Session
from server.settings import ServerSettings


def get_settings(connection: HTTPConnection) -> ServerSettings:
    return connection.app.state.settings


def get_engine(connection: HTTPConnection) -> Engine:
    return connection.app.state.engine


def get_sessions(connection: HTTPConnection) -> SessionService:
    return connection.app.state.sessions


def get_matches(connection: HTTPConnection) -> MatchService:
    return connection.app.state.matches


def get_sockets(connection: HTTPConnection) -> LiveSockets:
    return connection.app.state.sockets


def get_downloads(connection: HTTPConnection) -> DownloadCache:
    return connection.app.state.downloads


def get_recordings(connection: HTTPConnection) -> Recordings:
    return connection.app.state.recordings


SettingsDep = Annotated[ServerSettings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
SessionsDep = Annotated[SessionService, Depends(get_sessions)]
MatchesDep = Annotated[MatchService, Depends(get_matches)]
SocketsDep = Annotated[LiveSockets, Depends(get_sockets)]
DownloadsDep = Annotated[DownloadCache, Depends(get_downloads)]
RecordingsDep = Annotated[Recordings, Depends(get_recordings)]


def require_api_key(settings: SettingsDep, x_api_key: str | None = Header(None)) -> None:
    """Every REST call under /v1: 401 unless the server has no key or this is it."""
    check_api_key(settings, x_api_key)


def session_or_404(session_id: str, sessions: SessionsDep) -> Session:
    session = sessions.get(session_id)
    if session is None:
        raise HTTPException(404, f"no session {session_id!r}")
    return session


def match_or_404(match_id: str, matches: MatchesDep) -> MatchJob:
    job = matches.jobs.get(match_id)
    if job is None:
        raise HTTPException(404, f"no match {match_id!r}")
    return job


SessionDep = Annotated[Session, Depends(session_or_404)]
MatchDep = Annotated[MatchJob, Depends(match_or_404)]


def session_to_delete(session: SessionDep, x_session_token: str | None = Header(None)) -> Session:
    """The session, if the caller holds its own token (`session_token`)."""
    check_session_token(session, x_session_token, "deleting a session", ports_too=False)
    return session


def session_to_reset(session: SessionDep, x_session_token: str | None = Header(None)) -> Session:
    """The session, if the caller holds its own token or a port's: a player may reset its
    game over its websocket anyway."""
    check_session_token(session, x_session_token, "resetting a session", ports_too=True)
    return session


def match_to_delete(job: MatchDep, x_match_token: str | None = Header(None)) -> MatchJob:
    """The match, if the caller holds its own token (`match_token`)."""
    check_match_token(job, x_match_token, "deleting a match")
    return job


SessionToDelete = Annotated[Session, Depends(session_to_delete)]
SessionToReset = Annotated[Session, Depends(session_to_reset)]
MatchToDelete = Annotated[MatchJob, Depends(match_to_delete)]
