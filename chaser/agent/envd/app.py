"""envd's aiohttp application: the Connect services and the HTTP routes."""

from aiohttp import web

from . import files
from .connect import client_stream, server_stream, unary
from .filesystem import FilesystemService
from .process import ProcessService


def make_app(envd) -> web.Application:
    app = web.Application(middlewares=[files.errors], client_max_size=64 * 1024 * 1024)
    r = app.router
    p = ProcessService(envd)
    for name, method in (("List", p.list), ("SendInput", p.send_input), ("SendSignal", p.send_signal),
                         ("CloseStdin", p.close_stdin), ("Update", p.update)):
        r.add_post(f"/process.Process/{name}", unary(method))
    r.add_post("/process.Process/Start", server_stream(p.start))
    r.add_post("/process.Process/Connect", server_stream(p.connect))
    r.add_post("/process.Process/StreamInput", client_stream(p.stream_input))
    f = FilesystemService(envd)
    for name, method in (("Stat", f.stat), ("MakeDir", f.make_dir), ("Move", f.move), ("ListDir", f.list_dir),
                         ("Remove", f.remove), ("CreateWatcher", f.create_watcher),
                         ("GetWatcherEvents", f.get_watcher_events), ("RemoveWatcher", f.remove_watcher)):
        r.add_post(f"/filesystem.Filesystem/{name}", unary(method))
    r.add_post("/filesystem.Filesystem/WatchDir", server_stream(f.watch_dir))
    r.add_get("/health", files.health)

    async def download(request):
        return await files.download(envd, request)

    async def upload(request):
        return await files.upload(envd, request)

    r.add_get("/files", download)
    r.add_post("/files", upload)
    return app
