"""File transfer: multipart uploads streamed into the agent, downloads streamed out."""

from __future__ import annotations

from collections.abc import AsyncIterator

from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header

from chaser import errors
from chaser.config import Settings
from chaser.models.files import UploadPublic
from chaser.service import audit
from chaser.service.commands import absolute_path
from chaser.service.live import LiveSession
from chaser.service.sessions import SessionManager

MAX_FIELD_BYTES = 64 * 1024
MULTIPART_OVERHEAD_BYTES = 64 * 1024  # boundaries and part headers around the file


def too_large(limit: int) -> errors.PayloadTooLarge:
    return errors.PayloadTooLarge(f"file transfers are limited to {limit} bytes per operation")


class _Multipart:
    """Push parser state: small fields are kept, the `file` part is handed out in chunks."""

    def __init__(self, boundary: bytes, limit: int) -> None:
        self.limit = limit
        self.fields: dict[str, bytes] = {}
        self.file_seen = False
        self.file_done = False
        self.file_size = 0
        self.pending: list[bytes] = []
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._is_file = False
        self._value = bytearray()
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._add("_header_field", data[start:end]),
            "on_header_value": lambda data, start, end: self._add("_header_value", data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        })

    def _add(self, attribute: str, data: bytes) -> None:
        setattr(self, attribute, getattr(self, attribute) + data)

    def _part_begin(self) -> None:
        self._headers, self._name, self._is_file, self._value = {}, None, False, bytearray()

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if self._name == "file":
            if self.file_seen:
                raise errors.InvalidRequest("more than one 'file' part")
            self.file_seen = True
            self._is_file = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = bytes(data[start:end])
        if self._is_file:
            self.file_size += len(chunk)
            if self.file_size > self.limit:
                raise too_large(self.limit)
            self.pending.append(chunk)
        else:
            self._value += chunk
            if len(self._value) > MAX_FIELD_BYTES:
                raise errors.InvalidRequest(f"form field {self._name!r} is too long")

    def _part_end(self) -> None:
        if self._is_file:
            self.file_done = True
        elif self._name:
            self.fields.setdefault(self._name, bytes(self._value))

    def feed(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except errors.ChaserError:
            raise
        except Exception as exc:  # noqa: BLE001 - any parser complaint is a bad request
            raise errors.InvalidRequest(f"malformed multipart body: {exc}") from None

    def take(self) -> list[bytes]:
        chunks, self.pending = self.pending, []
        return chunks


class FileService:
    def __init__(self, sessions: SessionManager, settings: Settings) -> None:
        self.sessions = sessions
        self.settings = settings

    @property
    def limit(self) -> int:
        return self.settings.max_transfer_bytes

    def check_upload_headers(self, content_type: str | None, content_length: str | None) -> bytes:
        """Reject before reading the body: too large by Content-Length, or not multipart. Returns the boundary."""
        if content_length is not None:
            try:
                length = int(content_length)
            except ValueError:
                raise errors.InvalidRequest("invalid Content-Length") from None
            if length > self.limit + MULTIPART_OVERHEAD_BYTES:
                raise too_large(self.limit)
        kind, options = parse_options_header(content_type or "")
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise errors.InvalidRequest("upload must be multipart/form-data with fields 'path' and 'file'")
        return boundary

    async def upload(self, live: LiveSession, *, boundary: bytes, body: AsyncIterator[bytes]) -> UploadPublic:
        parts = _Multipart(boundary, self.limit)
        body_iter = body.__aiter__()
        buffered: list[bytes] = []
        body_done = False
        # Read until we know the path and the file has begun (usually the first chunk).
        while not (("path" in parts.fields and parts.file_seen) or parts.file_done):
            try:
                chunk = await body_iter.__anext__()
            except StopAsyncIteration:
                body_done = True
                break
            parts.feed(chunk)
            buffered.extend(parts.take())
        if not parts.file_seen:
            raise errors.InvalidRequest("multipart field 'file' is required")
        raw_path = parts.fields.get("path")
        while raw_path is None and not body_done:  # the path came after the file: the file is buffered
            try:
                parts.feed(await body_iter.__anext__())
                buffered.extend(parts.take())
            except StopAsyncIteration:
                body_done = True
            raw_path = parts.fields.get("path")
        if not raw_path:
            raise errors.InvalidRequest("multipart field 'path' is required")
        path = absolute_path(raw_path.decode("utf-8", "replace"))

        async def file_stream() -> AsyncIterator[bytes]:
            for chunk in buffered:
                yield chunk
            nonlocal body_done
            while not parts.file_done and not body_done:
                try:
                    chunk = await body_iter.__anext__()
                except StopAsyncIteration:
                    body_done = True
                    break
                parts.feed(chunk)  # raises PayloadTooLarge past the limit: the agent discards the partial file
                for piece in parts.take():
                    yield piece
            if not parts.file_done:
                raise errors.InvalidRequest("the multipart body ended inside the file")

        async with self.sessions.using(live) as vm:
            result = await vm.write_file(path, file_stream())
        async for _ in body_iter:  # drain the closing boundary
            pass
        written = UploadPublic(path=result.get("path", path), size=int(result.get("size", parts.file_size)))
        self._record(live, "file.upload", written.path, written.size)
        return written

    def _record(self, live: LiveSession, action: str, path: str, size: int, *, complete: bool = True) -> None:
        """`file.upload` / `file.download`: the path and the bytes moved (never the content)."""
        self.sessions.audit.record(action, account_id=live.account_id, resource_type="session", resource_id=live.id,
                                   status=audit.SUCCESS if complete else audit.FAILURE,
                                   summary=f"{path} ({size} bytes)", metadata={"path": path, "size": size})

    async def open_download(self, live: LiveSession, raw_path: str) -> AsyncIterator[bytes]:
        """Check the file first (errors are proper JSON), then stream it."""
        path = absolute_path(raw_path)
        async with self.sessions.using(live) as vm:
            info = await vm.stat(path)
        kind = info.get("type")
        if kind == "dir":
            raise errors.InvalidRequest(f"{path} is a directory", code="is_a_directory")
        if kind not in ("file", "symlink"):
            raise errors.InvalidRequest(f"{path} is not a regular file")
        if kind == "file" and int(info.get("size") or 0) > self.limit:
            raise too_large(self.limit)
        limit = self.limit
        # Open the agent stream and take its first chunk now: a failure still becomes a JSON error.
        chunks = self._stream(live, path, limit)
        try:
            first = await chunks.__anext__()
        except StopAsyncIteration:
            first = b""

        async def stream() -> AsyncIterator[bytes]:
            if first:
                yield first
            async for chunk in chunks:
                yield chunk

        return stream()

    async def _stream(self, live: LiveSession, path: str, limit: int) -> AsyncIterator[bytes]:
        sent = 0
        complete = False
        try:
            async with self.sessions.using(live) as vm:
                async for chunk in vm.stream_file(path):
                    sent += len(chunk)
                    if sent > limit:  # grew meanwhile, or a symlink to something big: abort the transfer
                        raise too_large(limit)
                    yield chunk
            complete = True
        finally:  # also when the client went away mid-transfer (a failure, with what was sent)
            self._record(live, "file.download", path, sent, complete=complete)
