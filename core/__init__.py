"""The torch-free core that every package shares: what a Melee game is, and its files.

- `game_state`: the one definition of a frame (every field once) and the dataset's schema.
- `melee_ids`, `stages`, `actions`: Melee's ids, the legal stages (geometry, aliases) and the
  action states' names and categories, read from `assets/*.json`.
- `events`: KO, respawn and game end, and how a recorded game shows them.
- `controller`: the one `Controller` (sticks, triggers, buttons by name) that policies, the
  wire protocol and the client share, the buttons' bits, and Melee's processing of it into
  the dataset's controller columns.
- `wire_frame`: a frame as the wire protocol sends it.
- `replay_reader`: a Slippi replay to a table in the dataset's schema; `manifest`: the
  dataset's manifest; `atomic_file`: writes a reader never sees half done; `host_memory`:
  glibc's malloc told to keep freed memory.

Imports numpy, pyarrow and peppi-py, never torch and none of `model`, `training`, `server` or
`client`, which all import it (tests/test_import_rule.py holds this). Nothing here runs on
its own.
"""
