// A session's files (upload, download) and its forwarded ports (listening ones, links through the gateway).
import * as api from "./api.js";
import {busy, bytes, clear, describe, field, h, toast} from "./ui.js";

export function filesTab(panel, sessionId) {
  const base = `/v1/sessions/${api.enc(sessionId)}`;
  const file = h("input", {type: "file", name: "file", id: "upload-file", required: true});
  const target = h("input", {name: "path", id: "upload-path", placeholder: "/workspace/ (the file's name is added)",
                             autocomplete: "off", spellcheck: "false"});
  const upload = h("button", {type: "submit", id: "upload-button"}, "Upload");
  const uploaded = h("p", {id: "upload-result", class: "muted", "aria-live": "polite"});
  const source = h("input", {name: "path", id: "download-path", required: true, placeholder: "/workspace/file.txt",
                             autocomplete: "off", spellcheck: "false"});
  const download = h("button", {type: "submit", id: "download-button"}, "Download");

  const uploadForm = h("form", {class: "card stack", onsubmit: (event) => {
    event.preventDefault();
    const chosen = file.files[0];
    if (!chosen) return;
    let path = target.value.trim() || "/workspace/";
    if (path.endsWith("/")) path += chosen.name;
    busy(upload, async () => {
      const form = new FormData();
      form.append("path", path);
      form.append("file", chosen, chosen.name);
      const answer = await api.post(`${base}/upload`, undefined, {body: form});
      uploaded.textContent = `Uploaded ${answer.path} (${bytes(answer.size)})`;
      toast(uploaded.textContent);
    });
  }}, h("h2", {}, "Upload"), field("File", file), field("To", target), h("div", {class: "actions"}, upload), uploaded);

  const downloadForm = h("form", {class: "card stack", onsubmit: (event) => {
    event.preventDefault();
    const path = source.value.trim();
    busy(download, async () => {
      const response = await api.raw("GET", `${base}/download?path=${api.enc(path)}`);
      const url = URL.createObjectURL(await response.blob());
      const link = h("a", {href: url, download: path.split("/").pop() || "download"});
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    });
  }}, h("h2", {}, "Download"), field("Path", source), h("div", {class: "actions"}, download));

  clear(panel, h("div", {class: "grid"}, uploadForm, downloadForm));
  return null;
}

// Listening TCP sockets, read from the guest's /proc/net/tcp{,6} through the exec API (the
// API lists public ports, not listening ones).
const LISTEN = "cat /proc/net/tcp /proc/net/tcp6 2>/dev/null";
const AGENT_PORT = 8420;  // the in-guest agent (chaser/agent/protocol.py): the API's, not the sandbox's

function listeningPorts(text) {
  const ports = new Set();
  for (const line of text.split("\n")) {
    const parts = line.trim().split(/\s+/);
    if (parts.length < 4 || parts[3] !== "0A") continue;  // 0A: TCP_LISTEN
    const port = parseInt(parts[1].split(":").pop(), 16);
    if (port && port !== AGENT_PORT) ports.add(port);
  }
  return [...ports].sort((a, b) => a - b);
}

export function portsTab(panel, sessionId) {
  const base = `/v1/sessions/${api.enc(sessionId)}`;
  const body = h("tbody", {id: "ports-body"});
  const note = h("p", {class: "muted", id: "ports-note", hidden: true});
  const refreshButton = h("button", {type: "button", class: "secondary", id: "ports-refresh"}, "Refresh");
  const error = h("p", {class: "error", role: "alert", hidden: true});

  async function refresh() {
    try {
      const [answer, publicPorts] = await Promise.all([
        api.post(`${base}/exec`, {command: LISTEN, timeout_ms: 10000}),
        api.get(`${base}/ports`),
      ]);
      error.hidden = true;
      const open = new Map((publicPorts.ports || []).map((p) => [p.port, p.url]));
      const ports = listeningPorts(answer.output || "");
      for (const port of open.keys()) if (!ports.includes(port)) ports.push(port);
      note.textContent = "Nothing listens on a TCP port in this session.";
      note.hidden = ports.length > 0;
      clear(body, ports.map((port) => portRow(base, port, open.get(port), refresh)));
    } catch (e) {
      error.textContent = describe(e);
      error.hidden = false;
    }
  }
  refreshButton.addEventListener("click", () => busy(refreshButton, refresh));
  clear(panel, h("div", {class: "stack"},
    h("div", {class: "toolbar"}, h("h2", {}, "Listening ports"), h("div", {class: "spacer"}), refreshButton),
    error, h("div", {class: "scroll"}, h("table", {class: "list"},
      h("thead", {}, h("tr", {}, h("th", {}, "Port"), h("th", {}, "Open"), h("th", {}, "Public"))), body)), note,
    h("p", {class: "muted"}, "“Open” makes a 60 s login link to the session's own address (needs CHASER_BASE_DOMAIN on ",
      "the server). A public port needs no key, on the API's address (sandboxed). Or: ",
      h("code", {}, `chaser forward --session ${sessionId} PORT`), ".")));
  refresh();
  return null;
}

function portRow(base, port, publicUrl, refresh) {
  const openButton = h("button", {type: "button", class: "small", dataset: {port: String(port)}}, "Open");
  openButton.addEventListener("click", () => busy(openButton, async () => {
    const popup = window.open("about:blank", "_blank");
    try {
      const link = await api.post(`${base}/ports/${port}/link`, undefined);
      if (popup) {
        popup.opener = null;  // the sandbox's page gets no handle on the console's window
        popup.location = link.url;
      } else {
        location.assign(link.url);
      }
    } catch (e) {
      if (popup) popup.close();
      throw e;
    }
  }));
  const toggle = h("input", {type: "checkbox", checked: Boolean(publicUrl), "aria-label": `Port ${port} public`});
  toggle.addEventListener("change", () => busy(toggle, async () => {
    await api.post(`${base}/ports/${port}/public`, {public: toggle.checked});
    toast(`Port ${port} is ${toggle.checked ? "public" : "private"}`);
    refresh();
  }));
  return h("tr", {dataset: {port: String(port)}},
    h("td", {class: "mono"}, String(port)),
    h("td", {}, openButton),
    h("td", {}, h("label", {class: "check"}, toggle,
      publicUrl ? h("a", {href: publicUrl, target: "_blank", rel: "noopener noreferrer", class: "mono"}, publicUrl) : "")));
}
