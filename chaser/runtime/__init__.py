"""The runtime seam (interface.py): the only way the service layer reaches VMs."""

# What a sandbox looks like from outside, re-exported so the service layer needs no agent module.
from chaser.agent.protocol import AGENT_PROTOCOL_VERSION, DEFAULT_WORKDIR
from chaser.runtime.egress import EgressPolicy
from chaser.runtime.interface import UNENFORCED_MODES, AgentSocket, NetworkMode, Runtime, SandboxVM
from chaser.runtime.spec import BootMethod, VMSpec

__all__ = [
    "AGENT_PROTOCOL_VERSION",
    "DEFAULT_WORKDIR",
    "UNENFORCED_MODES",
    "AgentSocket",
    "BootMethod",
    "EgressPolicy",
    "NetworkMode",
    "Runtime",
    "SandboxVM",
    "VMSpec",
]
