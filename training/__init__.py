"""Training package: from Slippi replays to checkpoints.

- `ingest` (`playmodel parse`): replays -> per-game parquet files + manifest (docs/DATA.md).

May import `core` and `model`; never `server` or `client`. Run as `python -m training <command>`.
"""
