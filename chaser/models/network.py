"""Egress-policy wire schemas (`network` on session, exec and workspace creates;
`GET/PUT /v1/sessions/{id}/network`).

Only the shape is checked here; what an entry may be (IP, CIDR, domain, `*.domain`)
is checked by `chaser.vm.network.policy.EgressPolicy`, called by the service layer."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from chaser.models.common import RequestModel

MAX_NETWORK_ENTRIES = 256
MAX_NETWORK_ENTRY_CHARS = 300

NetworkEntry = Annotated[str, Field(max_length=MAX_NETWORK_ENTRY_CHARS)]


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
