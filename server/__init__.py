"""The game server: live sessions at 60 Hz over websockets (`serve`), matches and recordings
over REST, and headless policy-vs-policy matches (`match`).

May import `core` and `model`; never `training` or `client`. `protocol` (the wire messages)
imports neither torch nor FastAPI, since the client imports it.
Run as `python -m server <command>` or `playmodel <command>`.
"""
