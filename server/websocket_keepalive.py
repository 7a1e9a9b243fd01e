"""uvicorn's websocket protocol (websockets' sans-I/O implementation, `ws="websockets-sansio"`)
with a keepalive that drops a client that stops reading.

The server pings every connection each PING_INTERVAL_S. A client answers a ping only once it
has read everything sent before it, so a client that has not answered within READ_TIMEOUT_S is
at least that far behind: it is not reading its frames. Without this, the frames of a client
that stopped reading pile up in the kernel's socket buffers (megabytes on loopback) before the
connection's own send queue fills, and uvicorn's default keepalive (a ping every 20 s, 20 s to
answer) dropped such a player after about 41 s (issue 21), not the 3 s docs/PROTOCOL.md says.

On a timeout the connection is failed with 1008 (uvicorn's own keepalive uses 1011, internal
error, which blames the server); the application hears of it at once, as a disconnect, so the
session pauses for that player now rather than when the socket finally closes; and a client
that has not read up to the close frame CLOSE_GRACE_S later has its socket aborted.

This overrides one method of uvicorn's protocol class (checked against uvicorn 0.55; the test
`test_a_player_that_never_reads_is_dropped_after_the_read_timeout` fails if it stops applying).
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from server.protocol import CLOSE_POLICY_VIOLATION

PING_INTERVAL_S = 1.0  # a ping every second (6 bytes each way): the check costs nothing
READ_TIMEOUT_S = 3.0  # as long as a player's send queue (180 frames at 60 Hz) holds
CLOSE_GRACE_S = 5.0  # for a client that catches up to read the close frame before the abort
NOT_READING = f"not reading: no answer to a ping in {READ_TIMEOUT_S:g} s"


class GameWebSocketProtocol(WebSocketsSansIOProtocol):
    def keepalive_timeout(self) -> None:
        self.pong_timer = None
        self.pending_ping_payload = None
        if self.close_sent or self.transport.is_closing():
            return
        self.conn.fail(CLOSE_POLICY_VIOLATION, NOT_READING)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.queue.put_nowait(
            {"type": "websocket.disconnect", "code": CLOSE_POLICY_VIOLATION, "reason": NOT_READING}
        )
        self.transport.close()  # sends what is buffered first, the close frame last
        self.loop.call_later(CLOSE_GRACE_S, self.transport.abort)
