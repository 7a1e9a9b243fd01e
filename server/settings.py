"""Server settings: defaults, overridden by environment variables named `PLAYMODEL_<FIELD>`
(for example `PLAYMODEL_CHECKPOINT=/data/best.safetensors`, `PLAYMODEL_MAX_SESSIONS=8`), and
by `playmodel serve`'s options."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.checkpoint import DEMO_CHECKPOINT

ASSETS = Path(__file__).resolve().parent.parent / "assets"


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PLAYMODEL_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    checkpoint: Path | None = Field(
        None, description="weights to serve; default: the bundled demo checkpoint"
    )
    untrained_config: str | None = Field(
        None,
        description="serve an untrained model of this config instead of a checkpoint (load "
        "tests); with neither and no demo checkpoint, an untrained mamba2-small is served",
    )
    device: Literal["auto", "cpu", "cuda"] | str = "auto"
    cuda_graphs: bool = Field(
        True, description="on CUDA, replay each tick from a graph per batch-size bucket"
    )
    quantize: Literal["none", "int8"] = Field(
        "none",
        description="on CPU, int8 weights for the mixers' products: mamba2-large steps 1.6-2.4x "
        "faster, the frames drift slightly from the fp32 model's (docs/MODEL.md)",
    )
    trace_step: bool = Field(
        True,
        description="on CPU, run each tick's model step from a TorchScript trace (the same "
        "frames, less per-op overhead)",
    )
    compiled_step: bool = Field(
        True,
        description="on CPU, with the trace: run each tick from the step compiled ahead of time "
        "(torch.export + AOTInductor, 2-3x faster, frames equal to ~1e-4), compiled once per "
        "model and machine in a background process while the trace serves",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="torch CPU threads (default on CPU: one fewer than the cores, at least 1)",
    )
    temperature: float = Field(0.0, ge=0.0, description="0: argmax decoding")
    tick_rate: float = Field(60.0, gt=0.0, le=1000.0)
    max_sessions: int = Field(32, ge=1)
    input_delay: int = Field(2, ge=0, le=30, description="default input delay, frames")
    rollback_frames: int = Field(
        7,
        ge=0,
        le=60,
        description="a late input up to this many frames old rolls the game back (0: never)",
    )
    max_input_lead: int = Field(
        120, ge=1, description="inputs stamped further ahead of the game than this are refused"
    )
    max_input_lag: int = Field(
        60, ge=1, description="inputs this many frames behind the game get an error"
    )
    idle_timeout: float = Field(
        300.0, gt=0.0, description="seconds a session may have no player before it is closed"
    )
    api_key: SecretStr | None = Field(
        None,
        description="if set, REST calls under /v1 need X-API-Key; a server bound to a "
        "non-loopback address without one makes one up at start (server/security.py)",
    )
    replay_dir: Path = ASSETS / "sample_replays"
    recordings_dir: Path | None = Field(
        Path("runs/recordings"),
        description="every session and match is recorded here (unset or empty: no recordings)",
    )
    max_upload_bytes: int = Field(16 * 1024 * 1024, ge=1)
    max_body_bytes: int | None = Field(
        None,
        ge=1,
        description="a request body over this is refused (413) while it arrives; default: "
        "room for a base64 upload of max_upload_bytes plus 64 KiB",
    )
    allow_policy_modules: bool = Field(
        False, description="let REST matches load policies from Python paths (module:callable)"
    )
    policy_packages: str = Field(
        "",
        description="comma-separated packages whose modules may be policies "
        "(with allow_policy_modules); nothing else is imported",
    )
    policy_folder: Path | None = Field(
        None, description="a folder whose .py files may be policies (with allow_policy_modules)"
    )
    policy_time_limit_ms: float = Field(
        50.0, gt=0, description="a module policy's call taking longer ends its game"
    )
    max_spectators: int = Field(16, ge=0, description="watch connections per session")
    max_bot_sessions: int = Field(
        2, ge=0, description="sessions with every port a policy (they run with nobody playing)"
    )
    max_match_frames_held: int = Field(
        1_000_000,
        ge=1,
        description="frames the matches may hold in memory (about 1 KB each): those queued "
        "or running count their max_frames, finished ones their frames until forgotten",
    )
    max_matches: int = Field(64, ge=1, description="matches queued or running at once")
    match_batch: int | None = Field(
        None,
        ge=1,
        description="matches stepped together, the others wait queued (default: 8 on a CPU, "
        "64 on a GPU): a step of them runs between two live ticks and must fit there",
    )
    max_match_frames: int = Field(8 * 60 * 60 + 200, ge=1)
    keep_finished_matches: int = Field(256, ge=0)
    messages_per_second: float = Field(
        600.0, gt=0, description="a connection sending faster than this is closed"
    )
    send_queue_frames: int = Field(
        180, ge=1, description="frames queued for a player before it counts as not reading"
    )

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def overload_hint(self, device: str) -> str:
        """What the warning of a tick loop that falls behind suggests, if anything."""
        if device.startswith("cpu") and self.quantize == "none":
            return "; on a CPU, QUANTIZE=int8 makes each tick faster (docs/SERVER.md)"
        return ""

    def resolved_threads(self, device: str) -> int | None:
        """torch's CPU threads: `threads` if set; serving on CPU, one fewer than the cores
        this process may run on (at least one); on a GPU, torch's own choice (None).

        Why not torch's default of one per core: the server has a second busy thread, the
        event loop. With both cores of a 2-core machine given to torch, the step's larger
        products split across an OpenMP thread that competes with the event loop, and 8
        live sessions of the demo model had 1.4-7.9% late ticks (tick p99 16.5-19.9 ms)
        against 0.3-0.5% (p99 14.1-14.3 ms) with one thread (BENCHMARKS.md)."""
        if self.threads is not None:
            return self.threads
        if not device.startswith("cpu"):
            return None
        if hasattr(os, "sched_getaffinity"):
            cores = len(os.sched_getaffinity(0))
        else:
            cores = os.cpu_count() or 1
        return max(1, cores - 1)

    def resolved_match_batch(self, device: str) -> int:
        """`match_batch` if set; else 8 games on a CPU, where a step of the demo model takes
        about 6 ms for 8 games and 49 ms for 64 on 2 cores (a tick's period is 16.7 ms), and
        64 on a GPU, where a bigger batch costs little more."""
        if self.match_batch is not None:
            return self.match_batch
        return 8 if device.startswith("cpu") else 64

    def body_limit(self) -> int:
        """The largest request body accepted: `max_body_bytes`, or by default what a JSON body
        with a base64 upload of `max_upload_bytes` needs (4 characters per 3 bytes) plus 64 KiB
        for the rest of the request."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return -(-self.max_upload_bytes // 3) * 4 + 64 * 1024

    def allowed_policy_packages(self) -> list[str]:
        return [name.strip() for name in self.policy_packages.split(",") if name.strip()]

    def resolved_checkpoint(self) -> Path | None:
        if self.checkpoint is not None or self.untrained_config is not None:
            return self.checkpoint
        return DEMO_CHECKPOINT if DEMO_CHECKPOINT.exists() else None
