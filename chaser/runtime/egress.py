"""A sandbox's egress policy: what its guest may open connections to.

    EgressPolicy(internet=True)                              everything public
    EgressPolicy(internet=False)                             nothing (the agent still works)
    EgressPolicy(allow_out=["example.com", "1.2.3.0/24"])    only those
    EgressPolicy(deny_out=["*.bad.test", "203.0.113.9"])     all public but those

`deny_out` always wins over `allow_out`. An entry is an IPv4/IPv6 address, a
CIDR, a domain name (`example.com`) or a wildcard (`*.example.com`, which also
matches `example.com` itself, as dnsmasq's `/example.com/` does). Domains are
enforced by the sandbox's own resolver, which adds the addresses it answers
for an allowed (or denied) name to the matching nftables set. What is never
reachable whatever the policy (host, loopback, other sandboxes, private and
link-local ranges) is the runtime's business (chaser/vm/network/nftables.py)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from chaser import errors

MAX_ENTRIES = 256
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*\.?$")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Destinations:
    """Parsed entries of one list: networks and domain names (wildcard prefix stripped)."""

    networks: tuple[Network, ...] = ()
    domains: tuple[str, ...] = ()

    @property
    def v4(self) -> list[str]:
        return [str(n) for n in self.networks if n.version == 4]

    @property
    def v6(self) -> list[str]:
        return [str(n) for n in self.networks if n.version == 6]


@dataclass(frozen=True)
class EgressPolicy:
    internet: bool = True
    allow_out: tuple[str, ...] = field(default_factory=tuple)
    deny_out: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        # Validate and normalise once, so every holder of a policy has a good one.
        object.__setattr__(self, "allow_out", tuple(normalise_entries(self.allow_out, "allow_out")))
        object.__setattr__(self, "deny_out", tuple(normalise_entries(self.deny_out, "deny_out")))

    @property
    def allow_list(self) -> bool:
        """True when only the allowed destinations may be reached."""
        return bool(self.allow_out)

    @property
    def allowed(self) -> Destinations:
        return parse_entries(self.allow_out)

    @property
    def denied(self) -> Destinations:
        return parse_entries(self.deny_out)

    def to_dict(self) -> dict[str, Any]:
        return {"internet": self.internet, "allow_out": list(self.allow_out), "deny_out": list(self.deny_out)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, *, default_internet: bool = True) -> EgressPolicy:
        data = data or {}
        internet = data.get("internet")
        return cls(
            internet=default_internet if internet is None else bool(internet),
            allow_out=tuple(data.get("allow_out") or ()),
            deny_out=tuple(data.get("deny_out") or ()),
        )


def normalise_entry(entry: str, field_name: str = "entry") -> str:
    """One destination, checked: an address or CIDR (in canonical form), or a
    lower-cased domain / `*.domain`. Raises InvalidRequest with the reason."""
    if not isinstance(entry, str) or not entry.strip():
        raise errors.InvalidRequest(f"{field_name}: entries must be non-empty strings")
    text = entry.strip().lower()
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        pass
    if "/" in text or ":" in text or re.fullmatch(r"[0-9.]+", text):
        raise errors.InvalidRequest(f"{field_name}: {entry!r} is not a valid IP address or CIDR")
    if len(text) > 253 or not _DOMAIN.match(text):
        raise errors.InvalidRequest(
            f"{field_name}: {entry!r} is not an IP, CIDR, domain name or *.domain wildcard")
    return text.rstrip(".")


def normalise_entries(entries: Any, field_name: str) -> list[str]:
    if isinstance(entries, str):
        raise errors.InvalidRequest(f"{field_name} must be a list of strings")
    entries = list(entries or ())
    if len(entries) > MAX_ENTRIES:
        raise errors.InvalidRequest(f"{field_name}: at most {MAX_ENTRIES} entries")
    seen: dict[str, None] = {}
    for entry in entries:
        seen[normalise_entry(entry, field_name)] = None
    return list(seen)


def parse_entries(entries: tuple[str, ...]) -> Destinations:
    networks: list[Network] = []
    domains: list[str] = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            domains.append(entry[2:] if entry.startswith("*.") else entry)
    return Destinations(networks=tuple(networks), domains=tuple(dict.fromkeys(domains)))
