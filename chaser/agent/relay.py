"""WebSocket <-> TCP relay to a port listening inside the guest."""

import asyncio

from aiohttp import WSMsgType, web

from . import envd
from .errors import ApiError, bad_request


async def handle_relay(agent, request):
    try:
        port = int(request.query.get("port", ""))
    except ValueError:
        raise bad_request("port must be an integer") from None
    if not 1 <= port <= 65535:
        raise bad_request("port must be in 1..65535")
    # Connect before upgrading, so a closed port is a plain HTTP error.
    try:
        if port == envd.ENVD_PORT:  # the agent's own envd (chaser/agent/envd): no TCP listener in the guest
            reader, writer = await envd.open_connection(agent)
        else:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    except (TimeoutError, OSError) as e:
        raise ApiError(502, "port_not_listening", f"nothing accepts connections on port {port}: {e}") from e

    ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
    try:
        await ws.prepare(request)
    except BaseException:
        writer.close()
        raise

    async def tcp_to_ws():
        while True:
            data = await reader.read(65536)
            if not data:
                return  # TCP EOF: the whole relay ends
            await ws.send_bytes(data)  # awaited: back-pressure on the TCP side

    async def ws_to_tcp():
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                writer.write(msg.data)
                await writer.drain()
            elif msg.type == WSMsgType.TEXT:
                writer.write(msg.data.encode())
                await writer.drain()

    tasks = [asyncio.ensure_future(tcp_to_ws()), asyncio.ensure_future(ws_to_tcp())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writer.close()
        if not ws.closed:
            try:
                await ws.close()
            except ConnectionError:
                pass
    return ws
