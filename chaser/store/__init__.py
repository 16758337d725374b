"""Control-plane state: SQLAlchemy tables, the Alembic migrations, engine helpers."""

from chaser.store.db import Database
from chaser.store.tables import Account, ApiKey, Base, NodeRow, SessionRow, Workspace

__all__ = ["Account", "ApiKey", "Base", "Database", "NodeRow", "SessionRow", "Workspace"]
