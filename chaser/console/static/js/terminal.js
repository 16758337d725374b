// Terminals: xterm.js on the PTY WebSocket (human mode), several per session in tabs. They
// live on while you look at other pages (the WebSocket stays open); "×" closes one.
import {Terminal} from "../vendor/xterm.mjs";
import {FitAddon} from "../vendor/addon-fit.mjs";
import * as api from "./api.js";
import {clear, h} from "./ui.js";

const terminals = new Map();  // session id -> {list: [Term], active: Term | null, counter}
const encoder = new TextEncoder();

function palette() {
  const dark = matchMedia("(prefers-color-scheme: dark)").matches;
  return dark
    ? {background: "#0f1419", foreground: "#d6dde6", cursor: "#d6dde6", selectionBackground: "#33506f"}
    : {background: "#fbfbfa", foreground: "#1d232b", cursor: "#1d232b", selectionBackground: "#b7d3f5",
       black: "#1d232b", brightBlack: "#5c6670", white: "#c9ced4", brightWhite: "#f4f5f6"};
}

class Term {
  constructor(sessionId, number) {
    this.sessionId = sessionId;
    this.number = number;
    this.title = `Shell ${number}`;
    this.state = "connecting";
    this.element = h("div", {class: "term-pane", dataset: {terminal: String(number)}});
    this.xterm = new Terminal({cursorBlink: true, fontSize: 14, lineHeight: 1.15, scrollback: 5000, theme: palette(),
                               fontFamily: "ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace"});
    this.fit = new FitAddon();
    this.xterm.loadAddon(this.fit);
    this.opened = false;
    this.onchange = () => {};
  }

  // Opens xterm in its element (which must be in the page) and then the WebSocket.
  attach(parent) {
    parent.append(this.element);
    if (!this.opened) {
      this.opened = true;
      this.xterm.open(this.element);
      this.fitNow();
      this.connect();
    } else {
      this.fitNow();
    }
  }

  fitNow() {
    if (!this.element.isConnected || !this.element.offsetWidth) return;
    try { this.fit.fit(); } catch (e) { /* not laid out yet */ }
  }

  connect() {
    const socket = new WebSocket(api.ptyUrl(this.sessionId, {mode: "human", rows: this.xterm.rows, cols: this.xterm.cols}));
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    socket.onopen = () => { this.setState("open"); this.xterm.focus(); };
    socket.onmessage = (message) => {
      if (typeof message.data === "string") {
        let frame = null;
        try { frame = JSON.parse(message.data); } catch (e) { return; }
        if (frame.type === "exit") {
          this.xterm.write(`\r\n[exited with code ${frame.exit_code}]\r\n`);
          this.setState("exited");
        } else if (frame.type === "error") {
          this.xterm.write(`\r\n[error: ${frame.message} (${frame.code})]\r\n`);
        }
      } else {
        this.xterm.write(new Uint8Array(message.data));
      }
    };
    socket.onclose = (event) => {
      if (this.state === "open" || this.state === "connecting") {
        const why = event.code === 1000 ? "closed" : `connection lost (${event.code})`;
        this.xterm.write(`\r\n[${why}]\r\n`);
        this.setState("closed");
      }
    };
    this.xterm.onData((data) => { if (socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(data)); });
    this.xterm.onBinary((data) => {
      if (socket.readyState !== WebSocket.OPEN) return;
      socket.send(Uint8Array.from(data, (c) => c.charCodeAt(0) & 0xff));
    });
    this.xterm.onResize(({rows, cols}) => {
      if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({type: "resize", rows, cols}));
    });
    this.xterm.onTitleChange((title) => { if (title) { this.title = title; this.onchange(); } });
  }

  setState(state) {
    this.state = state;
    this.element.dataset.state = state;
    this.onchange();
  }

  close() {
    if (this.socket && this.socket.readyState <= WebSocket.OPEN) this.socket.close(1000);
    this.xterm.dispose();
    this.element.remove();
  }
}

function group(sessionId) {
  if (!terminals.has(sessionId)) terminals.set(sessionId, {list: [], active: null, counter: 0});
  return terminals.get(sessionId);
}

export function terminalTab(panel, sessionId) {
  const terms = group(sessionId);
  const bar = h("div", {class: "term-tabs", role: "tablist", "aria-label": "Terminals"});
  const stage = h("div", {class: "term-stage"});
  const add = h("button", {type: "button", class: "small", id: "new-terminal", title: "New terminal"}, "+ Terminal");
  clear(panel, h("div", {class: "term-wrap"}, h("div", {class: "toolbar"}, bar, add), stage));

  function open() {
    terms.counter += 1;
    const term = new Term(sessionId, terms.counter);
    terms.list.push(term);
    show(term);
  }
  function show(term) {
    terms.active = term;
    for (const other of terms.list) if (other !== term) other.element.hidden = true;
    term.element.hidden = false;
    term.onchange = render;
    term.attach(stage);
    render();
    term.xterm.focus();
  }
  function remove(term) {
    term.close();
    terms.list = terms.list.filter((t) => t !== term);
    if (terms.active === term) terms.active = terms.list[terms.list.length - 1] || null;
    if (terms.active) show(terms.active);
    else render();
  }
  function render() {
    clear(bar, terms.list.map((term) => {
      const selected = term === terms.active;
      return h("div", {class: "term-tab" + (selected ? " selected" : ""), dataset: {state: term.state}},
        h("button", {type: "button", role: "tab", "aria-selected": selected ? "true" : "false",
                     class: "link", onclick: () => show(term)}, term.title),
        h("button", {type: "button", class: "link close", "aria-label": `Close ${term.title}`,
                     onclick: () => remove(term)}, "×"));
    }));
    if (!terms.list.length) clear(stage, h("p", {class: "muted"}, "No terminal open."));
    else for (const p of stage.querySelectorAll("p.muted")) p.remove();
  }
  add.addEventListener("click", open);
  for (const term of terms.list) stage.append(term.element);
  if (terms.active) show(terms.active);
  else open();

  const observer = new ResizeObserver(() => { if (terms.active) terms.active.fitNow(); });
  observer.observe(stage);
  const onWindow = () => { if (terms.active) terms.active.fitNow(); };
  window.addEventListener("resize", onWindow);
  return () => {
    observer.disconnect();
    window.removeEventListener("resize", onWindow);
    for (const term of terms.list) term.element.remove();  // kept, with their sockets, for when we come back
  };
}

// A session that ended: its terminals go.
export function closeTerminals(sessionId) {
  const terms = terminals.get(sessionId);
  if (!terms) return;
  for (const term of terms.list) term.close();
  terminals.delete(sessionId);
}
