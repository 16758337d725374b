// Workspaces: list, create, rename, delete, and their snapshots (create, restore, delete).
import * as api from "./api.js";
import {age, busy, bytes, clear, confirmDialog, describe, field, formDialog, h, toast} from "./ui.js";

const w = (ref) => `/v1/workspaces/${api.enc(ref)}`;

export function workspacesView(main) {
  const body = h("tbody", {id: "workspaces-body"});
  const error = h("p", {class: "error", role: "alert", hidden: true});
  const empty = h("p", {class: "muted", hidden: true}, "No workspaces yet.");
  const detail = h("div", {id: "workspace-detail"});
  const create = h("button", {type: "button", id: "create-workspace"}, "New workspace");
  let selected = null;
  clear(main, h("section", {class: "stack"},
    h("div", {class: "toolbar"}, h("h1", {}, "Workspaces"), h("div", {class: "spacer"}), create),
    error, h("div", {class: "scroll"}, h("table", {class: "list", id: "workspaces-table"},
      h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Image"), h("th", {}, "Session"),
        h("th", {}, "Created"), h("th", {}, h("span", {class: "sr-only"}, "Actions")))), body)), empty, detail));

  async function refresh() {
    try {
      const list = await api.get("/v1/workspaces");
      error.hidden = true;
      empty.hidden = list.length > 0;
      clear(body, list.map((ws) => row(ws)));
      if (selected && !list.some((ws) => ws.id === selected)) { selected = null; clear(detail); }
    } catch (e) {
      error.textContent = describe(e);
      error.hidden = false;
    }
  }

  function row(ws) {
    const label = ws.name || ws.id;
    const rename = h("button", {type: "button", class: "secondary small"}, "Rename");
    const remove = h("button", {type: "button", class: "secondary small danger"}, "Delete");
    const snaps = h("button", {type: "button", class: "small"}, "Snapshots");
    rename.addEventListener("click", async () => {
      const data = await formDialog(`Rename ${label}`, [field("Name", h("input", {name: "name", value: ws.name || "",
        id: "rename-input", pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]*", maxlength: 64}), "Empty: no name")], "Rename");
      if (!data) return;
      const name = data.get("name").trim() || null;
      if (await busy(rename, () => api.put(`${w(ws.id)}/name`, {name}))) { toast(`Renamed to ${name || ws.id}`); refresh(); }
    });
    remove.addEventListener("click", async () => {
      const running = Boolean(ws.active_session_id);
      if (!await confirmDialog(`Delete workspace ${label}${running ? " and stop its session" : ""}? Its disk and snapshots go too.`,
                               "Delete")) return;
      if (await busy(remove, () => api.del(`${w(ws.id)}${running ? "?force=true" : ""}`))) { toast(`Deleted ${label}`); refresh(); }
    });
    snaps.addEventListener("click", () => { selected = ws.id; showSnapshots(detail, ws, refresh); });
    return h("tr", {dataset: {workspace: ws.name || ws.id}},
      h("td", {}, h("span", {class: ws.name ? "" : "mono"}, label), ws.template ? h("span", {class: "badge"}, "template") : null),
      h("td", {class: "mono"}, ws.image || ""),
      h("td", {}, ws.active_session_id
        ? h("a", {href: `#/sessions/${api.enc(ws.active_session_id)}`, class: "mono"}, ws.active_session_id.slice(0, 16))
        : h("span", {class: "muted"}, "none")),
      h("td", {title: ws.created_at}, age(ws.created_at)),
      h("td", {class: "actions-cell"}, snaps, rename, remove));
  }

  create.addEventListener("click", async () => {
    const data = await formDialog("New workspace", [
      field("Name", h("input", {name: "name", id: "workspace-name", pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]*", maxlength: 64,
                                autocomplete: "off"})),
      field("Image", h("input", {name: "image", id: "workspace-image", placeholder: "chaser/base"})),
      h("label", {class: "check"}, h("input", {type: "checkbox", name: "internet", checked: true}), " Internet"),
    ], "Create");
    if (!data) return;
    const body = {session_type: "sandbox", network: {internet: data.get("internet") === "on"}};
    if (data.get("name").trim()) body.name = data.get("name").trim();
    if (data.get("image").trim()) body.image = data.get("image").trim();
    const ws = await busy(create, () => api.post("/v1/workspaces", body));
    if (ws) { toast(`Workspace ${ws.name || ws.id} created`); refresh(); }
  });

  refresh();
  const timer = setInterval(refresh, 5000);
  return () => clearInterval(timer);
}

function showSnapshots(detail, ws, refreshWorkspaces) {
  const label = ws.name || ws.id;
  const body = h("tbody", {id: "snapshots-body"});
  const error = h("p", {class: "error", role: "alert", hidden: true});
  const take = h("button", {type: "button", id: "create-snapshot"}, "Take snapshot");
  const close = h("button", {type: "button", class: "secondary", onclick: () => clear(detail)}, "Close");
  clear(detail, h("div", {class: "card stack", id: "snapshots"},
    h("div", {class: "toolbar"}, h("h2", {}, `Snapshots of ${label}`), h("div", {class: "spacer"}), take, close),
    error, h("div", {class: "scroll"}, h("table", {class: "list"},
      h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Size"), h("th", {}, "Created"),
        h("th", {}, "Restored"), h("th", {}, h("span", {class: "sr-only"}, "Actions")))), body))));

  async function refresh() {
    try {
      const list = await api.get(`${w(ws.id)}/snapshots`);
      error.hidden = true;
      clear(body, list.length ? list.map(snapshotRow) : h("tr", {}, h("td", {colspan: 5, class: "muted"}, "No snapshots.")));
    } catch (e) {
      error.textContent = describe(e);
      error.hidden = false;
    }
  }
  function snapshotRow(snap) {
    const name = snap.name || snap.id;
    const restore = h("button", {type: "button", class: "small"}, "Restore");
    const remove = h("button", {type: "button", class: "secondary small danger"}, "Delete");
    restore.addEventListener("click", async () => {
      const current = await api.get(w(ws.id)).catch(() => ws);
      const running = Boolean(current.active_session_id);
      if (!await confirmDialog(`Restore ${label} to ${name}?${running ? " Its running session is stopped first." : ""}`,
                               "Restore")) return;
      const done = await busy(restore, () => api.post(`${w(ws.id)}/snapshots/${api.enc(snap.id)}/restore`, {force: running}));
      if (done) { toast(`Restored ${label} to ${name}`); refresh(); refreshWorkspaces(); }
    });
    remove.addEventListener("click", async () => {
      if (!await confirmDialog(`Delete snapshot ${name}?`, "Delete")) return;
      if (await busy(remove, () => api.del(`${w(ws.id)}/snapshots/${api.enc(snap.id)}`))) { toast(`Deleted ${name}`); refresh(); }
    });
    return h("tr", {dataset: {snapshot: name}},
      h("td", {}, name), h("td", {}, bytes(snap.used_bytes)), h("td", {title: snap.created_at}, age(snap.created_at)),
      h("td", {title: snap.restored_at || ""}, snap.restored_at ? age(snap.restored_at) : ""),
      h("td", {class: "actions-cell"}, restore, remove));
  }
  take.addEventListener("click", async () => {
    const data = await formDialog(`Snapshot of ${label}`, [field("Name", h("input", {name: "name", id: "snapshot-name",
      autocomplete: "off"}), "Optional")], "Take snapshot");
    if (!data) return;
    const name = data.get("name").trim();
    const snap = await busy(take, () => api.post(`${w(ws.id)}/snapshots`, name ? {name} : {}));
    if (snap) { toast(`Snapshot ${snap.name || snap.id} taken`); refresh(); }
  });
  refresh();
}
