"""The world model: the Mamba-2 network, how it reads and predicts a frame, the rules and the
simulation that steps it, checkpoints and scripted policies.

`model` imports `core` (the game-state schema, Melee's ids and stages) and none of the other
packages (`training`, `server`, `client`); they import it.
"""
