"""Property tests of the pure parsers that take untrusted input: image references, the agent's
path resolution, PTY control frames (both hops), the forwarding gateway's header rewriting and
the MCP terminal tool's xml file operations. Each states what must hold for *any* input, not
only that nothing crashes. (The agent's HTTP API as a whole: tests/integration/test_agent_fuzz.py.)"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chaser import errors
from chaser.agent import pty_session as agent_pty
from chaser.agent.errors import ApiError
from chaser.agent.processes import parse_signal
from chaser.agent.safepath import Root, normalize
from chaser.client import pty_exec_message, pty_resize_message, pty_signal_message
from chaser.images import reference
from chaser.mcp import files as mcp_files
from chaser.mcp.arguments import ToolArgumentError, parse_terminal_arguments
from chaser.mcp.files import FileOp, XmlOpsError, parse_xml_ops
from chaser.service.forward import headers as fwd
from chaser.service.pty import MAX_SIZE, parse_control

SOME = settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
FEW = settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))

# JSON values of any shape, with the numbers JSON parsers disagree on.
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**40), max_value=10**40),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


# --- image references ---------------------------------------------------------------------------

REF_PIECES = st.sampled_from([
    "python", "library", "ghcr.io", "localhost", "localhost:5000", "registry.example.com:443", "docker.io",
    "index.docker.io", "[::1]:5000", "chaser", "base", "a", "A", "x-y", "x__y", "x..y", "_", "-", "0", "9" * 130,
])
REF_GLUE = st.sampled_from(["/", "/", ":", "@", "@sha256:" + "a" * 64, ":latest", ".", "//", " ", "\n", "\x00", ""])


@st.composite
def image_refs(draw):
    prefix = draw(st.sampled_from(["", "", "docker://", "oci:", "oci-archive:", "docker-archive:", "http://", " "]))
    parts = draw(st.lists(st.tuples(REF_PIECES, REF_GLUE), max_size=6))
    return prefix + "".join(piece + glue for piece, glue in parts)


@SOME
@given(st.one_of(image_refs(), st.text(max_size=80)))
def test_an_image_reference_parses_to_a_fixed_point_or_is_refused_as_invalid_image(ref):
    try:
        parsed = reference.parse(ref)
    except errors.InvalidImage as exc:  # nothing else: not ValueError, IndexError, re.error, …
        assert exc.code == "invalid_image" and exc.status == 400
        return
    normalized = parsed.normalized()
    assert reference.parse(normalized) == parsed  # the canonical string names the same image
    assert reference.normalize(normalized) == normalized == reference.normalize(ref)  # idempotent
    assert not any(c.isspace() or ord(c) < 32 for c in normalized)
    if parsed.transport == "docker":
        assert parsed.domain and parsed.path and (parsed.tag or parsed.digest)
        assert len(parsed.name) <= 255
        assert parsed.skopeo().startswith("docker://" + parsed.name)
    else:
        assert os.path.isabs(parsed.path)


@SOME
@given(st.one_of(st.none(), st.text(max_size=40), image_refs()))
def test_normalize_is_idempotent_on_every_accepted_reference(ref):
    try:
        once = reference.normalize(ref)
    except errors.InvalidImage:
        return
    assert reference.normalize(once) == once


def test_a_reference_that_is_not_a_string_is_invalid_image():
    for value in (1, None, b"python", ["python"]):
        with pytest.raises(errors.InvalidImage):
            reference.parse(value)  # type: ignore[arg-type]


# --- the agent's path resolution ----------------------------------------------------------------

@SOME
@given(st.one_of(st.text(), st.text(alphabet="/.a\x00", max_size=30), st.none(), st.integers()))
def test_a_path_normalises_to_a_canonical_absolute_path_or_is_refused(path):
    try:
        normal = normalize(path)
    except ApiError as exc:  # the only refusal: 400
        assert exc.status == 400
        return
    assert normal.startswith("/") and "\x00" not in normal and "//" not in normal
    assert not {".", ".."} & set(normal.split("/"))  # no dot segments left
    assert normal == "/" or not normal.endswith("/")
    assert normalize(normal) == normal  # idempotent
    os.fsencode(normal)  # something the kernel can be handed
    # Only lexical: `..` climbs what was written, and never above "/".
    assert normal == posixpath.normpath("/" + path.lstrip("/"))


@pytest.fixture(scope="module")
def jail(tmp_path_factory):
    """A sandbox root full of traps, next to a secret it must never reach."""
    base = tmp_path_factory.mktemp("safepath")
    (base / "outside").mkdir()
    (base / "outside" / "secret").write_text("secret")
    root = base / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "file").write_text("inside")
    links = {"abs": "/", "up": "../../..", "out": "../outside", "outsecret": "../outside/secret",
             "a/etc": "/etc", "a/dotdot": "..", "a/b/far": "../../../../outside", "loop1": "loop2",
             "loop2": "loop1", "proc": "/proc/self/root", "hostsecret": str(base / "outside" / "secret")}
    for name, target in links.items():
        os.symlink(target, root / name)
    return root


SEGMENTS = st.sampled_from(["a", "b", "file", "abs", "up", "out", "outsecret", "etc", "dotdot", "far", "loop1",
                            "proc", "hostsecret", "outside", "secret", "..", ".", "", "root"])


@SOME
@given(st.lists(SEGMENTS, max_size=8), st.booleans())
def test_whatever_a_path_names_it_resolves_inside_the_root(jail, segments, want_parent):
    real_root = os.path.realpath(jail)
    path = normalize("/" + "/".join(segments))
    try:
        with Root(str(jail)) as root:
            if want_parent and path != "/":
                fd, _name = root.open_parent(path)
            else:
                fd = root.open(path, os.O_PATH)
    except OSError as exc:
        assert exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EXDEV), exc
        return
    except ApiError as exc:  # open_parent of the root itself
        assert exc.status == 400 and path == "/"
        return
    try:
        where = os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    assert where == real_root or where.startswith(real_root + "/"), (path, where)


@pytest.mark.parametrize("path, lands", [
    ("/up/a/b/file", "a/b/file"), ("/abs/a/b", "a/b"), ("/a/dotdot/a/dotdot/up", ""), ("/a/b/far", None),
    ("/out", None), ("/outsecret", None), ("/hostsecret", None), ("/loop1", "ELOOP"), ("/proc", "ELOOP"),  # /proc -> /proc/self/root: itself, inside
])
def test_the_traps_resolve_inside_the_root_or_not_at_all(jail, path, lands):
    """What the property above sees: a symlink's `..` or absolute target climbs no higher than the root."""
    try:
        with Root(str(jail)) as root:
            fd = root.open(normalize(path), os.O_PATH)
    except OSError as exc:
        assert lands in (None, "ELOOP") and exc.errno == (errno.ELOOP if lands else errno.ENOENT), exc
        return
    try:
        where = os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    assert where == os.path.join(os.path.realpath(jail), lands).rstrip("/")


# --- PTY control frames -----------------------------------------------------------------------

@SOME
@given(st.integers(1, MAX_SIZE), st.integers(1, MAX_SIZE), st.sampled_from(["INT", "TERM", "HUP", 2, 9, 15]))
def test_control_frames_the_client_encodes_decode_to_the_same_message(rows, cols, signal):
    assert parse_control(pty_resize_message(rows, cols)) == {"type": "resize", "rows": rows, "cols": cols}
    assert parse_control(pty_signal_message(signal)) == {"type": "signal", "signal": signal}  # type: ignore[arg-type]
    assert parse_control(pty_exec_message("ls -la")) == {"type": "exec", "command": "ls -la"}


def _check_control(decoded):
    assert decoded is None or isinstance(decoded, dict)
    if decoded and decoded["type"] == "resize":
        assert set(decoded) == {"type", "rows", "cols"}
        for value in (decoded["rows"], decoded["cols"]):
            assert type(value) is int and 1 <= value <= MAX_SIZE
    elif decoded and decoded["type"] == "signal":
        assert type(decoded["signal"]) in (int, str)


@SOME
@given(st.one_of(
    st.text(max_size=200),
    JSON_VALUES.map(json.dumps),
    st.fixed_dictionaries({"type": st.sampled_from(["resize", "signal", "exec", "exit", ""]),
                           "rows": JSON_VALUES, "cols": JSON_VALUES, "signal": JSON_VALUES}).map(json.dumps),
))
def test_any_text_frame_is_a_valid_control_message_or_ignored(text):
    """Never an exception: one would end the client's terminal (the bridge counts the client gone)."""
    _check_control(parse_control(text))


@pytest.mark.parametrize("text", [
    '{"type": "resize", "rows": Infinity, "cols": 80}', '{"type": "resize", "rows": -Infinity, "cols": 80}',
    '{"type": "resize", "rows": NaN, "cols": 80}', '{"type": "resize", "rows": 1e999, "cols": 1}',
    '{"type": "resize", "rows": "1" , "cols": true}', '{"type": "resize", "rows": ' + "9" * 5000 + ', "cols": 1}',
    "[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000, '{"type": "signal", "signal": true}',
])
def test_the_frames_a_fuzzer_found_are_ignored(text):
    assert parse_control(text) is None


@SOME
@given(JSON_VALUES, JSON_VALUES)
def test_the_agent_resizes_only_to_bounded_integers(rows, cols):
    try:
        checked = agent_pty._check_size(rows, cols)
    except ApiError as exc:
        assert exc.status == 400
        return
    assert all(type(v) is int and 1 <= v <= 10000 for v in checked)


@SOME
@given(st.one_of(JSON_VALUES, st.text(alphabet="0123456789²١sigINTKLHUP +-", max_size=8)))  # noqa: RUF001
def test_a_signal_is_a_real_signal_number_or_invalid_signal(value):
    try:
        number = parse_signal(value)
    except ApiError as exc:
        assert (exc.status, exc.code) == (400, "invalid_signal")
        return
    assert type(number) is int and 1 <= number <= 64


async def test_the_agent_ignores_any_control_frame():
    class Terminal:  # what _control may call; records instead of touching a tty
        def __init__(self):
            self.calls = []

        def resize(self, rows, cols):
            self.calls.append(("resize", rows, cols))

        def send_signal(self, sig):
            self.calls.append(("signal", sig))

    terminal = Terminal()
    for text in ('{"type":"resize","rows":1e999,"cols":1}', "[" * 100_000, "null", '"x"', "{}",
                 '{"type":"signal","signal":"NOPE"}', '{"type":"resize","rows":30,"cols":100}'):
        await agent_pty._control(terminal, text)  # type: ignore[arg-type]
    assert terminal.calls == [("resize", 30, 100)]


# --- forwarding: header rewriting ---------------------------------------------------------------

KEY = "sk_" + "A1b2" * 8
CASES = st.sampled_from([str.lower, str.upper, str.title, lambda s: s])
SPACES = st.sampled_from([" ", "  ", "\t", " \t "])


@st.composite
def chaser_authorization(draw):
    scheme = draw(CASES)("bearer")
    return draw(st.sampled_from(["", " ", "  "])) + scheme + draw(SPACES) + KEY + draw(st.sampled_from(["", " "]))


@st.composite
def cookie_with_token(draw):
    others = draw(st.lists(st.sampled_from(["a=1", "theme=dark", "x=", "chaser_tokenx=1", "y=chaser_token"]),
                           max_size=3))
    ours = [draw(st.sampled_from(["", " ", "\t"])) + "chaser_token" + draw(st.sampled_from(["=", " =", "= "]))
            + draw(st.sampled_from([KEY, '"' + KEY + '"', "tok." + KEY])) for _ in range(draw(st.integers(1, 3)))]
    parts = draw(st.permutations(others + ours))
    return draw(st.sampled_from([";", "; ", " ;  "])).join(parts)


NAMES = st.sampled_from([*sorted(fwd.HOP_BY_HOP), "host", "content-length", "x-forwarded-host", "x-forwarded-for", "x-real-ip", "accept", "x-custom", "cookie", "authorization", "x-chaser-account", "sec-websocket-key"])
VALUES = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=30)


@st.composite
def request_headers(draw):
    raw = [(draw(CASES)(draw(NAMES)), draw(VALUES)) for _ in range(draw(st.integers(0, 8)))]
    raw += [("authorization", draw(chaser_authorization())) for _ in range(draw(st.integers(0, 2)))]
    raw += [(draw(CASES)("cookie"), draw(cookie_with_token())) for _ in range(draw(st.integers(0, 2)))]
    listed = draw(st.lists(st.sampled_from(["x-custom", "accept", "X-Secret", "keep-alive"]), max_size=3))
    if listed:
        raw.append(("connection", draw(SPACES).join(listed).replace(" ", ",") + ", close"))
        raw.append(("x-secret", "listed in Connection"))
    raw = draw(st.permutations(raw))
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in raw]


def _connection_listed(raw) -> set[str]:
    listed = set()
    for name, value in raw:
        if name.lower() == b"connection":
            listed |= {t.strip().lower() for t in value.decode("latin-1").split(",") if t.strip()}
    return listed


@SOME
@given(request_headers(), st.booleans())
def test_no_credential_or_hop_by_hop_header_reaches_the_sandbox(raw, websocket):
    out = fwd.upstream_request_headers(raw, port=3000, client_host="203.0.113.9", scheme="https",
                                       prefix="/s/ses_x/forward/3000", websocket=websocket)
    names = [name for name, _ in out]
    dropped = fwd.HOP_BY_HOP | _connection_listed(raw) | {"content-length"}
    for name, value in out:
        assert name == name.lower() and name not in dropped, name
        assert KEY not in value, (name, value)  # our API key, in any header, in any form
        assert "\r" not in value and "\n" not in value and "\x00" not in value, (name, value)
        if name == "cookie":
            assert "chaser_token" not in [part.split("=", 1)[0].strip() for part in value.split(";")], value
        if websocket:
            assert name not in fwd.WS_HANDSHAKE_HEADERS
    assert out[0] == ("host", "localhost:3000") and names.count("host") == 1
    assert names.count("x-forwarded-proto") == names.count("x-forwarded-prefix") == names.count("x-forwarded-for") == 1
    assert ("x-forwarded-proto", "https") in out and ("x-forwarded-prefix", "/s/ses_x/forward/3000") in out


RESPONSE_NAMES = st.sampled_from([*sorted(fwd.HOP_BY_HOP | fwd.ORIGIN_WIDE_HEADERS), "content-type", "location", "content-location", "content-security-policy", "x-custom", "set-cookie"])


@st.composite
def response_headers(draw):
    raw = [(draw(CASES)(draw(RESPONSE_NAMES)), draw(VALUES)) for _ in range(draw(st.integers(0, 8)))]
    raw += [("Set-Cookie", draw(st.sampled_from(["chaser_token=x", " chaser_token=x; Path=/", "a=1; Domain=.example",
                                                 "a=1; domain = example.com", "a=1; Path=/; HttpOnly"])))
            for _ in range(draw(st.integers(0, 2)))]
    raw += [("Content-Security-Policy", draw(st.sampled_from(["sandbox allow-same-origin", "default-src 'self'",
                                                              "SANDBOX; script-src *", "a, sandbox allow-top-navigation"])))
            for _ in range(draw(st.integers(0, 2)))]
    listed = draw(st.lists(st.sampled_from(["x-custom", "content-type"]), max_size=2))
    if listed:
        raw.append(("Connection", ", ".join(listed)))
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in draw(st.permutations(raw))]


@SOME
@given(response_headers(), st.booleans())
def test_a_sandbox_response_cannot_reach_beyond_its_origin(raw, api_origin):
    out = fwd.downstream_response_headers(raw, port=3000, prefix="/s/ses_x/forward/3000", api_origin=api_origin)
    dropped = fwd.HOP_BY_HOP | _connection_listed(raw)
    csp = [value.decode("latin-1") for name, value in out if name == b"content-security-policy"]
    for name, value in out:
        text = value.decode("latin-1")
        assert name == name.lower() and name.decode() not in dropped, name
        assert "\r" not in text and "\n" not in text and "\x00" not in text, (name, value)
        if name == b"set-cookie":
            assert not api_origin
            cookie_name, _, rest = text.partition("=")
            assert cookie_name.strip() != fwd.COOKIE_NAME
            assert "domain" not in [a.split("=", 1)[0].strip().lower() for a in rest.split(";")[1:]]
    if api_origin:
        assert not {name.decode() for name, _ in out} & (fwd.ORIGIN_WIDE_HEADERS - {"x-content-type-options"})
        assert out[-2:] == [(b"content-security-policy", fwd.SANDBOX_CSP.encode()), (b"x-content-type-options", b"nosniff")]
        # Ours is the only sandbox directive a browser sees.
        directives = [d.strip().split(None, 1)[0].lower() for policy in csp for p in policy.split(",")
                      for d in p.split(";") if d.strip()]
        assert directives.count("sandbox") == 1


@SOME
@given(st.text(max_size=40))
def test_a_redirect_stays_in_the_forward_prefix_or_is_left_alone(target):
    rewritten = fwd.rewrite_location(target, port=3000, prefix="/s/ses_x/forward/3000")
    for origin in ("http://localhost:3000", "http://127.0.0.1:3000"):
        if target == origin or target.startswith(origin + "/"):
            assert rewritten.startswith("/s/ses_x/forward/3000/")
    if target.startswith("/") and not target.startswith("//"):
        assert rewritten == "/s/ses_x/forward/3000" + target
    if not rewritten.startswith("/s/ses_x/forward/3000"):
        assert rewritten == target  # someone else's URL: not ours to touch


@SOME
@given(st.lists(st.tuples(st.sampled_from(["token", "TOKEN", "a", "token ", "t"]), st.text(max_size=10)), max_size=5))
def test_the_login_token_never_goes_upstream_in_the_query(pairs):
    from urllib.parse import parse_qsl, urlencode
    assert "token" not in dict(parse_qsl(fwd.query_without(urlencode(pairs), "token"), keep_blank_values=True))


# --- MCP: the terminal tool's xml file operations --------------------------------------------------

XML_PIECES = st.sampled_from([
    "<read_file", "<write_file", "<apply_edit", "<list_files", "<search>", "</search>", "<replace>", "</replace>",
    "</write_file>", "</apply_edit>", ' path="a.txt"', " path='b'", ' recursive="true"', "/>", ">", "<", "&", "&amp;",
    "&lt;", "&#0;", "&#x41;", "&bogus;", "<![CDATA[", "]]>", "<!--", "-->", "<?xml version='1.0'?>", "<!DOCTYPE ops>",
    '<!ENTITY a "b">', "%a;", "&a;", "\n", "text", "é中", "\x00", "\x01", "<x>", "</ops>", "<ops>", "\ud800",
])


@SOME
@given(st.one_of(st.lists(XML_PIECES, max_size=12).map("".join), st.text(max_size=80)))
def test_any_xml_argument_is_a_list_of_operations_or_the_tools_argument_error(xml):
    try:
        ops = parse_xml_ops(xml)
    except XmlOpsError:
        with pytest.raises(ToolArgumentError):
            parse_terminal_arguments({"workspace": "dev", "xml": xml})
        return
    assert ops and all(isinstance(op, FileOp) and op.op in mcp_files.FILE_OPS and op.path for op in ops)


@FEW
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from("\n\t<&>\"'"),
               max_size=200).filter(lambda s: "]]>" not in s and not s.startswith("\n")))
def test_write_file_content_round_trips(content):
    (op,) = parse_xml_ops(f'<write_file path="p"><![CDATA[{content}]]></write_file>')
    assert (op.op, op.path, op.content) == ("write_file", "p", content)


BILLION_LAUGHS = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                  + "".join(f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">'
                            for i in range(1, 10))
                  + ']><lolz>&lol9;</lolz>')
HOSTILE = [
    BILLION_LAUGHS,
    '<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>',
    '<!DOCTYPE r [<!ENTITY % p SYSTEM "http://127.0.0.1:9/x.dtd"> %p;]><r/>',
    '<!DOCTYPE r SYSTEM "http://127.0.0.1:9/x.dtd"><r/>',
    '<!DOCTYPE r [<!ENTITY a "aaaaaaaaaa">]><r>&a;&a;</r>',
]


@pytest.mark.parametrize("document", HOSTILE)
def test_a_dtd_or_entity_is_refused_with_the_tools_error_not_expanded(document):
    started = time.monotonic()
    # As the tool's argument (inside the implicit <ops> wrapper, where no DTD is well-formed) …
    for xml in (document, document.split("?>", 1)[-1], f'<write_file path="p">{document}</write_file>'):
        try:
            ops = parse_xml_ops(xml)
        except XmlOpsError:
            continue
        # … the lenient pass may take the text as a file's content, verbatim and unexpanded.
        assert [op.content for op in ops] == [document]
    # … and the parser itself, given the document whole, refuses it (defusedxml) instead of expanding it.
    with pytest.raises(XmlOpsError, match="DTD, entity declarations or external references"):
        mcp_files._fromstring(document)
    assert time.monotonic() - started < 1.0


def test_the_tool_call_reports_a_refused_dtd_as_invalid_arguments():
    with pytest.raises(ToolArgumentError, match="xml"):
        parse_terminal_arguments({"workspace": "dev", "xml": BILLION_LAUGHS})

