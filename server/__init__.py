"""The game server: live sessions at 60 Hz and policy-vs-policy matches (not built yet)."""
