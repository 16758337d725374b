"""Progress events of a resolve or pull, for the caller's callback."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """What `progress` callbacks receive; str() is a one-line message.
    stage: resolve | pull | verify | unpack | convert | done."""

    stage: str
    message: str
    current: int | None = None
    total: int | None = None

    def __str__(self) -> str:
        return self.message


ProgressFn = Callable[[Progress], Any] | None


def emit(progress: ProgressFn, stage: str, message: str, current: int | None = None,
         total: int | None = None) -> None:
    if progress is None:
        return
    try:
        progress(Progress(stage, message, current, total))
    except Exception:  # a broken callback must not break a pull
        log.exception("image progress callback failed")
