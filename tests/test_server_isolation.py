"""One bad client must not hurt another (issue 21): each attack is made on loopback against the
real server, and the test asserts what the attacker gets (status, close code, message) and,
where it applies, that a healthy session kept receiving its frames meanwhile."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model.frames import table_from_frames
from server.match import read_replay_frames
from server.serve import ServerThread
from server.settings import ServerSettings

pytestmark = pytest.mark.timeout(300)

SAMPLE_REPLAY = Path(__file__).resolve().parent.parent / "assets" / "sample_replays" / "v3.18.slp"
PANICKING_REPLAY = "slippi-js__history__slp__gameModeTest__10-Man.slp"  # shared/replays/fixtures


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    recordings = tmp_path_factory.mktemp("recordings")
    with ServerThread(ServerSettings(port=0, recordings_dir=recordings)) as running:
        yield running


def upload(table: pa.Table) -> dict:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    data = base64.b64encode(buffer.getvalue()).decode()
    return {"start": {"data": data, "format": "parquet", "frame": 300}}


@pytest.fixture(scope="module")
def replay_table() -> pa.Table:
    """A real game in the dataset schema, as a client would upload it."""
    return table_from_frames(read_replay_frames(SAMPLE_REPLAY))


def with_column(table: pa.Table, name: str, column: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, column)


# ---------------------------------------------------------------------- 1: uploads, isolation
@pytest.mark.parametrize(
    ("column", "dtype", "expected"),
    [("p1_stocks", "float32", "uint8"), ("p1_x", "int32", "float32")],
)
def test_an_upload_whose_column_has_another_dtype_is_refused(
    server, replay_table, column, dtype, expected
):
    values = replay_table.column(column).cast(pa.from_numpy_dtype(dtype), safe=False)
    table = with_column(replay_table, column, values)
    response = httpx.post(f"{server.url}/v1/sessions", json=upload(table), timeout=60)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert detail == (
        f"start.data: column {column} has dtype {dtype}; the game-state schema needs {expected}"
    )
    # A good upload of the same game starts.
    good = httpx.post(f"{server.url}/v1/sessions", json=upload(replay_table), timeout=60)
    assert good.status_code == 201, good.text
    httpx.delete(f"{server.url}/v1/sessions/{good.json()['session_id']}")


@pytest.mark.parametrize(
    ("character", "arrow_type", "expected"),
    [
        (33, pa.uint8(), "p1_character 33 is not a character id"),
        (99999, pa.int64(), "column p1_character has dtype int64"),
    ],
)
def test_an_upload_with_no_real_character_is_refused(
    server, replay_table, character, arrow_type, expected
):
    column = pa.array([character] * replay_table.num_rows, type=arrow_type)
    table = with_column(replay_table, "p1_character", column)
    response = httpx.post(f"{server.url}/v1/sessions", json=upload(table), timeout=60)
    assert response.status_code == 400, response.text
    assert expected in response.json()["detail"]


# ---------------------------------------------------------------------- 10: 400, not 500
def test_unusable_requests_get_400_naming_the_field(server, replays):
    panicking = base64.b64encode((replays / "fixtures" / PANICKING_REPLAY).read_bytes()).decode()
    cases = [
        ("sessions", {"seed": 2**64}, "seed: 18446744073709551616 does not fit in 64 bits"),
        ("matches", {"seed": 2**64}, "seed: 18446744073709551616 does not fit in 64 bits"),
        ("sessions", {"characters": ["FOX", "999999999999999999999"]}, "characters[1]: unknown"),
        ("matches", {"characters": [33, "FOX"]}, "characters[0]: unknown character '33'"),
        ("sessions", {"characters": ["FOX", 99999]}, "characters[1]: unknown character '99999'"),
        ("sessions", {"start": {"replay": "v3.18\x00.slp"}}, "start.replay: 'v3.18\\x00.slp' has"),
        (
            "sessions",
            {"start": {"data": panicking, "format": "slp"}},
            "start.data: cannot be read as a replay (the replay parser panicked",
        ),
    ]
    for endpoint, body, detail in cases:
        response = httpx.post(f"{server.url}/v1/{endpoint}", json=body, timeout=60)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["detail"].startswith(detail), response.json()["detail"]
    assert httpx.get(f"{server.url}/healthz").json()["status"] == "ok"
