"""Control-plane state: SQLAlchemy tables, the Alembic migrations, engine helpers."""

from chaser.store.db import Database
from chaser.store.tables import Account, ApiKey, Base, SessionRow, Workspace

__all__ = ["Account", "ApiKey", "Base", "Database", "SessionRow", "Workspace"]
