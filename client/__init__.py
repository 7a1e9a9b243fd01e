"""The pygame client: a window where two people play the world model (docs/CLIENT.md).

- `app` (`playmodel play` / `python -m client play`): command line and the modes (live,
  spectating, replay), in the `window` (events, flip, the frame loop).
- `start_screen`: stage, characters and who plays port 2, before a game.
- `loops`: the game screens: a live session (inputs at 60 Hz up, frames down), a replay.
- `controls`: local devices to player slots; `controller` (a controller state as Melee reads
  it), `gamepads` (profiles) and `keyboard` (layouts) under it.
- `rest`: REST calls and server URLs; `local_server`: a server in a subprocess.
- `connection`: the websocket in background threads, and the inputs stamped and sent on it.
- `render`: stage, characters and HUD drawn from the predicted frames only; `camera`: the
  view of the stage.
- `figures`: each character as a figure posed by its action, its shield and its hitboxes.
- `replay`: real or recorded games (`.slp`, parquet) played back as frames.
- `assets`: stage geometry, action and character names, character sizes and hitboxes, read
  from `assets/*.json`.

May import `core` and `server.protocol` (both torch-free) and nothing else of ours: never
torch, `model` or `training`.
"""

import os

# pygame prints a greeting on import unless told not to; the command line has its own output.
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
