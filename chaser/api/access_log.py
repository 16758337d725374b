"""No token in the server's log: uvicorn logs every request line with its query, and a
browser's WebSocket (the web console's PTY, `?token=sk_…`) or a gateway login link
(`?token=…`) carries a key or a link token there. The filter keeps the parameter's name
and drops its value; `create_api` installs it on uvicorn's loggers once per process."""

from __future__ import annotations

import logging
import re

__all__ = ["RedactTokens", "redact_tokens_in_logs"]

TOKEN_IN_URL = re.compile(r"([?&]token=)[^&\s\"]+")
# uvicorn logs HTTP requests on uvicorn.access and WebSocket ones on uvicorn.error.
LOGGERS = ("uvicorn.access", "uvicorn.error")


class RedactTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message:
            record.msg, record.args = TOKEN_IN_URL.sub(r"\1…", message), ()
        return True


def redact_tokens_in_logs() -> None:
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, RedactTokens) for existing in logger.filters):
            logger.addFilter(RedactTokens())
