"""Egress-policy wire schemas (`network` on session, exec and workspace creates;
`GET/PUT /v1/sessions/{id}/network`).

Only the shape is checked here; what an entry may be (IP, CIDR, domain, `*.domain`)
is checked by `chaser.runtime.egress.EgressPolicy`, called by the service layer."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from chaser.models.common import RequestModel

MAX_NETWORK_ENTRIES = 256
MAX_NETWORK_ENTRY_CHARS = 300

# For /openapi.json (the check, chaser.runtime.egress.normalise_entry, keeps its message): an
# IPv4 or IPv6 address or CIDR, a domain name or a `*.domain` wildcard, in the forms that check takes
# (it also takes surrounding spaces, netmask CIDRs, IPv6 scopes and more compressed IPv6 forms).
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_HEXTET = "[0-9a-fA-F]{1,4}"
_LABEL = "[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
NETWORK_ENTRY_PATTERN = (
    f"^(?:{_OCTET}(?:\\.{_OCTET}){{3}}(?:/(?:3[0-2]|[12]?[0-9]))?"
    "|(?:" + "|".join((f"(?:{_HEXTET}:){{7}}{_HEXTET}", f"(?:{_HEXTET}:){{1,7}}:",
                       *(f"(?:{_HEXTET}:){{1,{n}}}(?::{_HEXTET}){{1,{7 - n}}}" for n in range(6, 0, -1)),
                       f":(?:(?::{_HEXTET}){{1,7}}|:)")) + ")"
    "(?:/(?:12[0-8]|1[01][0-9]|[1-9]?[0-9]))?"
    f"|(?:\\*\\.)?(?:{_LABEL}\\.){{0,8}}[a-zA-Z](?:[a-zA-Z0-9-]{{0,61}}[a-zA-Z0-9])?\\.?)$"
)
NetworkEntry = Annotated[str, Field(max_length=MAX_NETWORK_ENTRY_CHARS,
                                    json_schema_extra={"pattern": NETWORK_ENTRY_PATTERN})]


class NetworkPolicyCreate(RequestModel):
    """Omitted fields come from the workspace's policy, then from the server default."""

    internet: bool | None = Field(default=None, description="Reach public destinations at all "
                                                            "(default: CHASER_NETWORK_INTERNET_DEFAULT)")
    allow_out: list[NetworkEntry] | None = Field(
        default=None, max_length=MAX_NETWORK_ENTRIES,
        description="Only these destinations (IPs, CIDRs, example.com, *.example.com); empty: no allow list")
    deny_out: list[NetworkEntry] | None = Field(
        default=None, max_length=MAX_NETWORK_ENTRIES,
        description="Never these destinations; wins over allow_out")


class NetworkPolicyPublic(BaseModel):
    internet: bool
    allow_out: list[str]
    deny_out: list[str]
    enforced: bool = Field(description="False when this server runs without network isolation "
                                       "(CHASER_NETWORK=none or slirp): the policy is recorded but not applied")
