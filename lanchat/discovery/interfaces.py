"""Which IPv4 interfaces discovery uses, and which of them a peer's address belongs to.

Owns the interface choice (explicit names, or by default every interface that is up and has an IPv4
broadcast address; `lo` maps to 127.255.255.255) and the "same subnet" questions the announcer asks
(which address do I advertise to this prober, is it directly connected). psutil is read only in
``list_interfaces`` and ``list_interface_names``; everything else takes the lists as arguments and is
pure. Never sends a packet.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import psutil

log = logging.getLogger("lanchat.discovery")


@dataclass(frozen=True, slots=True)
class Interface:
    """One IPv4 address of one interface (an interface with two addresses gives two of these)."""

    name: str
    address: str
    netmask: str
    broadcast: str | None  # where beacons and probes go; None: this address cannot broadcast
    up: bool = True
    peer: str | None = None  # the far end of a point-to-point link (VPN tunnels)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{self.address}/{self.netmask}", strict=False)

    @property
    def is_loopback(self) -> bool:
        return ipaddress.IPv4Address(self.address).is_loopback

    def contains(self, ip: str) -> bool:
        """Is ``ip`` on this interface's subnet (or its point-to-point peer)?"""
        try:
            addr = ipaddress.IPv4Address(ip)
        except ValueError:
            return False
        if self.peer is not None and addr == ipaddress.IPv4Address(self.peer):
            return True
        return addr in self.network


def list_interfaces() -> list[Interface]:
    """Every IPv4 address of every interface, as psutil sees it now (loopback with its broadcast filled in)."""
    try:
        addrs = psutil.net_if_addrs()
        stats = psutil.net_if_stats()
    except OSError as exc:
        log.warning("cannot list network interfaces: %s (hint: is /proc or /sys mounted?)", exc)
        return []
    out: list[Interface] = []
    for name, entries in addrs.items():
        st = stats.get(name)
        up = bool(st.isup) if st is not None else False
        for entry in entries:
            if entry.family != socket.AF_INET or not entry.address or not entry.netmask:
                continue
            iface = Interface(name, entry.address, entry.netmask, entry.broadcast or None, up, entry.ptp or None)
            # The subnet's broadcast where Linux routes it but psutil reports none: 127.0.0.0/8, and an
            # address added without one (`ip addr add 10.0.0.7/24 dev eth0`, no `brd +`: getifaddrs then
            # gives the address itself, and beacons sent there reached nobody; a review on a real LAN)
            subnet = iface.network
            if subnet.prefixlen >= 31 and iface.broadcast is not None and not iface.is_loopback:
                # A /31 or /32 has no broadcast (Linux adds no broadcast route for it): what getifaddrs reports
                # is the address itself, or, for `ip addr add A/32 peer GW dev eth0` (a hosting provider's
                # Ethernet), the peer. Taken as a broadcast, beacons went to ourselves, a browser bound our
                # unicast address (taking the probes meant for a server here) and probes from it were "spoofed".
                peer = iface.peer or (iface.broadcast if iface.broadcast != iface.address else None)
                iface = dataclasses.replace(iface, broadcast=None, peer=peer)
            elif subnet.prefixlen < 31 and (
                (iface.is_loopback and iface.broadcast is None) or (iface.broadcast == iface.address and not iface.peer)
            ):
                iface = dataclasses.replace(iface, broadcast=str(subnet.broadcast_address))
            out.append(iface)
    return out


def list_interface_names() -> set[str] | None:
    """The name of every interface, up or down, with or without an IPv4 address (None: cannot tell)."""
    try:
        return set(psutil.net_if_stats()) | set(psutil.net_if_addrs())
    except OSError as exc:
        log.warning("cannot list network interfaces: %s (hint: is /proc or /sys mounted?)", exc)
        return None


def unknown_interfaces(names: Sequence[str], available: Iterable[Interface], all_names: Iterable[str]) -> list[str]:
    """The ``names`` that are no interface at all (a typo), as opposed to one that is down or has no IPv4
    address: not among ``all_names``, and not `lo` while ``available`` has a loopback address. Pure."""
    known = set(all_names)
    has_loopback = any(i.is_loopback for i in available)
    return [n for n in dict.fromkeys(names) if n not in known and not (n == "lo" and has_loopback)]


def choose_interfaces(names: Sequence[str], available: Iterable[Interface]) -> tuple[list[Interface], list[str]]:
    """The interfaces discovery uses, and a hint for each explicit name that cannot be used.

    ``names`` in that order (`lo` finds loopback whatever the system calls it); if empty, every interface
    that is up and has an IPv4 broadcast address, loopback excluded. A name that is unknown, down, without
    IPv4 or without a broadcast address is skipped with a problem line: discovery goes on with the others.
    Pure: the caller logs the problems (once, not at every refresh).
    """
    ifaces = list(available)
    if not names:
        return [i for i in ifaces if i.up and i.broadcast and not i.is_loopback], []
    chosen: list[Interface] = []
    problems: list[str] = []
    for name in names:
        matches = [i for i in ifaces if i.name == name]
        if not matches and name == "lo":  # `lo` means loopback whatever the system calls it (lo0 on BSD)
            matches = [i for i in ifaces if i.is_loopback]
        if not matches:
            known = ", ".join(sorted({i.name for i in ifaces})) or "none"
            problems.append(f"interface {name} does not exist or has no IPv4 address (hint: known: {known})")
        for iface in matches:
            if not iface.up:
                problems.append(f"interface {name} is down (hint: `ip link set {name} up`)")
            elif iface.broadcast is None:
                problems.append(
                    f"interface {name} ({iface.address}) has no IPv4 broadcast address "
                    "(hint: reach servers with --probe HOST, clients with --beacon-to HOST)"
                )
            else:
                chosen.append(iface)
    return chosen, problems


def broadcast_targets(interfaces: Iterable[Interface]) -> list[tuple[str, str]]:
    """(broadcast address, our address there) for each interface, each broadcast address once."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for iface in interfaces:
        if iface.broadcast is None or iface.broadcast in seen:
            continue
        seen.add(iface.broadcast)
        out.append((iface.broadcast, iface.address))
    return out


def interface_for(source: str, interfaces: Iterable[Interface]) -> Interface | None:
    """The interface whose subnet holds ``source`` (the most specific one), or None."""
    best: Interface | None = None
    for iface in interfaces:
        if iface.contains(source) and (best is None or iface.network.prefixlen > best.network.prefixlen):
            best = iface
    return best


def address_for(source: str, interfaces: Iterable[Interface]) -> str | None:
    """Our address on the subnet of ``source`` (127.0.0.1 for a loopback source), or None."""
    try:
        if ipaddress.IPv4Address(source).is_loopback:
            return "127.0.0.1"
    except ValueError:
        return None
    iface = interface_for(source, interfaces)
    return iface.address if iface is not None else None


def is_directly_connected(source: str, interfaces: Iterable[Interface]) -> bool:
    """Is ``source`` loopback or on the subnet of one of ``interfaces``?"""
    return address_for(source, interfaces) is not None


def is_subnet_broadcast(ip: str, interfaces: Iterable[Interface]) -> bool:
    """Is ``ip`` the network or broadcast address of one of ``interfaces``' subnets? No host sends from
    those: a probe that claims to would have its reply broadcast to the whole subnet."""
    try:
        addr = ipaddress.IPv4Address(ip)
    except ValueError:
        return False
    for iface in interfaces:
        net = iface.network
        if net.prefixlen < 31 and addr in (net.network_address, net.broadcast_address):  # /31, /32: hosts only
            return True
        if iface.broadcast is not None and ip == iface.broadcast:
            return True
    return False


def is_unicast_source(ip: str) -> bool:
    """Could ``ip`` be the source of a real datagram? (not 0.0.0.0, multicast or limited broadcast)."""
    try:
        addr = ipaddress.IPv4Address(ip)
    except ValueError:
        return False
    return not (addr.is_unspecified or addr.is_multicast or addr == ipaddress.IPv4Address("255.255.255.255"))
