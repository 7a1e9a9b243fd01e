"""What the REST API answers: one pydantic model per kind of answer (the requests it takes
are in server/requests.py). Field names and order are those of docs/SERVER.md and
docs/PROTOCOL.md; a field that an answer may leave out is optional, and routes that return
such answers drop the fields not given (`response_model_exclude_unset`), so such a field is
absent rather than null."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class Health(BaseModel):
    status: str
    model: str
    device: str
    sessions: int
    matches_active: int
    step: str  # what made the live batch's last frames: compiled, trace, cuda graph or eager


class SessionInfo(BaseModel):
    """A session as `Session.describe()` tells it, then how it was set up."""

    session_id: str
    status: str
    frame: int  # the last frame stepped
    input_delay: int
    human_ports: list[int]
    players_connected: list[int]
    spectators: int
    substituted_inputs: dict[str, int]  # port -> inputs that were missing at their frame
    recovered_inputs: dict[str, int]
    lost_inputs: dict[str, int]
    late_inputs: int
    rollbacks: int
    recordings: list[str]
    rolled_back_frames: int
    result: dict[str, Any] | None  # the game_end event's detail once over
    stage: int | None = None
    characters: list[int] | None = None
    seed: int | None = None
    start: str | dict[str, Any] | None = None  # "standard" or the replay taken over
    policies: dict[str, str] | None = None


class SessionCreated(SessionInfo):
    """The answer to POST /v1/sessions: the only one that holds the session's secrets."""

    tokens: dict[str, str]  # port -> the token that opens it on the play websocket
    session_token: str  # needed to reset or delete it over REST
    play_url: str
    watch_url: str
    spectator_page: str


class MatchAccepted(BaseModel):
    match_id: str
    match_token: str  # deleting the match needs it (X-Match-Token); handed out only here
    status: str
    url: str


class MatchSummary(BaseModel):
    """`server.match_runner.MatchResult.summary`."""

    winner: int | None
    end: str | None
    stocks: list[int]
    percents: list[float]
    kos: list[int]  # kos[i]: the stocks player i lost
    frames: int
    frames_per_second: int


class MatchInfo(BaseModel):
    """A match held by the server (`MatchJob.describe()`), or one only its recording still
    knows (`server.recovery.match_from_recording`, with `from_recording`)."""

    match_id: str
    status: str  # queued, running, done, failed, lost
    frames_played: int
    request: dict[str, Any] | None
    summary: MatchSummary | None = None
    events: list[dict[str, Any]] | None = None
    error: str | None = None
    from_recording: bool | None = None
