"""The game server side: headless policy-vs-policy matches (`match`); live sessions at 60 Hz
over websockets and the REST endpoint come next.

May import `model` (and `training.replay_reader` to read `.slp` starts); never `client`.
Run as `python -m server <command>` or `playmodel <command>`.
"""
