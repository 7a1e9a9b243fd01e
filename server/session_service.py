"""Live sessions as the REST API makes and changes them: a request becomes a game's start and
a session in the engine, which ticks it; reset and delete go through here too. No HTTP here:
the routes (server/api/routes/sessions.py) turn its exceptions into status codes."""

from __future__ import annotations

import asyncio

from server.engine import Engine, ServerFull
from server.requests import SessionRequest, game_setup, policy, replay_start
from server.sessions import Session


class SessionService:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.settings = engine.settings

    def get(self, session_id: str) -> Session | None:
        return self.engine.sessions.get(session_id)

    def all(self) -> list[Session]:
        return list(self.engine.sessions.values())

    async def create(self, request: SessionRequest) -> Session:
        """A session of the game `request` asks for. Raises `ServerFull` (before any work)
        when this server runs all the sessions it may, and `requests.BadRequest` when the
        request names something unusable. Starting from a replay runs the model over its
        earlier frames: that runs on another thread, the live sessions keep ticking."""
        self._check_room(len(request.policies))
        setup = game_setup(request)
        policies = {
            int(port): policy(spec, f"policies.{port}", self.settings)
            for port, spec in request.policies.items()
        }
        replay = await asyncio.to_thread(replay_start, request.start, self.settings)
        start_frame = request.start.frame if request.start else None
        snapshot = await asyncio.to_thread(self.engine.prepare_start, setup, replay, start_frame)
        info = {
            "stage": snapshot.setup.stage,
            "characters": list(snapshot.setup.characters),
            "seed": setup.seed,
            "start": request.start.model_dump(exclude={"data"}) if request.start else "standard",
            "policies": dict(request.policies),
        }
        delay = self.settings.input_delay if request.input_delay is None else request.input_delay
        return self.engine.add_session(snapshot, policies, delay, info)

    def _check_room(self, policy_ports: int) -> None:
        sessions, settings = self.engine.sessions, self.settings
        if len(sessions) >= settings.max_sessions:
            raise ServerFull(
                f"the server is full: {len(sessions)} sessions of {settings.max_sessions}"
            )
        if policy_ports == 2:
            # A game of two policies runs with nobody playing until it ends or times out.
            bots = sum(not s.tokens for s in sessions.values())
            if bots >= settings.max_bot_sessions:
                raise ServerFull(
                    f"policies: {bots} sessions of two policies run already, this server's "
                    f"limit (PLAYMODEL_MAX_BOT_SESSIONS={settings.max_bot_sessions}); use "
                    "POST /v1/matches, or try again later"
                )

    def reset(self, session: Session) -> None:
        """Back to its start (raises `sessions.TooManyResets` past its limit); its players and
        spectators are told."""
        self.engine.reset_session(session)
        self.engine.broadcast_status(session, "reset")

    def delete(self, session: Session) -> None:
        self.engine.close_session(session, "session deleted")
