// Entry point: login (a key typed in, or a link's #token= / ?token=), then a hash router over
// the views. The key lives in sessionStorage only (this tab, until it is closed).
import * as api from "./api.js";
import {clear, describe, field, h} from "./ui.js";
import {sessionDetailView, sessionsView} from "./sessions.js";
import {workspacesView} from "./workspaces.js";
import {keysView} from "./keys.js";

const main = document.getElementById("main");
let cleanup = null;
let loginError = null;

// A login link: the key in the fragment (#token=, never sent to the server) or the query
// (?token=). It is taken once and removed from the address bar and the history entry.
function takeLinkToken() {
  const query = new URLSearchParams(location.search);
  const fragment = new URLSearchParams(location.hash.startsWith("#token=") ? location.hash.slice(1) : "");
  const token = fragment.get("token") || query.get("token");
  if (!token) return null;
  query.delete("token");
  const search = query.toString();
  const hash = location.hash.startsWith("#token=") ? "#/sessions" : location.hash;
  history.replaceState(null, "", location.pathname + (search ? `?${search}` : "") + hash);
  return token;
}

// 401: the key is wrong (or revoked); 403 means it is valid but lacks a scope, which each view reports.
async function checkKey(key) {
  try {
    await api.get("/v1/sessions?status=active", {key});
    return null;
  } catch (error) {
    if (error.status === 403) return null;
    if (error.status === 401) return "This API key was not accepted: " + describe(error);
    return "Could not check the key: " + describe(error);
  }
}

function loginView() {
  document.getElementById("nav").hidden = true;
  const input = h("input", {type: "password", name: "key", id: "api-key", autocomplete: "off", required: true,
                            placeholder: "sk_…", spellcheck: "false", "aria-describedby": "login-help"});
  const error = h("p", {class: "error", id: "login-error", role: "alert", hidden: !loginError}, loginError || "");
  const button = h("button", {type: "submit"}, "Log in");
  const form = h("form", {class: "card login stack", onsubmit: async (event) => {
    event.preventDefault();
    button.disabled = true;
    const key = input.value.trim();
    const problem = await checkKey(key);
    button.disabled = false;
    if (problem) {
      error.textContent = problem;
      error.hidden = false;
      input.select();
      return;
    }
    loginError = null;
    api.setApiKey(key);
    if (!location.hash.startsWith("#/")) location.hash = "#/sessions";
    route();
  }},
    h("h1", {}, "Log in"),
    field("API key", input),
    h("p", {id: "login-help", class: "muted"},
      "The key printed by ", h("code", {}, "chaser server"), ", or open the link of ",
      h("code", {}, "chaser console"), ". It is kept in this tab only (sessionStorage)."),
    error, button);
  clear(main, form);
  input.focus();
  return null;
}

const routes = [
  [/^#\/sessions\/([^/]+)(?:\/([a-z]+))?$/, (m) => sessionDetailView(main, decodeURIComponent(m[1]), m[2] || "overview")],
  [/^#\/sessions$/, () => sessionsView(main)],
  [/^#\/workspaces$/, () => workspacesView(main)],
  [/^#\/keys$/, () => keysView(main)],
];

function route() {
  if (cleanup) { try { cleanup(); } catch (e) { /* a view's own teardown */ } }
  cleanup = null;
  if (!api.apiKey()) {
    cleanup = loginView();
    return;
  }
  document.getElementById("nav").hidden = false;
  const hash = location.hash || "#/sessions";
  for (const [pattern, view] of routes) {
    const match = hash.match(pattern);
    if (match) {
      const section = hash.split("/")[1];
      for (const link of document.querySelectorAll("[data-nav]")) {
        if (link.dataset.nav === section) link.setAttribute("aria-current", "page");
        else link.removeAttribute("aria-current");
      }
      cleanup = view(match);
      return;
    }
  }
  location.replace("#/sessions");
}

function logout(message) {
  api.setApiKey(null);
  loginError = message || null;
  location.hash = "";
  route();
}

api.whenUnauthorized((error) => logout("Logged out: the server refused the key (" + describe(error) + ")."));
document.getElementById("logout").addEventListener("click", () => logout(null));

async function start() {
  const token = takeLinkToken();
  if (token) {
    const problem = await checkKey(token);
    if (problem) { loginError = problem; api.setApiKey(null); }
    else { loginError = null; api.setApiKey(token); }
  }
  route();
}

// A link opened in a tab that already shows the console changes only the fragment.
window.addEventListener("hashchange", () => (location.hash.startsWith("#token=") ? start() : route()));
start();
