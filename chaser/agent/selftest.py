"""GET /selftest: what a user process actually sees inside the sandbox."""


from aiohttp import web

from .errors import internal

TOOLS = ("node", "python3", "git", "bun", "cargo", "rustc", "go")

# Runs as the init user with the normal environment, exactly like /exec.
SCRIPT = r"""
echo "cwd=$(pwd)"
echo "home=$HOME"
echo "user=$(id -un 2>/dev/null || echo "$USER")"
echo "shell=$SHELL"
echo "path=$PATH"
echo "term=$TERM"
echo "lang=$LANG"
if [ -d /workspace ]; then echo "workspace=1"; else echo "workspace=0"; fi
for t in @TOOLS@; do
  p=$(command -v "$t" 2>/dev/null) || continue
  case "$p" in /*) ;; *) continue ;; esac
  echo "tool.$t=$p"
  if [ "$t" = go ]; then v=$("$p" version 2>&1 | head -n 1); else v=$("$p" --version 2>&1 | head -n 1); fi
  echo "version.$t=$v"
done
""".replace("@TOOLS@", " ".join(TOOLS))


def parse(text: str) -> dict:
    values, tools, versions = {}, {}, {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key.startswith("tool."):
            tools[key[5:]] = value
        elif key.startswith("version."):
            versions[key[8:]] = value
        else:
            values[key] = value
    path = values.get("path", "")
    return {
        "cwd": values.get("cwd"), "home": values.get("home"), "user": values.get("user"),
        "shell": values.get("shell"), "path": path, "path_entries": [p for p in path.split(":") if p],
        "term": values.get("term"), "lang": values.get("lang"),
        "workspace_root_present": values.get("workspace") == "1",
        "tools": tools, "tool_versions": versions,
    }


async def handle_selftest(agent, request):
    import base64
    cwd, user, env, preexec = agent.spawn_setup(None, None, None, "dumb")
    p = await agent.procs.spawn(["/bin/sh", "-c", SCRIPT], "selftest", cwd, user.name, env, preexec)
    # TCG is slow and `X --version` of big runtimes takes seconds there.
    result = await agent.procs.run_foreground(p, 180, 1024 * 1024)
    if result["status"] != "completed":
        raise internal(f"selftest script {result['status']} (exit {result['exit_code']})")
    agent.procs.processes.pop(p.id, None)  # internal, not a user process
    return web.json_response(parse(base64.b64decode(result["output"]).decode("utf-8", "replace")))
