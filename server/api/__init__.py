"""The HTTP API: one router per resource (server/api/routes/), the answers' schemas
(schemas.py) and what the routes depend on (deps.py: settings, services, the API key, a
session's token). Handlers only translate HTTP: the work is done by the services
(server/session_service.py, server/match_service.py, server/recordings.py,
server/match_downloads.py, server/live_socket.py), which import no FastAPI."""
