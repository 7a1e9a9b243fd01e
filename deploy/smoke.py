"""What deploy/check-image.sh asks of a running server: run inside the image (it needs the
image's msgpack and websockets, nothing of the host) against a server on this network.

    python deploy/smoke.py http://127.0.0.1:8000 --api-key KEY

In order: /healthz answers; a session of two human ports is created and its play websocket
streams frames while both ports send inputs; the session is deleted (its recording is then
closed); a REST match between two scripted policies is played to the end. Prints one line per
step and exits 1 at the first step that fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request

import msgpack
from websockets.sync.client import connect

FRAMES = 120  # two seconds of play at 60 Hz
MATCH_FRAMES = 600


def call(base: str, method: str, path: str, key: str, body: dict | None = None, **headers):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("X-API-Key", key)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    for name, value in headers.items():
        request.add_header(name.replace("_", "-"), value)
    with urllib.request.urlopen(request, timeout=600) as answer:
        raw = answer.read()
        return answer.status, json.loads(raw) if raw else None


def wait_healthy(base: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=5) as answer:
                return json.loads(answer.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"smoke: {base}/healthz did not answer in {timeout:.0f} s: {e}"
                ) from e
            time.sleep(1)


def play(session: dict) -> int:
    """Both ports over one websocket: hello, then an input per frame received. Frames seen."""
    tokens = "&".join(f"token={t}" for t in session["tokens"].values())
    frames = 0
    with connect(f"{session['play_url']}?{tokens}", max_size=2**22) as ws:
        ws.send(msgpack.packb({"type": "hello", "version": 1, "role": "player", "client": "smoke"}))
        welcome = msgpack.unpackb(ws.recv(timeout=30))
        assert welcome["type"] == "welcome", welcome
        delay, ports = welcome["input_delay"], welcome["ports"]
        print(f"smoke: welcome: ports {ports}, stage {welcome['stage_name']}", flush=True)
        last = welcome["frame"]
        while frames < FRAMES:
            for port in ports:
                ws.send(
                    msgpack.packb(
                        {"type": "input", "frame": last + delay, "port": port, "stick_x": 1.0}
                        | {"stick_y": 0.0, "buttons": ["A"] if frames % 20 == 0 else []}
                    )
                )
            message = msgpack.unpackb(ws.recv(timeout=30))
            if message["type"] == "frame":
                frames += 1
                last = max(last, message["frame"])
            elif message["type"] == "error":
                raise SystemExit(f"smoke: the server answered an error: {message}")
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="the server's URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--wait", type=float, default=300, help="seconds for /healthz at most")
    args = parser.parse_args()
    base = args.base.rstrip("/")

    health = wait_healthy(base, args.wait)
    print(f"smoke: /healthz: {json.dumps(health)}", flush=True)

    started = time.monotonic()
    _, session = call(base, "POST", "/v1/sessions", args.api_key, {"seed": 1})
    frames = play(session)
    seconds = time.monotonic() - started
    print(f"smoke: session {session['session_id']}: {frames} frames in {seconds:.1f} s", flush=True)
    status, _ = call(
        base,
        "DELETE",
        f"/v1/sessions/{session['session_id']}",
        args.api_key,
        X_Session_Token=session["session_token"],
    )
    assert status == 204, status

    body = {"p1": "approach", "p2": "random", "max_frames": MATCH_FRAMES, "seed": 2}
    _, job = call(base, "POST", "/v1/matches", args.api_key, body)
    _, done = call(
        base, "GET", f"/v1/matches/{job['match_id']}?wait=true&timeout=300", args.api_key
    )
    if done["status"] != "done":
        raise SystemExit(f"smoke: match {job['match_id']} ended {done['status']}: {done}")
    print(
        f"smoke: match {job['match_id']}: {done['status']}, {done['frames_played']} frames",
        flush=True,
    )
    print("smoke: ok", flush=True)


if __name__ == "__main__":
    try:
        main()
    except (AssertionError, urllib.error.HTTPError) as e:
        sys.exit(f"smoke: failed: {e!r}")
