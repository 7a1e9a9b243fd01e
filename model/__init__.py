"""The world model and everything it defines: the game state schema, Melee's ids and rules.

`model` imports none of the other packages (`training`, `server`, `client`); they import it.
Heavy dependencies (torch) are imported only by the modules that need them, so that
`model.game_state` stays usable without torch.
"""
