"""Inviting people to a game: this machine's address on the local network, and the lines that
tell a second player and spectators how to join (`playmodel play --lan`, docs/CLIENT.md).

Finding the address reads only this machine's own interfaces and routing table: nothing is
sent on the network.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

log = logging.getLogger(__name__)

# A documentation address (RFC 5737, TEST-NET-2): never a real host, but routed like any
# other outside address, so the kernel answers with the address of the interface that holds
# the default route. Connecting a UDP socket only consults the routing table.
ROUTE_PROBE = ("198.51.100.1", 9)


def _usable(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_unspecified or ip.is_link_local or ip.is_multicast)


def lan_address() -> str | None:
    """This machine's IPv4 address on its network (the one other machines reach it at), or
    None when it has none besides loopback.

    First the address the default route leaves from (a UDP socket "connected" to an outside
    address: no packet is sent); without a default route, an address the host name resolves
    to that is not loopback."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(ROUTE_PROBE)
            address = probe.getsockname()[0]
        if _usable(address):
            return address
    except OSError as e:  # no route: no network, or only loopback
        log.debug("no default route (%s); trying the host name's addresses", e)
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError as e:
        log.debug("the host name does not resolve (%s)", e)
        return None
    for *_, sockaddr in infos:
        if _usable(sockaddr[0]):
            return sockaddr[0]
    return None


def spectator_page(base: str, session_id: str) -> str:
    """The browser spectator page of a session on the server at `base` (http://host:port)."""
    return f"{base}/watch/{session_id}"


def invitation(
    base: str,
    session_id: str,
    watch_url: str,
    tokens: dict[str, str],
    mine: list[str],
) -> list[str]:
    """The lines to print for the people who are not at this window: the join command of each
    human port this window does not play, and how to watch (the pygame client and a
    browser). Joining and watching need no API key: a port's token admits its player, and
    the session id its spectators."""
    lines = []
    for port in sorted(tokens):
        if port not in mine:
            lines.append(
                f"player {port}: playmodel play --server {base} --session {session_id} "
                f"--token {tokens[port]}"
            )
    lines.append(f"spectators: playmodel play --watch {watch_url}")
    lines.append(f"  or in a browser: {spectator_page(base, session_id)}")
    return lines
