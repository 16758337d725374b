"""Pydantic wire schemas: `XCreate` request bodies (unknown fields → 400), `XPublic` responses."""

from chaser.models.common import ErrorPublic, RequestModel
from chaser.models.exec import (
    CommandPublic,
    CommandsPublic,
    ExecCreate,
    ExecPublic,
    KillCreate,
    KillPublic,
    SessionExecCreate,
    StdinCreate,
    StdinPublic,
)
from chaser.models.files import UploadPublic
from chaser.models.keys import KeyCreate, KeyCreatedPublic, KeyPublic, KeyRevokedPublic, KeysPublic
from chaser.models.network import NetworkPolicyCreate, NetworkPolicyPublic
from chaser.models.sessions import (
    BulkTerminateCreate,
    BulkTerminateFailure,
    BulkTerminatePublic,
    Endpoints,
    ForkCreate,
    ForkPublic,
    SelfTestPublic,
    SessionCreate,
    SessionPublic,
    SessionsPublic,
)
from chaser.models.workspaces import WorkspaceCreate, WorkspaceDeletedPublic, WorkspacePublic

__all__ = [
    "BulkTerminateCreate",
    "BulkTerminateFailure",
    "BulkTerminatePublic",
    "CommandPublic",
    "CommandsPublic",
    "Endpoints",
    "ErrorPublic",
    "ExecCreate",
    "ExecPublic",
    "ForkCreate",
    "ForkPublic",
    "KeyCreate",
    "KeyCreatedPublic",
    "KeyPublic",
    "KeyRevokedPublic",
    "KeysPublic",
    "KillCreate",
    "KillPublic",
    "NetworkPolicyCreate",
    "NetworkPolicyPublic",
    "RequestModel",
    "SelfTestPublic",
    "SessionCreate",
    "SessionExecCreate",
    "SessionPublic",
    "SessionsPublic",
    "StdinCreate",
    "StdinPublic",
    "UploadPublic",
    "WorkspaceCreate",
    "WorkspaceDeletedPublic",
    "WorkspacePublic",
]
