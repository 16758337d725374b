"""The nftables rule sets, rendered from Python and loaded with `nft -f -`.

Two layers, both written by the server; a guest can only send packets at them:

* the **host table** `inet chaser` (one for the machine, shared by every server
  on it): nothing from a sandbox veth (`chv*`) reaches the host itself, another
  sandbox, or a private, shared, link-local or reserved address; the rest is
  masqueraded out of the host's default route. Its rules match the veth name
  prefix, not per-VM elements, so a VM whose set-up is half done is already
  fenced in (the rules fail closed). Per server it adds its address pool to a set.
* the **namespace table** `inet chaser` inside each VM's network namespace:
  DNAT of the agent port from the host side, masquerade of the guest, and the
  session's egress policy (internet on/off, allow and deny sets that the
  namespace's dnsmasq fills with the addresses of allowed/denied names). It is
  replaced as a whole, atomically, when the policy changes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from chaser.agent.protocol import AGENT_PORT
from chaser.runtime.egress import EgressPolicy

TABLE = "chaser"
HOST_VETH_PREFIX = "chv"  # host end of each namespace's veth pair: chv<slot>
NS_VETH = "veth0"
TAP = "tap0"
# Every guest keeps these (the template snapshot was taken with them).
GUEST_ADDRESS = "10.0.2.15"
GUEST_GATEWAY = "10.0.2.2"
GUEST_RESOLVER = "10.0.2.3"
GUEST_NETWORK = "10.0.2.0/24"

# Never reachable from a sandbox unless the operator allows a CIDR of them:
# "this network", private (RFC 1918), shared (RFC 6598), loopback, link-local
# (which holds the cloud metadata address 169.254.169.254), IETF protocol
# assignments, benchmarking, multicast and reserved.
BLOCKED_V4 = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "224.0.0.0/4", "240.0.0.0/4",
)
# The guest has no IPv6 route; the namespace drops IPv6 anyway, and these are
# what the policy would block if it had one.
BLOCKED_V6 = ("::1/128", "fc00::/7", "fe80::/10", "ff00::/8", "::ffff:0:0/96")


def _elements(values: Iterable[str]) -> str:
    items = list(values)
    return f" elements = {{ {', '.join(items)} }}" if items else ""


def _v4(cidrs: Iterable[str]) -> list[str]:
    return [c for c in cidrs if ipaddress.ip_network(c, strict=False).version == 4]


def _v6(cidrs: Iterable[str]) -> list[str]:
    return [c for c in cidrs if ipaddress.ip_network(c, strict=False).version == 6]


def host_ruleset(*, pool: str, allow_private: Iterable[str] = (), dns_servers: Iterable[str] = ()) -> str:
    """The host table. Idempotent and safe to load while other servers use it:
    chains are flushed and refilled in one transaction; set elements of other
    servers' pools stay."""
    allow_private = list(allow_private)
    dns_v4 = _v4(dns_servers)
    sandboxes = f'"{HOST_VETH_PREFIX}*"'  # every sandbox's host-side veth
    return f"""\
add table inet {TABLE}
add set inet {TABLE} pools {{ type ipv4_addr; flags interval; }}
add set inet {TABLE} blocked4 {{ type ipv4_addr; flags interval; }}
add set inet {TABLE} allowed_private4 {{ type ipv4_addr; flags interval; auto-merge; }}
add set inet {TABLE} dns4 {{ type ipv4_addr; }}
add chain inet {TABLE} input {{ type filter hook input priority -10; policy accept; }}
add chain inet {TABLE} forward {{ type filter hook forward priority -10; policy accept; }}
add chain inet {TABLE} postrouting {{ type nat hook postrouting priority 110; policy accept; }}
flush chain inet {TABLE} input
flush chain inet {TABLE} forward
flush chain inet {TABLE} postrouting
flush set inet {TABLE} blocked4
add element inet {TABLE} blocked4 {{ {', '.join(BLOCKED_V4)} }}
add element inet {TABLE} pools {{ {pool} }}
{f"add element inet {TABLE} allowed_private4 {{ {', '.join(_v4(allow_private))} }}" if _v4(allow_private) else ""}
{f"add element inet {TABLE} dns4 {{ {', '.join(dns_v4)} }}" if dns_v4 else ""}
add rule inet {TABLE} input iifname {sandboxes} ct state established,related accept
add rule inet {TABLE} input iifname {sandboxes} counter drop
add rule inet {TABLE} forward iifname {sandboxes} oifname {sandboxes} counter drop
add rule inet {TABLE} forward oifname {sandboxes} ct state established,related accept
add rule inet {TABLE} forward oifname {sandboxes} counter drop
add rule inet {TABLE} forward iifname {sandboxes} ct state established,related accept
add rule inet {TABLE} forward iifname {sandboxes} meta nfproto ipv6 counter drop
add rule inet {TABLE} forward iifname {sandboxes} ip daddr @dns4 meta l4proto {{ tcp, udp }} th dport 53 accept
add rule inet {TABLE} forward iifname {sandboxes} ip daddr @allowed_private4 accept
add rule inet {TABLE} forward iifname {sandboxes} ip daddr @blocked4 counter reject with icmpx type admin-prohibited
add rule inet {TABLE} forward iifname {sandboxes} accept
add rule inet {TABLE} postrouting ip saddr @pools oifname != {sandboxes} masquerade
"""


def namespace_ruleset(policy: EgressPolicy | None, *, allow_private: Iterable[str] = ()) -> str:
    """The namespace table for `policy` (None: a namespace waiting in the pool,
    which lets nothing out). Replaces any previous version atomically."""
    allow_private = list(allow_private)
    if policy is None:
        egress = ["counter jump refuse"]
        allowed = denied = None
    else:
        allowed, denied = policy.allowed, policy.denied
        egress = [
            "ip daddr @deny4 counter jump refuse",
            "ip6 daddr @deny6 counter jump refuse",
        ]
        if not policy.internet:
            egress.append("counter jump refuse")
        egress += [
            "meta nfproto ipv6 counter jump refuse",  # no IPv6 path out, whatever the policy
            "ip daddr @allowed_private4 jump destinations",
            "ip daddr @blocked4 counter jump refuse",
            "jump destinations",
        ]
    if policy is not None and policy.allow_list:
        policy_rules = ["ip daddr @allow4 accept", "ip6 daddr @allow6 accept", "counter jump refuse"]
    else:
        policy_rules = ["accept"]
    allow4 = _elements(allowed.v4 if allowed else [])
    allow6 = _elements(allowed.v6 if allowed else [])
    deny4 = _elements(denied.v4 if denied else [])
    deny6 = _elements(denied.v6 if denied else [])
    lines = "\n".join
    return f"""\
table inet {TABLE}
delete table inet {TABLE}
table inet {TABLE} {{
    set allow4 {{ type ipv4_addr; flags interval; auto-merge;{allow4} }}
    set allow6 {{ type ipv6_addr; flags interval; auto-merge;{allow6} }}
    set deny4 {{ type ipv4_addr; flags interval; auto-merge;{deny4} }}
    set deny6 {{ type ipv6_addr; flags interval; auto-merge;{deny6} }}
    set blocked4 {{ type ipv4_addr; flags interval;{_elements(BLOCKED_V4)} }}
    set allowed_private4 {{ type ipv4_addr; flags interval; auto-merge;{_elements(_v4(allow_private))} }}

    chain prerouting {{
        type nat hook prerouting priority -100; policy accept;
        iifname "{NS_VETH}" tcp dport {AGENT_PORT} dnat ip to {GUEST_ADDRESS}:{AGENT_PORT}
    }}
    chain postrouting {{
        type nat hook postrouting priority 100; policy accept;
        oifname "{NS_VETH}" ip saddr {GUEST_NETWORK} masquerade
    }}
    chain input {{
        type filter hook input priority 0; policy drop;
        iifname "lo" accept
        ct state established,related accept
        iifname "{TAP}" ip daddr {GUEST_RESOLVER} meta l4proto {{ tcp, udp }} th dport 53 accept
    }}
    chain forward {{
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        iifname "{NS_VETH}" oifname "{TAP}" ct status dnat tcp dport {AGENT_PORT} accept
        iifname "{TAP}" oifname "{NS_VETH}" jump egress
        counter
    }}
    chain egress {{
{lines("        " + rule for rule in egress)}
    }}
    chain destinations {{
{lines("        " + rule for rule in policy_rules)}
    }}
    chain refuse {{
        meta l4proto tcp reject with tcp reset
        reject with icmpx type admin-prohibited
    }}
}}
"""
