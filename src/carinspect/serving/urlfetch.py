"""Fetching an image by URL without becoming a proxy into the cluster (SSRF).

Only http and https; the host is resolved once and every address it resolves to must be public
(loopback, private, link-local incl. 169.254.169.254, multicast, reserved, unspecified and their
IPv6 and IPv4-mapped forms are refused) unless it lies in a network the operator allowed; the
connection then goes to the address that was checked, with the original name in the Host header
and TLS SNI, so a second DNS answer cannot redirect it (DNS rebinding). Redirects are followed by
hand, at most three, each checked again. A timeout bounds the whole fetch and a byte cap bounds
the body as sent: the request asks for ``Accept-Encoding: identity`` and an answer with any other
Content-Encoding is refused, so a 2 KB gzip bomb is never inflated (a probe's stalled the server
for seconds and took 2.4 GB). Site-local, 6to4-relay and IETF-assigned ranges that Python's
``ipaddress`` calls global are refused too, and an IPv4 address inside IPv6 (mapped, 6to4,
Teredo, NAT64) is judged as itself.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urljoin

import httpx

from carinspect.errors import InputError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]
MAX_REDIRECTS = 3
_REDIRECTS = {301, 302, 303, 307, 308}


class UrlFetchError(InputError):
    """A URL that is refused or cannot be fetched; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def parse_networks(text: str) -> list[IPNetwork]:
    """Comma-separated CIDRs (URL_FETCH_ALLOW_CIDRS) -> networks; a bad one is an error."""
    nets: list[IPNetwork] = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            try:
                nets.append(ipaddress.ip_network(part, strict=False))
            except ValueError as err:
                raise InputError(
                    f"URL_FETCH_ALLOW_CIDRS: {part!r} is not a network: {err}"
                ) from err
    return nets


# Ranges Python's ipaddress calls global that a fetch must not reach anyway.
_REFUSED: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), why)
    for net, why in (
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.88.99.0/24", "6to4 relay anycast"),
        ("fec0::/10", "site-local"),
        ("3fff::/20", "documentation"),
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known prefix: an IPv4 address inside


def _embedded(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, Teredo, NAT64), if any."""
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)


def refusal(ip: IPAddress, allowed: Sequence[IPNetwork] = ()) -> str | None:
    """Why ``ip`` may not be fetched from, or None when it may."""
    if any(ip in net for net in allowed):
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded(ip)
        if embedded is not None:
            inner = refusal(embedded, allowed)
            if inner is not None:
                return f"{inner} (embedded in {ip})"
    for kind in ("unspecified", "loopback", "link_local", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    for net, why in _REFUSED:
        if ip.version == net.version and ip in net:
            return why
    if not ip.is_global:
        return "not globally routable"
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the system resolver, off the event loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def _checked_address(url: httpx.URL, allowed: Sequence[IPNetwork], resolver: Resolver) -> str:
    host = url.host
    if not host:
        raise UrlFetchError(f"{url}: no host")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = await resolver(host, port)
        except OSError as err:
            raise UrlFetchError(f"{url}: host {host!r} does not resolve ({err})") from err
    if not addresses:
        raise UrlFetchError(f"{url}: host {host!r} does not resolve")
    for addr in addresses:
        why = refusal(ipaddress.ip_address(addr.split("%")[0]), allowed)
        if why is not None:
            raise UrlFetchError(f"{url}: refused, {host} resolves to {addr} ({why})", status=400)
    return addresses[0].split("%")[0]


async def fetch(
    url: str,
    *,
    timeout_s: float,
    max_bytes: int,
    allowed: Sequence[IPNetwork] = (),
    resolver: Resolver = system_resolver,
) -> bytes:
    """The body of ``url`` (status 200), fetched under the rules in the module docstring."""
    try:
        async with asyncio.timeout(timeout_s):
            return await _fetch(url, max_bytes, allowed, resolver, timeout_s)
    except TimeoutError as err:
        raise UrlFetchError(f"{url}: no complete answer within {timeout_s:g} s", 422) from err


async def _fetch(
    url: str, max_bytes: int, allowed: Sequence[IPNetwork], resolver: Resolver, timeout_s: float
) -> bytes:
    current = url
    async with httpx.AsyncClient(
        follow_redirects=False, timeout=timeout_s, trust_env=False
    ) as http:
        for _ in range(MAX_REDIRECTS + 1):
            try:
                target = httpx.URL(current)
            except httpx.InvalidURL as err:
                raise UrlFetchError(f"{current!r} is not a valid URL: {err}") from err
            if target.scheme not in ("http", "https"):
                raise UrlFetchError(f"{current}: only http and https URLs are fetched")
            if target.userinfo:
                raise UrlFetchError(f"{current}: credentials in URLs are not accepted")
            address = await _checked_address(target, allowed, resolver)
            host_header = target.host if target.port is None else f"{target.host}:{target.port}"
            extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
            request = http.build_request(
                "GET", target.copy_with(host=address), headers={"Host": host_header, "Accept-Encoding": "identity"},
                extensions=extensions,
            )  # fmt: skip
            try:
                response = await http.send(request, stream=True)
            except httpx.HTTPError as err:
                raise UrlFetchError(f"{current}: fetch failed: {err}", 422) from err
            try:
                if response.status_code in _REDIRECTS:
                    location = response.headers.get("location")
                    if not location:
                        raise UrlFetchError(f"{current}: redirect without a Location", 422)
                    current = urljoin(current, location)
                    continue
                if response.status_code != 200:
                    raise UrlFetchError(f"{current}: answered HTTP {response.status_code}", 422)
                coding = response.headers.get("content-encoding", "identity").strip().lower()
                if coding not in ("", "identity"):  # asked for identity: a gzip bomb is refused
                    raise UrlFetchError(
                        f"{current}: answered with Content-Encoding {coding!r}; only an unencoded "
                        "body (identity) is accepted",
                        422,
                    )
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise UrlFetchError(
                        f"{current}: body of {declared} bytes exceeds {max_bytes}", 413
                    )
                body = bytearray()
                async for chunk in response.aiter_raw():  # bytes as sent: nothing inflated
                    body.extend(chunk)
                    if len(body) > max_bytes:
                        raise UrlFetchError(f"{current}: body exceeds {max_bytes} bytes", 413)
                return bytes(body)
            finally:
                await response.aclose()
    raise UrlFetchError(f"{url}: more than {MAX_REDIRECTS} redirects", 422)
