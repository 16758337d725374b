"""Port forwarding: HTTP and WebSocket reverse proxying and raw TCP tunnels to
`127.0.0.1:<port>` inside a sandbox, all through the agent's relay
(`SandboxVM.relay(port)`).

The relay is one WebSocket per TCP connection (binary frames = the TCP byte
stream; it is refused with 502 `port_not_listening` before the upgrade when
nothing accepts on the port). On top of it:

- HTTP (`http_proxy`): one relay per request; HTTP/1.1 over it with `h11`
  (bodies streamed both ways, chunked or sized, HEAD and 1xx handled),
  `Connection: close` upstream.
- WebSocket (`ws_proxy`): the gateway terminates the client's WebSocket and
  opens its own to the upstream over the relay with the websockets sans-I/O
  client; messages are pumped both ways and close codes passed on.
- Raw TCP (`relay`, `/v1/sessions/{id}/tunnel/{port}`): relay frames are piped as is.

`headers` rewrites headers both ways (and sandboxes path-style responses),
`cookies` signs the per-session login cookie of host-style origins, `ports`
checks port numbers and keeps the public ports, `hosts` reads host-style
addresses and origins, `forwarding` holds the access rules and the three
flows. Every pump awaits its send before reading more, so a slow reader
anywhere stalls the writer instead of growing buffers.
"""

from chaser.service.forward.cookies import LINK_TTL_S, ForwardCookies, load_or_create_secret
from chaser.service.forward.forwarding import SCOPE, ForwardService
from chaser.service.forward.headers import (
    COOKIE_NAME,
    SANDBOX_CSP,
    cookie_value,
    cookie_values,
    downstream_response_headers,
    is_chaser_authorization,
    query_without,
    rewrite_location,
    strip_cookie,
    upstream_request_headers,
)
from chaser.service.forward.hosts import host_session, is_sandbox_origin
from chaser.service.forward.http_proxy import ForwardedRequest, UpstreamResponse
from chaser.service.forward.ports import PublicPorts, check_port
from chaser.service.forward.relay import RelayStream, UpstreamError, open_relay
from chaser.service.forward.ws_proxy import UpstreamWebSocket, sendable_close_code

__all__ = [
    "COOKIE_NAME", "LINK_TTL_S", "SANDBOX_CSP", "SCOPE", "ForwardCookies", "ForwardService", "ForwardedRequest",
    "PublicPorts",
    "RelayStream", "UpstreamError", "UpstreamResponse", "UpstreamWebSocket", "check_port", "cookie_value",
    "cookie_values", "downstream_response_headers", "host_session", "is_chaser_authorization", "is_sandbox_origin",
    "load_or_create_secret", "open_relay", "query_without", "rewrite_location", "sendable_close_code",
    "strip_cookie", "upstream_request_headers",
]
