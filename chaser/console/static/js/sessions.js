// Sessions: the live list (polled), create, and one session's page with its tabs.
import * as api from "./api.js";
import {age, busy, clear, confirmDialog, describe, field, formDialog, h, statusBadge, toast, until} from "./ui.js";
import {terminalTab} from "./terminal.js";
import {commandsTab} from "./commands.js";
import {filesTab, portsTab} from "./files.js";

const POLL_MS = 2000;
const TABS = [["overview", "Overview"], ["terminal", "Terminal"], ["commands", "Commands"], ["files", "Files"],
              ["ports", "Ports"]];

export const shortId = (id) => (id && id.length > 16 ? id.slice(0, 16) : id || "");

async function workspaceNames() {
  try {
    const list = await api.get("/v1/workspaces");
    return new Map(list.map((w) => [w.id, w.name || w.id]));
  } catch (error) {
    return new Map();
  }
}

function poller(action, interval) {
  let timer = null, stopped = false;
  async function tick() {
    if (stopped) return;
    await action();
    if (!stopped) timer = setTimeout(tick, interval);
  }
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}

export async function terminateSession(id, button) {
  if (!await confirmDialog(`Terminate session ${shortId(id)}?`, "Terminate")) return false;
  const done = await busy(button, () => api.del(`/v1/sessions/${api.enc(id)}`));
  if (done) toast(`Session ${shortId(id)} terminated`);
  return Boolean(done);
}

export function sessionsView(main) {
  const filter = h("select", {id: "session-filter", "aria-label": "Which sessions"},
    h("option", {value: "active"}, "Active"), h("option", {value: "all"}, "All"));
  const body = h("tbody", {id: "sessions-body"});
  const empty = h("p", {class: "muted", hidden: true}, "No sessions. Create one to get a sandbox.");
  const error = h("p", {class: "error", role: "alert", hidden: true});
  const head = h("thead", {});
  const table = h("table", {class: "list", id: "sessions-table"}, head, body);
  const create = h("button", {type: "button", id: "create-session", onclick: () => createSession(create)}, "New session");
  clear(main, h("section", {class: "stack"},
    h("div", {class: "toolbar"}, h("h1", {}, "Sessions"), h("div", {class: "spacer"}), filter, create),
    error, h("div", {class: "scroll"}, table), empty));

  let names = new Map();
  let namesAt = 0;
  async function refresh() {
    try {
      if (Date.now() - namesAt > 10000) { names = await workspaceNames(); namesAt = Date.now(); }
      const page = await api.get(`/v1/sessions?status=${filter.value}`);
      error.hidden = true;
      render(page.sessions || []);
    } catch (e) {
      error.textContent = describe(e);
      error.hidden = false;
    }
  }
  function render(sessions) {
    const withNode = sessions.some((s) => s.node);
    clear(head, h("tr", {}, h("th", {}, "Session"), h("th", {}, "Status"), h("th", {}, "Image"),
      h("th", {}, "Workspace"), withNode ? h("th", {}, "Node") : null, h("th", {}, "Age"), h("th", {}, "Expires"),
      h("th", {}, h("span", {class: "sr-only"}, "Actions"))));
    const now = Date.now();
    clear(body, sessions.map((s) => {
      const terminate = h("button", {type: "button", class: "secondary small", "aria-label": `Terminate ${s.id}`},
                          "Terminate");
      terminate.addEventListener("click", async () => { if (await terminateSession(s.id, terminate)) refresh(); });
      const live = s.status === "running" || s.status === "starting";
      return h("tr", {dataset: {session: s.id}},
        h("td", {}, h("a", {href: `#/sessions/${api.enc(s.id)}`, class: "mono", title: s.id}, shortId(s.id))),
        h("td", {}, statusBadge(s.status)),
        h("td", {class: "mono"}, s.image || ""),
        h("td", {}, s.workspace_id ? (names.get(s.workspace_id) || shortId(s.workspace_id)) : h("span", {class: "muted"}, "ephemeral")),
        withNode ? h("td", {}, s.node || "") : null,
        h("td", {title: s.created_at}, age(s.created_at, now)),
        h("td", {title: s.expires_at || ""}, live ? until(s.expires_at, now) : (s.end_reason || "")),
        h("td", {class: "actions-cell"}, live ? terminate : null));
    }));
    empty.hidden = sessions.length > 0;
    table.hidden = sessions.length === 0;
  }
  filter.addEventListener("change", refresh);
  return poller(refresh, POLL_MS);
}

function lines(text) {
  return String(text || "").split(/[\n,]/).map((s) => s.trim()).filter(Boolean);
}

async function createSession(button) {
  const names = await workspaceNames();
  const list = h("datalist", {id: "workspace-names"}, [...names.values()].map((n) => h("option", {value: n})));
  const kind = h("select", {name: "kind", id: "new-kind"},
    h("option", {value: "ephemeral"}, "Ephemeral (discarded at the end)"),
    h("option", {value: "workspace"}, "Workspace (persistent disk)"));
  const image = field("Image", h("input", {name: "image", id: "new-image", placeholder: "chaser/base"}),
                      "Any OCI reference (ephemeral sessions only)");
  const workspace = field("Workspace", h("input", {name: "workspace", id: "new-workspace", list: "workspace-names"}),
                          "Name or id of an existing workspace");
  workspace.hidden = true;
  kind.addEventListener("change", () => {
    workspace.hidden = kind.value !== "workspace";
    image.hidden = kind.value !== "ephemeral";
  });
  const data = await formDialog("New session", [
    field("Kind", kind), image, workspace, list,
    field("Environment", h("textarea", {name: "env", id: "new-env", rows: 3, placeholder: "KEY=value, one a line"})),
    h("fieldset", {}, h("legend", {}, "Network"),
      h("label", {class: "check"}, h("input", {type: "checkbox", name: "internet", id: "new-internet", checked: true}),
        " Internet"),
      field("Allow out", h("input", {name: "allow_out", id: "new-allow", placeholder: "github.com, *.pypi.org"}),
            "Only these (empty: anything)"),
      field("Deny out", h("input", {name: "deny_out", id: "new-deny", placeholder: "evil.example"}))),
    field("Lifetime (s)", h("input", {name: "ttl", id: "new-ttl", type: "number", min: 1, placeholder: "default"})),
  ], "Create");
  if (!data) return;
  const body = {session_type: "sandbox"};
  if (data.get("kind") === "ephemeral") {
    body.ephemeral = true;
    if (data.get("image").trim()) body.image = data.get("image").trim();
  } else {
    body.workspace = data.get("workspace").trim();
  }
  const env = {};
  for (const line of String(data.get("env") || "").split("\n")) {
    const text = line.trim();
    if (!text) continue;
    const eq = text.indexOf("=");
    if (eq <= 0) { toast(`Environment: '${text}' is not KEY=value`, "error"); return; }
    env[text.slice(0, eq)] = text.slice(eq + 1);
  }
  if (Object.keys(env).length) body.env = env;
  body.network = {internet: data.get("internet") === "on", allow_out: lines(data.get("allow_out")),
                  deny_out: lines(data.get("deny_out"))};
  if (data.get("ttl")) body.ttl_seconds = Number(data.get("ttl"));
  toast("Starting a session…");
  const session = await busy(button, () => api.post("/v1/sessions", body));
  if (session) {
    toast(`Session ${shortId(session.id)} is ${session.status}`);
    location.hash = `#/sessions/${api.enc(session.id)}`;
  }
}

export function sessionDetailView(main, id, tab) {
  if (!TABS.some(([name]) => name === tab)) tab = "overview";
  const status = h("span", {id: "session-status"});
  const terminate = h("button", {type: "button", class: "secondary", id: "terminate"}, "Terminate");
  const panel = h("div", {class: "panel", id: `tab-${tab}`, role: "tabpanel"});
  const info = h("dl", {class: "facts"});
  terminate.addEventListener("click", async () => { if (await terminateSession(id, terminate)) refresh(); });
  clear(main, h("section", {class: "stack"},
    h("div", {class: "toolbar"},
      h("a", {href: "#/sessions", class: "back", "aria-label": "All sessions"}, "←"),
      h("h1", {class: "mono", title: id}, shortId(id)), status, h("div", {class: "spacer"}), terminate),
    h("nav", {class: "tabs", "aria-label": "Session"}, TABS.map(([name, label]) =>
      h("a", {href: `#/sessions/${api.enc(id)}/${name}`, "aria-current": name === tab ? "page" : false,
              id: `tab-link-${name}`}, label))),
    panel));

  let session = null;
  let teardown = null;
  async function refresh() {
    try {
      session = await api.get(`/v1/sessions/${api.enc(id)}`);
    } catch (error) {
      clear(status, h("span", {class: "error"}, describe(error)));
      return;
    }
    clear(status, statusBadge(session.status));
    terminate.hidden = !(session.status === "running" || session.status === "starting");
    if (tab === "overview") renderFacts(info, session);
  }
  if (tab === "overview") teardown = overviewTab(panel, id, info);
  else if (tab === "terminal") teardown = terminalTab(panel, id);
  else if (tab === "commands") teardown = commandsTab(panel, id);
  else if (tab === "files") teardown = filesTab(panel, id);
  else if (tab === "ports") teardown = portsTab(panel, id);
  const stop = poller(refresh, POLL_MS * 2);
  return () => { stop(); if (teardown) teardown(); };
}

function renderFacts(info, s) {
  const rows = [["Id", s.id], ["Status", s.status], ["Image", s.image], ["Workspace", s.workspace_id || "ephemeral"],
                ["Node", s.node], ["Created", s.created_at], ["Expires", s.expires_at], ["Ended", s.ended_at],
                ["End reason", s.end_reason]];
  clear(info, rows.filter(([, v]) => v).map(([k, v]) => [h("dt", {}, k), h("dd", {class: "mono"}, v)]));
}

function overviewTab(panel, id, info) {
  const network = h("dl", {class: "facts", id: "network-policy"});
  const result = h("div", {id: "self-test"});
  const run = h("button", {type: "button", id: "run-self-test"}, "Run self-test");
  run.addEventListener("click", () => busy(run, async () => {
    clear(result, h("p", {class: "muted"}, "Running…"));
    const report = await api.post(`/v1/sessions/${api.enc(id)}/self-test`, undefined).catch((error) => {
      clear(result, h("p", {class: "error", role: "alert"}, describe(error)));
      return null;
    });
    if (report) renderSelfTest(result, report);
  }));
  clear(panel, h("div", {class: "grid"},
    h("div", {class: "card"}, h("h2", {}, "Session"), info),
    h("div", {class: "card"}, h("h2", {}, "Network policy"), network)),
    h("div", {class: "card stack"}, h("div", {class: "toolbar"}, h("h2", {}, "Self-test"), h("div", {class: "spacer"}), run),
      result));
  const list = (items) => (items && items.length ? items.join(", ") : "—");
  api.get(`/v1/sessions/${api.enc(id)}/network`).then((policy) => {
    clear(network, [["Internet", policy.internet ? "yes" : "no"], ["Allow out", list(policy.allow_out)],
                    ["Deny out", list(policy.deny_out)], ["Enforced", policy.enforced ? "yes" : "no (no network isolation)"]]
      .map(([k, v]) => [h("dt", {}, k), h("dd", {class: "mono"}, v)]));
  }).catch((error) => { clear(network, h("dd", {class: "error"}, describe(error))); });
  return null;
}

function renderSelfTest(result, report) {
  const runtime = report.runtime || {};
  const tools = runtime.tool_versions || {};
  clear(result,
    h("p", {}, "Status: ", statusBadge(report.status)),
    h("dl", {class: "facts"}, ["user", "cwd", "home", "shell", "term", "lang"].filter((k) => runtime[k]).map((k) =>
      [h("dt", {}, k), h("dd", {class: "mono"}, String(runtime[k]))])),
    Object.keys(tools).length ? h("table", {class: "list compact"},
      h("thead", {}, h("tr", {}, h("th", {}, "Tool"), h("th", {}, "Version"))),
      h("tbody", {}, Object.entries(tools).map(([name, version]) =>
        h("tr", {}, h("td", {class: "mono"}, name), h("td", {class: "mono"}, String(version)))))) : null,
    h("details", {}, h("summary", {}, "Full report"), h("pre", {class: "output"}, JSON.stringify(report, null, 2))));
}
