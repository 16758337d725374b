// API keys: list, create (the key is shown once), revoke.
import * as api from "./api.js";
import {age, busy, clear, confirmDialog, describe, field, formDialog, h, toast} from "./ui.js";

const SCOPES = ["sessions.read", "sessions.write", "exec.write", "files.read", "files.write", "workspaces.read",
                "workspaces.write", "keys.read", "keys.write", "audit.read"];

export function keysView(main) {
  const body = h("tbody", {id: "keys-body"});
  const error = h("p", {class: "error", role: "alert", hidden: true});
  const created = h("div", {id: "created-key"});
  const create = h("button", {type: "button", id: "create-key"}, "New key");
  clear(main, h("section", {class: "stack"},
    h("div", {class: "toolbar"}, h("h1", {}, "API keys"), h("div", {class: "spacer"}), create),
    error, created, h("div", {class: "scroll"}, h("table", {class: "list", id: "keys-table"},
      h("thead", {}, h("tr", {}, h("th", {}, "Prefix"), h("th", {}, "Name"), h("th", {}, "Access"),
        h("th", {}, "Created"), h("th", {}, "Last used"), h("th", {}, h("span", {class: "sr-only"}, "Actions")))), body))));

  async function refresh() {
    try {
      const page = await api.get("/v1/keys");
      error.hidden = true;
      clear(body, (page.keys || []).map(row));
    } catch (e) {
      error.textContent = describe(e);
      error.hidden = false;
    }
  }
  function row(key) {
    const revoke = h("button", {type: "button", class: "secondary small danger", "aria-label": `Revoke ${key.key_prefix}`},
                     "Revoke");
    revoke.addEventListener("click", async () => {
      const own = (api.apiKey() || "").startsWith(key.key_prefix);
      if (!await confirmDialog(`Revoke ${key.key_prefix}${key.name ? ` (${key.name})` : ""}?` +
                               (own ? " It is the key this console uses: you will be logged out." : ""), "Revoke")) return;
      if (await busy(revoke, () => api.del(`/v1/keys/${api.enc(key.id)}`))) { toast(`Revoked ${key.key_prefix}`); refresh(); }
    });
    return h("tr", {dataset: {key: key.id}, class: key.revoked ? "revoked" : ""},
      h("td", {class: "mono"}, key.key_prefix), h("td", {}, key.name || ""),
      h("td", {}, key.full_access ? "full" : (key.scopes || []).join(", ")),
      h("td", {title: key.created_at}, age(key.created_at)),
      h("td", {title: key.last_used_at || ""}, key.last_used_at ? age(key.last_used_at) : "never"),
      h("td", {class: "actions-cell"}, key.revoked ? h("span", {class: "muted"}, "revoked") : revoke));
  }
  create.addEventListener("click", async () => {
    const boxes = SCOPES.map((scope) => h("label", {class: "check"},
      h("input", {type: "checkbox", name: "scope", value: scope}), " ", h("code", {}, scope)));
    const data = await formDialog("New API key", [
      field("Name", h("input", {name: "name", id: "key-name", autocomplete: "off"})),
      h("fieldset", {class: "scopes"}, h("legend", {}, "Scopes (none: the access of this key)"), boxes),
    ], "Create");
    if (!data) return;
    const body = {};
    if (data.get("name").trim()) body.name = data.get("name").trim();
    const scopes = data.getAll("scope");
    if (scopes.length) body.scopes = scopes;
    const key = await busy(create, () => api.post("/v1/keys", body));
    if (!key) return;
    const value = h("input", {readonly: true, value: key.key, id: "new-key-value", class: "mono", "aria-label": "The new key"});
    const copy = h("button", {type: "button", class: "small", onclick: async () => {
      value.select();
      try { await navigator.clipboard.writeText(key.key); toast("Copied"); } catch (e) { toast("Select and copy it", "error"); }
    }}, "Copy");
    clear(created, h("div", {class: "card notice stack", role: "status"},
      h("strong", {}, `Key ${key.key_prefix} created. Copy it now: it is not shown again.`),
      h("div", {class: "toolbar"}, value, copy),
      h("button", {type: "button", class: "secondary small", onclick: () => clear(created)}, "Done")));
    value.focus();
    value.select();
    refresh();
  });
  refresh();
  return () => {};
}
