// Small DOM helpers shared by the views: element builder, toasts, formatting.

export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") element.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(element.dataset, value);
    else if (value === true) element.setAttribute(name, "");
    else element.setAttribute(name, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

export function clear(element, ...children) {
  element.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return element;
}

export function toast(message, kind = "info") {
  const box = document.getElementById("toasts");
  const item = h("div", {class: `toast ${kind}`, role: kind === "error" ? "alert" : "status"}, message);
  box.append(item);
  setTimeout(() => item.remove(), kind === "error" ? 8000 : 4000);
}

// An error of the API ({code, message}) or of the network, as one line.
export function describe(error) {
  if (error && error.code) return `${error.message} (${error.code})`;
  return String(error && error.message ? error.message : error);
}

export function age(iso, now = Date.now()) {
  if (!iso) return "";
  const seconds = Math.round((now - Date.parse(iso)) / 1000);
  return span(seconds) + (seconds >= 0 ? " ago" : "");
}

export function until(iso, now = Date.now()) {
  if (!iso) return "";
  const seconds = Math.round((Date.parse(iso) - now) / 1000);
  return seconds <= 0 ? "expired" : "in " + span(seconds);
}

function span(seconds) {
  const s = Math.abs(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

export function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n, unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}

export function statusBadge(status) {
  return h("span", {class: `badge status-${status}`}, status);
}

// Runs `action` with the button disabled; errors become a toast. Returns the action's value.
export async function busy(button, action) {
  if (button) button.disabled = true;
  try {
    return await action();
  } catch (error) {
    toast(describe(error), "error");
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

// A modal <dialog> with a form; resolves with its FormData on submit, null on cancel.
export function formDialog(title, fields, submitLabel = "OK") {
  return new Promise((resolve) => {
    const form = h("form", {method: "dialog", class: "stack"},
      h("h2", {}, title), fields,
      h("div", {class: "actions"},
        h("button", {type: "button", class: "secondary", value: "cancel", onclick: () => close(null)}, "Cancel"),
        h("button", {type: "submit", value: "ok"}, submitLabel)));
    const dialog = h("dialog", {class: "dialog"}, form);
    let done = false;
    function close(value) {
      if (done) return;
      done = true;
      dialog.close();
      dialog.remove();
      resolve(value);
    }
    form.addEventListener("submit", (event) => { event.preventDefault(); close(new FormData(form)); });
    dialog.addEventListener("cancel", () => close(null));
    document.body.append(dialog);
    dialog.showModal();
    const first = form.querySelector("input, select, textarea");
    if (first) first.focus();
  });
}

export function field(label, input, hint) {
  return h("label", {class: "field"}, h("span", {}, label), input, hint ? h("small", {}, hint) : null);
}

export function confirmDialog(message, label = "Confirm") {
  return formDialog(message, [], label).then((data) => data !== null);
}
