"""Live-server load: N sessions over real websockets on loopback, two players each.

    python bench/server_load.py [--sessions 1,8,16] [--seconds 60] [--config mamba2-large]
                                [--checkpoint CKPT] [--delay 2] [--jitter 6] [--json OUT]
                                [--threads N] [--quantize int8] [--no-record] [--copies 8]
                                [--step compiled|trace]

Starts `python -m server serve` in its own process, then for each N opens N sessions and two
play connections per session (one per port, as two people on two machines would), each
answering every frame it receives with its port's input stamped with that frame plus the input
delay (60 inputs a second per port while the server keeps up). Reports, per N:
- tick duration p50 / p99 and the share of late ticks (from the server's /metrics: ticks that
  ended after their slot);
- input-to-frame latency p50 / p99: from sending an input to receiving the frame that used it,
  minus the input delay (so it is what the server and the network add);
- inputs per minute per session: substituted (missing when their frame was made), recovered
  (filled in from the copies of the frames before that each input carries, `--copies`, 8 as
  the client sends; 0: one input per message, protocol 1's way) and lost (never applied: their
  frame left the rollback window with the substitute). Every player is a local one (loopback).
With `--jitter N` every input is held back 0..N frames at random (a bad network), so the server
rolls back; the report adds rollbacks, frames re-made and late inputs dropped (outside the
rollback window). A game that ends is reset at once, so every session keeps stepping for the
whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import msgpack
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe_machine

from model.quantize import QUANTIZE_CHOICES
from server import protocol as P
from server.serve import free_port

ROOT = Path(__file__).resolve().parent.parent
TICK = 1 / 60
CONTROLLER = set(P.Controller.model_fields)


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise KeyError(name)


class Player:
    def __init__(self, session: dict, port: int, delay: int, jitter: int = 0, copies: int = 0):
        self.session, self.port, self.delay, self.copies = session, port, delay, copies
        self.jitter, self.rng = jitter, random.Random(port)
        self.last_frame: int | None = None
        self.sent_at: dict[int, float] = {}
        self.latencies: list[float] = []
        self.frames = 0
        self.measuring = False
        self._template: dict | None = None

    async def run(self, stop: asyncio.Event) -> None:
        url = f"{self.session['play_url']}?token={self.session['tokens'][str(self.port)]}"
        async with websockets.connect(url, max_size=2**20) as ws:
            await ws.send(P.encode(P.Hello()))
            sender = asyncio.create_task(self._send(ws, stop))
            closer = asyncio.create_task(self._close_on(stop, ws))
            try:
                async for data in ws:  # ends when `stop` closes the connection
                    await self._receive(data, ws)
            except websockets.ConnectionClosed:
                pass
            finally:
                sender.cancel()
                closer.cancel()

    @staticmethod
    async def _close_on(stop: asyncio.Event, ws) -> None:
        await stop.wait()
        await ws.close()

    async def _receive(self, data: bytes, ws) -> None:
        """Frames are read with msgpack alone, not validated: the load generator shares the
        server's two cores, and 32 players validating 32 frames a tick each cost it about a
        fifth of a core. (The tests validate every message the server sends.)"""
        now = time.perf_counter()
        raw = msgpack.unpackb(data)
        if raw.get("type") == "frame":
            if raw.get("corrected"):
                return  # a rollback re-made a frame already counted
            frame = raw["frame"]
            self.last_frame = frame
            self.frames += 1
            if not self.jitter:  # answer each frame at once, as a game loop would
                target = frame + self.delay
                self.sent_at[target] = time.perf_counter()
                await ws.send(self._input(target))
            sent = self.sent_at.pop(frame, None)
            used = self.port not in raw.get("substituted", ())
            if sent is not None and self.measuring and used:
                self.latencies.append(now - sent - self.delay * TICK)
            return
        message = P.decode_server(data)
        if isinstance(message, P.Welcome):
            self.last_frame = message.frame
        elif isinstance(message, P.Status):
            if message.status == "over" and self.port == 1:
                await ws.send(P.encode(P.Control(action="reset")))
            if message.reason == "reset":
                self.sent_at.clear()
                self.last_frame = message.frame

    def _input(self, frame: int, **fields) -> bytes:
        """An input message as the client encodes it (P.encode: fields at their defaults left
        out), with `copies` copies of the frames before it, each the same controller as this
        player holds one all game; the template is validated once (P.Input), then only the
        frame number changes."""
        if self._template is None:
            self._template = msgpack.unpackb(P.encode(P.Input(frame=0, port=self.port)))
        controller = {k: v for k, v in {**self._template, **fields}.items() if k in CONTROLLER}
        previous = {"previous": [controller] * self.copies} if self.copies else {}
        message = {**self._template, **fields, **previous, "frame": frame}
        return msgpack.packb(message, use_bin_type=True)

    async def _send(self, ws, stop: asyncio.Event) -> None:
        """With jitter: inputs on the client's own 60 Hz clock, each held back 0..jitter
        frames (without jitter the receive loop answers every frame at once instead)."""
        if not self.jitter:
            return
        next_at = time.perf_counter()
        while not stop.is_set():
            next_at += TICK
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            if self.last_frame is None:
                continue
            target = self.last_frame + self.delay
            data = self._input(target, stick_x=0.5)
            if self.jitter:  # a bad network: this input arrives 0..jitter frames late
                late = self.rng.randint(0, self.jitter) * TICK
                asyncio.get_running_loop().call_later(late, self._send_late, ws, data)
                continue
            self.sent_at[target] = time.perf_counter()
            await ws.send(data)

    def _send_late(self, ws, data: bytes) -> None:
        task = asyncio.ensure_future(ws.send(data))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # closed: ignore


async def run_load(
    base: str, sessions: int, seconds: float, delay: int, jitter: int, copies: int
) -> dict:
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        created = []
        for _ in range(sessions):
            response = await client.post("/v1/sessions", json={"input_delay": delay})
            response.raise_for_status()
            created.append(response.json())
        players = [Player(s, port, delay, jitter, copies) for s in created for port in (1, 2)]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(p.run(stop)) for p in players]
        await asyncio.sleep(1.0)  # connect
        # The 32 players of this one process are 32 people's clients: a full garbage
        # collection of all their objects held it for 75-110 ms here, and every session's
        # inputs then missed 5 frames, a stall no real player's own client shares. So the
        # players' objects are frozen out of the collector's sight and it does not run
        # during the measured window (as the server and the game client freeze theirs).
        gc.collect()
        gc.freeze()
        gc.disable()
        await asyncio.sleep(2.0)  # warm up, and any input that collection held is in
        before = (await client.get("/metrics")).text
        for p in players:
            p.measuring = True
        await asyncio.sleep(seconds)
        after = (await client.get("/metrics")).text
        gc.enable()
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in created:
            await client.delete(
                f"/v1/sessions/{s['session_id']}",
                headers={"X-Session-Token": s["session_token"]},
            )
    ticks = metric(after, "playmodel_ticks_total") - metric(before, "playmodel_ticks_total")
    late = metric(after, "playmodel_late_ticks_total") - metric(
        before, "playmodel_late_ticks_total"
    )

    def delta(name: str) -> float:
        return metric(after, name) - metric(before, name)

    substituted = delta("playmodel_substituted_inputs_total")
    per_minute = 60.0 / seconds / sessions  # a count in the run -> per minute per session
    latencies = sorted(x for p in players for x in p.latencies)

    def q(values, fraction):
        return values[min(len(values) - 1, int(fraction * len(values)))] if values else float("nan")

    return {
        "sessions": sessions,
        "seconds": seconds,
        "ticks": int(ticks),
        "ticks_per_second": round(ticks / seconds, 1),
        "tick_p50_ms": round(
            1e3 * metric(after, 'playmodel_recent_tick_seconds{quantile="0.5"}'), 2
        ),
        "tick_p99_ms": round(
            1e3 * metric(after, 'playmodel_recent_tick_seconds{quantile="0.99"}'), 2
        ),
        "late_tick_share": round(late / max(ticks, 1), 5),
        "substituted_input_share": round(substituted / max(1, 2 * ticks * sessions), 5),
        "copies": copies,
        "substituted_per_min_per_session": round(substituted * per_minute, 2),
        "recovered_per_min_per_session": round(
            delta("playmodel_recovered_inputs_total") * per_minute, 2
        ),
        "lost_per_min_per_session": round(delta("playmodel_lost_inputs_total") * per_minute, 2),
        "jitter_frames": jitter,
        "rollbacks": int(delta("playmodel_rollbacks_total")),
        "rolled_back_frames": int(delta("playmodel_rolled_back_frames_total")),
        "late_inputs_dropped": int(delta("playmodel_late_inputs_total")),
        "latency_p50_ms": round(1e3 * q(latencies, 0.5), 2),
        "latency_p99_ms": round(1e3 * q(latencies, 0.99), 2),
        "latency_mean_ms": round(1e3 * statistics.fmean(latencies), 2) if latencies else None,
        "frames_received": sum(p.frames for p in players),
    }


def run(coroutine):
    """uvloop where installed (the server's loop too): the players' own overhead is CPU the
    server under test does not get."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="1,8,16")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--config", help="serve an untrained model of this config")
    parser.add_argument("--checkpoint", help="serve this checkpoint (default: the demo one)")
    parser.add_argument("--delay", type=int, default=2)
    parser.add_argument(
        "--jitter", type=int, default=0, help="delay each input by 0..N frames (rollback load)"
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads in the server (default: its own, cores less one)"
    )
    parser.add_argument("--quantize", choices=QUANTIZE_CHOICES, help="the server's --quantize")
    parser.add_argument(
        "--step",
        choices=("compiled", "trace"),
        default="compiled",
        help="the CPU step the server runs: compiled ahead of time (first made with `playmodel "
        "compile-step` if not cached) or the trace (COMPILED_STEP=false)",
    )
    parser.add_argument("--no-record", action="store_true", help="server records nothing")
    parser.add_argument(
        "--copies",
        type=int,
        default=P.REDUNDANT_INPUTS,
        choices=range(P.REDUNDANT_INPUTS + 1),
        metavar=f"0..{P.REDUNDANT_INPUTS}",
        help="copies of earlier frames' inputs each input carries (0: one input per message)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    port = free_port()
    command = [
        sys.executable,
        "-m",
        "server",
        "serve",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    command += ["--max-sessions", "256"]
    if args.config:
        command += ["--config", args.config]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.quantize:
        command += ["--quantize", args.quantize]
    if args.checkpoint:
        command += ["--checkpoint", args.checkpoint]
    env = os.environ.copy()
    if args.step == "trace":
        env["PLAYMODEL_COMPILED_STEP"] = "0"
    elif not args.quantize:  # compiled before the server starts, so that it serves from tick 1
        model_args = ["--checkpoint", args.checkpoint] if args.checkpoint else []
        model_args += ["--config", args.config] if args.config else []
        compile_step = [sys.executable, "-m", "server", "compile-step", *model_args]
        subprocess.run(compile_step, cwd=ROOT, env=env, check=True)
    if args.no_record:
        env["PLAYMODEL_RECORDINGS_DIR"] = ""
    server = subprocess.Popen(command, cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(f"{base}/healthz", timeout=2).json()
                break
            except httpx.HTTPError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.3)
        print(
            f"# {describe_machine()}; model {health['model']} on {health['device']}, "
            f"step {health['step']}"
        )
        results = []
        for n in [int(x) for x in args.sessions.split(",")]:
            result = run(run_load(base, n, args.seconds, args.delay, args.jitter, args.copies))
            result["step"] = httpx.get(f"{base}/healthz", timeout=5).json()["step"]
            results.append(result)
            holds = result["tick_p99_ms"] <= 16.7 and result["late_tick_share"] < 0.001
            print(json.dumps(result), "HOLDS" if holds else "does not hold", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": describe_machine(), "model": health["model"], "results": results},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
