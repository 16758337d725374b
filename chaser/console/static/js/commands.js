// A session's commands: the list, running a new one, and a command's output streamed (SSE).
import * as api from "./api.js";
import {busy, clear, describe, h, statusBadge} from "./ui.js";

function decode(chunk) {
  if (chunk.encoding !== "base64") return chunk.data;
  const bytes = Uint8Array.from(atob(chunk.data), (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

export function commandsTab(panel, sessionId) {
  const base = `/v1/sessions/${api.enc(sessionId)}`;
  const input = h("input", {name: "command", id: "command-input", required: true, autocomplete: "off",
                            placeholder: "e.g. python3 -m http.server 3000", "aria-label": "Command",
                            spellcheck: "false"});
  const run = h("button", {type: "submit", id: "command-run"}, "Run");
  const body = h("tbody", {id: "commands-body"});
  const output = h("pre", {class: "output tall", id: "command-output", "aria-live": "polite"});
  const heading = h("h2", {id: "command-heading"}, "Output");
  const error = h("p", {class: "error", role: "alert", hidden: true});
  let controller = null;
  let shown = null;

  const form = h("form", {class: "toolbar", onsubmit: (event) => {
    event.preventDefault();
    busy(run, async () => {
      const answer = await api.post(`${base}/exec`, {command: input.value, background: true});
      input.value = "";
      await refresh();
      if (answer.command_id) follow(answer.command_id, answer.command);
    });
  }}, input, run);

  clear(panel, h("div", {class: "stack"}, form, error,
    h("div", {class: "split"},
      h("div", {class: "scroll"}, h("table", {class: "list"},
        h("thead", {}, h("tr", {}, h("th", {}, "Command"), h("th", {}, "Status"), h("th", {}, "Exit"),
                                  h("th", {}, h("span", {class: "sr-only"}, "Actions")))), body)),
      h("div", {class: "card stack"}, heading, output))));

  async function refresh() {
    try {
      const page = await api.get(`${base}/commands`);
      error.hidden = true;
      const commands = (page.commands || []).slice().sort((a, b) => (b.started_at_epoch || 0) - (a.started_at_epoch || 0));
      clear(body, commands.map((c) => {
        const kill = c.status === "running"
          ? h("button", {type: "button", class: "secondary small", onclick: (event) => busy(event.currentTarget, async () => {
              await api.post(`${base}/commands/${api.enc(c.command_id)}/kill`, {signal: "TERM"});
              refresh();
            })}, "Kill")
          : null;
        return h("tr", {dataset: {command: c.command_id}, class: c.command_id === shown ? "selected" : ""},
          h("td", {}, h("button", {type: "button", class: "link mono cut", title: c.command,
                                   onclick: () => follow(c.command_id, c.command)}, c.command)),
          h("td", {}, statusBadge(c.status)), h("td", {}, c.exit_code ?? ""), h("td", {}, kill));
      }));
    } catch (e) {
      error.textContent = describe(e);
      error.hidden = false;
    }
  }

  function follow(commandId, command) {
    if (controller) controller.abort();
    controller = new AbortController();
    shown = commandId;
    heading.textContent = `Output of ${command}`;
    output.textContent = "";
    const mine = controller;
    api.stream(`${base}/commands/${api.enc(commandId)}/stream?interval_ms=1000`, (event, data) => {
      const payload = JSON.parse(data);
      if (event === "output") output.textContent += decode(payload);
      else if (event === "exit") { output.dataset.exit = String(payload.exit_code); refresh(); }
      else if (event === "error") output.textContent += `\n[${payload.message} (${payload.code})]`;
      output.scrollTop = output.scrollHeight;
    }, {signal: mine.signal}).catch((e) => {
      if (e.name !== "AbortError") output.textContent += `\n[${describe(e)}]`;
    });
    for (const row of body.querySelectorAll("tr")) row.classList.toggle("selected", row.dataset.command === commandId);
  }

  refresh();
  const timer = setInterval(refresh, 5000);
  return () => { clearInterval(timer); if (controller) controller.abort(); };
}
