"""The control plane's state machines: keys, workspaces, sessions, commands, the reaper.

The API layer only parses requests and calls these; these never import FastAPI.
"""

from chaser.service.keys import KeyManager, Principal
from chaser.service.sessions import SessionManager
from chaser.service.workspaces import WorkspaceManager

__all__ = ["KeyManager", "Principal", "SessionManager", "WorkspaceManager"]
