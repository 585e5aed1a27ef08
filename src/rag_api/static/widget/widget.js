// The bookrag widget: one <script src="https://<api>/widget.js" defer></script> on a book's pages adds an
// "Ask the book" launcher and a chat panel (or fills each <book-chat> element with the panel inline).
// Served by GET /widget.js inside one function scope, after the vendored marked and DOMPurify (src/rag_api/
// widget_bundle.py), so it defines no globals: only the <book-chat> custom element. Everything it draws lives in
// an open shadow root (open so that accessibility tools can read it); nothing from the host page's CSS reaches it,
// and none of its CSS reaches the page. Model output is rendered with marked and sanitised by DOMPurify before it
// touches the DOM. Parts: config (data- attributes), storage (sessionStorage), the SSE reader, rendering, the view.
"use strict";

var SCRIPT = document.currentScript;
var TAG = "book-chat";
var MAX_SELECTION = 8000; // MAX_SELECTED_CHARS on the server
var MAX_HISTORY = 10; // turns sent with a follow-up
var MAX_TURN_CHARS = 8000;
var MAX_STORED_TURNS = 30;

// ---- config: the script tag's data- attributes, then the <book-chat> element's own ------------------------------

var DEFAULTS = {
  title: "Ask the book",
  placeholder: "Ask a question about the book…",
  theme: "auto",
  bookBaseUrl: null,
  apiKey: null,
  apiBase: null,
};

function warn(message) {
  try {
    console.warn("bookrag widget: " + message);
  } catch (e) {
    /* a page without a console */
  }
}

function httpUrl(value) {
  try {
    var url = new URL(value);
    return url.protocol === "http:" || url.protocol === "https:" ? url : null;
  } catch (e) {
    return null;
  }
}

function scriptOrigin() {
  var src = SCRIPT && SCRIPT.src;
  var url = src ? httpUrl(src) : null;
  return url ? url.origin : location.origin;
}

function readConfig(sources) {
  var config = Object.assign({}, DEFAULTS, { apiBase: scriptOrigin() });
  sources.forEach(function (element) {
    if (!element || !element.dataset) return;
    var data = element.dataset;
    if (data.title !== undefined) {
      if (data.title.trim() && data.title.length <= 80) config.title = data.title.trim();
      else warn("data-title must be 1 to 80 characters; using \"" + config.title + "\"");
    }
    if (data.placeholder !== undefined) {
      if (data.placeholder.length <= 120) config.placeholder = data.placeholder;
      else warn("data-placeholder is longer than 120 characters; using the default");
    }
    if (data.theme !== undefined) {
      if (["auto", "light", "dark"].indexOf(data.theme) >= 0) config.theme = data.theme;
      else warn("data-theme must be auto, light or dark, not \"" + data.theme + "\"; using auto");
    }
    if (data.bookBaseUrl !== undefined) {
      var base = httpUrl(data.bookBaseUrl);
      if (base) config.bookBaseUrl = base.href.replace(/\/?$/, "/");
      else warn("data-book-base-url must be an absolute http(s) URL; sources without a url get no link");
    }
    if (data.apiBase !== undefined) {
      var api = httpUrl(data.apiBase);
      if (api) config.apiBase = api.href.replace(/\/+$/, "");
      else warn("data-api-base must be an absolute http(s) URL; using " + config.apiBase);
    }
    if (data.apiKey !== undefined) {
      // An HTTP header carries printable ASCII only.
      if (/^[\x21-\x7e]+$/.test(data.apiKey)) config.apiKey = data.apiKey;
      else warn("data-api-key has spaces or characters a header cannot carry; sending no key");
    }
  });
  return config;
}

// ---- storage: the conversation in sessionStorage --------------------------------------------------------------
// sessionStorage, not localStorage: it survives a reload and moving between the book's pages in the same tab, but
// is private to that tab and gone when it closes, so a shared computer keeps no student's questions. Where the
// browser refuses storage (some sandboxed frames) the conversation lives in memory until the page closes.

var memoryStore = {};

function storageKey(config) {
  return "bookrag.widget:" + config.apiBase;
}

function loadState(config) {
  var raw = null;
  try {
    raw = sessionStorage.getItem(storageKey(config));
  } catch (e) {
    raw = memoryStore[storageKey(config)] || null;
  }
  try {
    var state = raw ? JSON.parse(raw) : null;
    if (state && Array.isArray(state.turns)) return { turns: state.turns, open: !!state.open };
  } catch (e) {
    /* a corrupt entry: start afresh */
  }
  return { turns: [], open: false };
}

function saveState(config, state) {
  var raw = JSON.stringify({ turns: state.turns.slice(-MAX_STORED_TURNS), open: state.open });
  try {
    sessionStorage.setItem(storageKey(config), raw);
  } catch (e) {
    memoryStore[storageKey(config)] = raw;
  }
}

// The API key a reader enters when the service asks for one (401) and the page gave none (data-api-key): kept
// in sessionStorage (this tab, across reloads, gone when it closes), never in localStorage, a cookie or a URL.
var KEY_STORAGE = "bookrag.apiKey";
var keyInMemory = null;

function savedKey() {
  var key = null;
  try {
    key = sessionStorage.getItem(KEY_STORAGE);
  } catch (e) {
    /* storage refused: memory only */
  }
  return key || keyInMemory;
}

function saveKey(key) {
  keyInMemory = null;
  try {
    sessionStorage.setItem(KEY_STORAGE, key);
  } catch (e) {
    keyInMemory = key;
  }
}

function forgetKey() {
  keyInMemory = null;
  try {
    sessionStorage.removeItem(KEY_STORAGE);
  } catch (e) {
    /* nothing stored */
  }
}

// ---- the SSE reader: POST /ask cannot use EventSource ---------------------------------------------------------

async function* readEvents(response, signal) {
  var reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  var buffer = "";
  while (!signal.aborted) {
    var chunk = await reader.read();
    if (chunk.done) break;
    buffer += chunk.value.replace(/\r\n/g, "\n");
    var end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      var block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      var event = "message";
      var data = "";
      block.split("\n").forEach(function (line) {
        if (line.indexOf("event:") === 0) event = line.slice(6).trim();
        else if (line.indexOf("data:") === 0) data += line.slice(5).replace(/^ /, "");
      });
      if (data) yield { event: event, data: JSON.parse(data) };
    }
  }
}

// What the reader sees when a request fails before the stream starts: words, not status codes.
function httpProblem(status, message, config) {
  if (status === 401) return "This book's assistant needs an API key (the widget's data-api-key).";
  if (status === 403) return "The API key was not accepted.";
  if (status === 413 || status === 422) return "The question could not be sent: " + (message || "it was refused");
  if (status === 429) return "Too many questions at once. Wait a moment and ask again.";
  if (status === 503) return "The book's assistant is unavailable right now. Try again in a minute.";
  if (status === 504) return "The answer took too long. Try again.";
  return "Something went wrong on the server (" + status + "). Try again.";
}

// ---- rendering: Markdown through marked, sanitised by DOMPurify, citations and source links ---------------------

var ALLOWED_TAGS = [
  "p", "br", "hr", "strong", "b", "em", "i", "del", "code", "pre", "blockquote", "ul", "ol", "li", "a",
  "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td", "span",
];

// The sentences of a source that best answer the question (its `highlights`), as plain text for a quote.
function sourceQuote(source) {
  var spans = Array.isArray(source.highlights) ? source.highlights : [];
  var text = typeof source.text === "string" ? source.text : "";
  var parts = [];
  spans.forEach(function (span) {
    if (Array.isArray(span) && span.length === 2 && span[0] >= 0 && span[1] <= text.length && span[0] < span[1]) {
      parts.push(text.slice(span[0], span[1]).replace(/\s+/g, " ").trim());
    }
  });
  var quote = parts.join(" … ");
  return quote.length > 280 ? quote.slice(0, 277).replace(/\s+\S*$/, "") + " …" : quote;
}

function el(tag, className, text) {
  var node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function safeLink(value) {
  var url = httpUrl(value);
  return url ? url.href : null;
}

// The section a source's quote is from: a passage joined from nearby chunks can span several subsections (its
// `sections`, each with the offset it starts at), and its highlights may all lie in another one than the section
// it was found by; then the first of those, else the source itself (as chains.answer's `quoted_section`).
function quotedSection(source) {
  var sections = Array.isArray(source.sections) ? source.sections : [];
  var spans = Array.isArray(source.highlights) ? source.highlights : [];
  if (sections.length < 2) return source;
  var holding = [];
  spans.forEach(function (span) {
    var found = null;
    sections.forEach(function (section) {
      if (Array.isArray(span) && section && typeof section.start === "number" && section.start <= span[0]) {
        found = section;
      }
    });
    if (found && Array.isArray(found.heading_path) && found.heading_path.length) holding.push(found);
  });
  var own = JSON.stringify(source.heading_path || []);
  var inOwn = holding.some(function (section) {
    return JSON.stringify(section.heading_path) === own && (section.anchor || null) === (source.anchor || null);
  });
  if (!holding.length || inOwn) return source;
  var quoted = holding[0];
  return {
    number: source.number, title: source.title, source: source.source, url: quoted.url,
    page_path: quoted.page_path, anchor: quoted.anchor, heading_path: quoted.heading_path,
  };
}

// A source's link on the book's site: its own url, else the book's base URL with its page path and anchor, else
// none (plain text, never href="#").
function sourceHref(source, config) {
  if (source.url) return safeLink(source.url);
  if (config.bookBaseUrl && typeof source.page_path === "string") {
    try {
      var anchor = source.anchor ? "#" + source.anchor : "";
      return safeLink(new URL(source.page_path + anchor, config.bookBaseUrl).href);
    } catch (e) {
      return null;
    }
  }
  return null;
}

function sourceLabel(source) {
  var path = Array.isArray(source.heading_path) ? source.heading_path : [];
  return path.length ? path.join(" › ") : source.title || source.source || "Source " + source.number;
}

function renderMarkdown(target, text, sources, config, onCite) {
  var html = marked.parse(text, { gfm: true, breaks: false, async: false });
  var fragment = DOMPurify.sanitize(html, {
    ALLOWED_TAGS: ALLOWED_TAGS,
    ALLOWED_ATTR: ["href", "title"],
    ALLOWED_URI_REGEXP: /^(?:https?:|mailto:)/i,
    RETURN_DOM_FRAGMENT: true,
  });
  fragment.querySelectorAll("a").forEach(function (link) {
    if (!link.getAttribute("href")) {
      link.replaceWith(document.createTextNode(link.textContent));
      return;
    }
    link.target = "_blank";
    link.rel = "noopener noreferrer";
  });
  linkCitations(fragment, sources, config, onCite);
  target.replaceChildren(fragment);
}

// [n] in the answer's text (not in code or links) becomes a link to source n, when there is a source n.
function linkCitations(root, sources, config, onCite) {
  var byNumber = {};
  (sources || []).forEach(function (source) {
    byNumber[source.number] = source;
  });
  var walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  var nodes = [];
  while (walker.nextNode()) {
    var node = walker.currentNode;
    if (/\[\d+\]/.test(node.nodeValue) && !(node.parentElement && node.parentElement.closest("a, code, pre"))) {
      nodes.push(node);
    }
  }
  nodes.forEach(function (node) {
    var parts = node.nodeValue.split(/(\[\d+\])/);
    var replacement = document.createDocumentFragment();
    parts.forEach(function (part) {
      var match = /^\[(\d+)\]$/.exec(part);
      var source = match && byNumber[Number(match[1])];
      if (!source) {
        if (part) replacement.append(part);
        return;
      }
      var shown = quotedSection(source);
      var href = sourceHref(shown, config);
      var cite;
      if (href) {
        cite = el("a", "cite", part);
        cite.href = href;
        cite.target = "_blank";
        cite.rel = "noopener noreferrer";
      } else {
        cite = el("button", "cite", part);
        cite.type = "button";
        cite.addEventListener("click", function () {
          onCite(source.number);
        });
      }
      cite.title = "Source " + source.number + ": " + sourceLabel(shown);
      replacement.append(cite);
    });
    node.replaceWith(replacement);
  });
}

// ---- the view -------------------------------------------------------------------------------------------------

var CSS = [
  ":host{all:initial;display:block}",
  ":host([data-mode=launcher]){position:fixed;inset:auto 0 0 auto;z-index:2147483000;width:0;height:0}",
  ".root{--bg:#fff;--fg:#1d232b;--muted:#5d6671;--line:#d9dde3;--soft:#f3f5f8;--accent:#2459c4;--on-accent:#fff;",
  "--bad:#b3261e;--code:#f2f4f7;--shadow:0 12px 32px rgba(16,24,40,.18);",
  "font:15px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:var(--fg);color-scheme:light}",
  ".root.dark{--bg:#1b1f24;--fg:#e6e9ed;--muted:#a3acb7;--line:#39414b;--soft:#242a31;--accent:#8ab4ff;",
  "--on-accent:#0b1a33;--bad:#ff8a80;--code:#11151a;--shadow:0 12px 32px rgba(0,0,0,.5);color-scheme:dark}",
  "@media (prefers-color-scheme:dark){.root.auto{--bg:#1b1f24;--fg:#e6e9ed;--muted:#a3acb7;--line:#39414b;",
  "--soft:#242a31;--accent:#8ab4ff;--on-accent:#0b1a33;--bad:#ff8a80;--code:#11151a;",
  "--shadow:0 12px 32px rgba(0,0,0,.5);color-scheme:dark}}",
  "*{box-sizing:border-box}",
  "[hidden]{display:none!important}",
  "button{font:inherit;cursor:pointer}",
  ":focus-visible{outline:2px solid var(--accent);outline-offset:2px}",
  ".launcher{position:fixed;right:20px;bottom:20px;display:flex;align-items:center;gap:8px;padding:12px 18px;",
  "border:0;border-radius:999px;background:var(--accent);color:var(--on-accent);font-weight:600;",
  "box-shadow:var(--shadow)}",
  ".launcher svg{width:20px;height:20px}",
  ".panel{display:flex;flex-direction:column;background:var(--bg);color:var(--fg);overflow:hidden}",
  ".floating .panel{position:fixed;right:20px;bottom:20px;width:min(420px,calc(100vw - 40px));",
  "height:min(640px,calc(100vh - 40px));height:min(640px,calc(100dvh - 40px));border:1px solid var(--line);",
  "border-radius:14px;box-shadow:var(--shadow)}",
  "@media (max-width:520px){.floating .panel{inset:0;width:100%;height:100%;border:0;border-radius:0}}",
  ".root.inline{height:100%}",
  ".inline .panel{height:100%;min-height:420px;border:1px solid var(--line);border-radius:12px}",
  "@media (max-width:520px){.inline .panel{border-radius:0;border-width:0}}",
  "header{display:flex;align-items:center;gap:6px;padding:10px 12px 10px 16px;border-bottom:1px solid var(--line)}",
  "h2{flex:1;margin:0;font-size:16px;font-weight:650}",
  ".icon{border:0;background:none;color:var(--muted);padding:6px 10px;min-width:40px;min-height:40px;border-radius:8px;",
  "font-size:14px}",
  ".icon:hover{background:var(--soft);color:var(--fg)}",
  ".log{flex:1;overflow-y:auto;padding:12px 16px;overscroll-behavior:contain}",
  ".empty{color:var(--muted);margin:8px 0}",
  ".turn{margin:0 0 18px}",
  ".question{margin-left:auto;max-width:85%;width:fit-content;padding:8px 12px;border-radius:12px 12px 2px 12px;",
  "background:var(--accent);color:var(--on-accent);white-space:pre-wrap;overflow-wrap:anywhere}",
  ".about{margin:6px 0 0 auto;max-width:85%;width:fit-content;color:var(--muted);font-size:13px;",
  "border-left:3px solid var(--line);padding-left:8px;overflow-wrap:anywhere}",
  ".answer{margin-top:10px;overflow-wrap:anywhere}",
  ".answer>:first-child{margin-top:0}.answer>:last-child{margin-bottom:0}",
  ".answer p,.answer ul,.answer ol,.answer pre,.answer blockquote{margin:0 0 10px}",
  ".answer ul,.answer ol{padding-left:22px}",
  ".answer code{font:13px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:var(--code);",
  "padding:1px 4px;border-radius:4px}",
  ".answer pre{background:var(--code);padding:10px 12px;border-radius:8px;overflow-x:auto;white-space:pre}",
  ".answer pre code{padding:0;background:none}",
  ".answer blockquote{border-left:3px solid var(--line);padding-left:10px;color:var(--muted)}",
  ".answer a,.sources a{color:var(--accent)}",
  ".cite{font-size:12px;vertical-align:super;line-height:0;text-decoration:none;color:var(--accent);",
  "border:0;background:none;padding:0 1px;font-weight:600}",
  ".typing{display:flex;align-items:center;gap:8px;color:var(--muted);font-size:13px;margin-top:10px}",
  ".dots{display:inline-flex;gap:3px}.dots i{width:6px;height:6px;border-radius:50%;background:var(--muted);",
  "animation:bounce 1.2s infinite ease-in-out}.dots i:nth-child(2){animation-delay:.15s}",
  ".dots i:nth-child(3){animation-delay:.3s}",
  "@keyframes bounce{0%,80%,100%{opacity:.25;transform:translateY(0)}40%{opacity:1;transform:translateY(-3px)}}",
  "@media (prefers-reduced-motion:reduce){.dots i{animation:none}}",
  ".sources{margin:10px 0 0;padding:8px 10px;background:var(--soft);border-radius:8px;font-size:13px}",
  ".sources ol{margin:0;padding-left:22px}",
  ".sources-title{margin:0 0 4px;font-size:12px;font-weight:600;color:var(--muted)}",
  ".sources li{margin:2px 0}.sources li.flash{outline:2px solid var(--accent);border-radius:4px}",
  ".sources .file{color:var(--muted)}",
  ".sources .quote{display:block;margin:2px 0 6px;color:var(--muted);font-size:12px;font-style:italic}",
  ".meta{display:flex;flex-wrap:wrap;align-items:center;gap:10px;margin-top:6px;font-size:12px;color:var(--muted)}",
  ".meta button{border:1px solid var(--line);background:var(--bg);color:var(--fg);border-radius:6px;",
  "padding:2px 8px;font-size:12px}",
  ".meta .rate{display:inline-flex;align-items:center;gap:4px}",
  ".meta .rate button[aria-pressed=true]{border-color:var(--accent);background:var(--soft)}",
  ".rate-comment{display:flex;gap:6px;margin-top:6px}",
  ".rate-comment input{flex:1;min-width:0;border:1px solid var(--line);border-radius:6px;padding:4px 8px;",
  "font:inherit;font-size:13px;background:var(--bg);color:var(--fg)}",
  ".rate-comment button{border:1px solid var(--line);background:var(--bg);color:var(--fg);border-radius:6px;",
  "padding:2px 10px;font-size:12px}",
  ".error{color:var(--bad);margin-top:8px}",
  "form{border-top:1px solid var(--line);padding:10px 12px 12px;background:var(--bg)}",
  ".chip{display:flex;align-items:flex-start;gap:6px;margin:0 0 8px;padding:6px 8px;background:var(--soft);",
  "border-radius:8px;font-size:13px;color:var(--muted)}",
  ".chip span{flex:1;overflow:hidden;display:-webkit-box;-webkit-line-clamp:2;-webkit-box-orient:vertical}",
  ".chip button{border:0;background:none;color:var(--muted);padding:0 4px}",
  ".row{display:flex;gap:8px;align-items:flex-end}",
  "textarea{flex:1;font:inherit;color:var(--fg);background:var(--bg);border:1px solid var(--line);",
  "border-radius:10px;padding:9px 10px;resize:none;min-height:42px;max-height:140px}",
  "textarea::placeholder{color:var(--muted)}",
  ".send,.stop{height:42px;padding:0 16px;border-radius:10px;border:1px solid var(--accent);font-weight:600}",
  ".send{background:var(--accent);color:var(--on-accent)}.stop{background:var(--bg);color:var(--accent)}",
  ".hint{margin:6px 2px 0;font-size:11px;color:var(--muted)}",
  ".ask-selection{position:fixed;z-index:2147483001;padding:6px 12px;border:0;border-radius:8px;",
  "background:var(--accent);color:var(--on-accent);font-weight:600;font-size:13px;box-shadow:var(--shadow)}",
  ".key-form{margin:0 0 8px}.key-form label{display:block;font-weight:600;margin-bottom:4px}",
  ".key-form input{flex:1;font:inherit;color:var(--fg);background:var(--bg);border:1px solid var(--accent);",
  "border-radius:10px;padding:9px 10px;min-width:0}",
  ".key-status{margin:0 2px 8px}",
  ".link{border:0;background:none;padding:0;color:var(--accent);text-decoration:underline;font-size:inherit}",
  ".sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}",
].join("\n");

var CHAT_ICON =
  '<svg viewBox="0 0 24 24" aria-hidden="true" fill="none" stroke="currentColor" stroke-width="2" ' +
  'stroke-linecap="round" stroke-linejoin="round"><path d="M21 12a8 8 0 0 1-11.6 7.1L4 20l1-4.6A8 8 0 1 1 21 12z"/>' +
  "</svg>";

var instances = 0;

function Chat(host, config, floating) {
  this.host = host;
  this.config = config;
  this.floating = floating;
  this.state = loadState(config);
  this.controller = null;
  this.selection = null;
  this.follow = true;
  this.id = "bookrag-" + ++instances;
  this.build();
  this.restore();
}

Chat.prototype.build = function () {
  var self = this;
  var config = this.config;
  var shadow = this.host.attachShadow({ mode: "open" });
  var style = el("style");
  style.textContent = CSS;
  var root = el("div", "root " + config.theme + (this.floating ? " floating" : " inline"));
  shadow.append(style, root);
  this.root = root;

  if (this.floating) {
    var launcher = el("button", "launcher");
    launcher.type = "button";
    launcher.innerHTML = CHAT_ICON; // a constant, never model output
    launcher.append(el("span", "", config.title));
    launcher.setAttribute("aria-label", config.title);
    launcher.setAttribute("aria-haspopup", "dialog");
    launcher.setAttribute("aria-expanded", "false");
    launcher.setAttribute("aria-controls", this.id + "-panel");
    launcher.addEventListener("click", function () {
      self.open(true);
    });
    root.append(launcher);
    this.launcher = launcher;
  }

  var panel = el("section", "panel");
  panel.id = this.id + "-panel";
  panel.setAttribute("role", this.floating ? "dialog" : "region");
  panel.setAttribute("aria-labelledby", this.id + "-title");
  if (this.floating) panel.hidden = true;
  var header = el("header");
  var title = el("h2", "", config.title);
  title.id = this.id + "-title";
  var clear = el("button", "icon", "Clear");
  clear.type = "button";
  clear.setAttribute("aria-label", "Clear the conversation");
  clear.addEventListener("click", function () {
    self.clear();
  });
  header.append(title, clear);
  if (this.floating) {
    var close = el("button", "icon", "✕");
    close.type = "button";
    close.setAttribute("aria-label", "Close");
    close.addEventListener("click", function () {
      self.close();
    });
    header.append(close);
  }

  var log = el("div", "log");
  log.setAttribute("role", "log");
  log.setAttribute("aria-live", "polite");
  log.setAttribute("aria-label", "Conversation");
  log.tabIndex = 0;
  log.addEventListener("scroll", function () {
    self.follow = self.nearBottom();
  });
  this.log = log;
  this.empty = el("p", "empty", "Answers come from the book's own text, with numbered sources. Select text on " +
    "the page to ask about it.");
  log.append(this.empty);

  var form = el("form");
  var chip = el("div", "chip");
  chip.hidden = true;
  var chipText = el("span");
  var chipClear = el("button", "", "✕");
  chipClear.type = "button";
  chipClear.setAttribute("aria-label", "Do not ask about the selected text");
  chipClear.addEventListener("click", function () {
    self.setSelection(null);
    self.input.focus();
  });
  chip.append(chipText, chipClear);
  this.chip = chip;
  this.chipText = chipText;
  var row = el("div", "row");
  var input = el("textarea");
  input.rows = 1;
  input.placeholder = config.placeholder;
  input.setAttribute("aria-label", "Your question");
  input.setAttribute("aria-describedby", this.id + "-hint");
  input.maxLength = 2000;
  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      self.submit();
    }
  });
  input.addEventListener("input", function () {
    input.style.height = "auto";
    input.style.height = Math.min(input.scrollHeight + 2, 140) + "px";
  });
  var send = el("button", "send", "Ask");
  send.type = "submit";
  var stop = el("button", "stop", "Stop");
  stop.type = "button";
  stop.hidden = true;
  stop.setAttribute("aria-label", "Stop the answer");
  stop.addEventListener("click", function () {
    if (self.controller) self.controller.abort();
  });
  row.append(input, send, stop);
  var hint = el("p", "hint", "Enter sends, Shift+Enter adds a line.");
  hint.id = this.id + "-hint";
  var keyForm = el("div", "key-form");
  keyForm.hidden = true;
  var keyLabel = el("label", "", "API key");
  keyLabel.htmlFor = this.id + "-key";
  var keyRow = el("div", "row");
  var keyInput = el("input");
  keyInput.id = this.id + "-key";
  keyInput.type = "password";
  keyInput.autocomplete = "off";
  keyInput.spellcheck = false;
  keyInput.setAttribute("autocapitalize", "off");
  keyInput.placeholder = "Paste the API key you were given";
  keyInput.setAttribute("aria-describedby", this.id + "-key-note");
  var useKey = el("button", "send", "Use key");
  useKey.type = "button";
  keyRow.append(keyInput, useKey);
  var keyInvalid = el("p", "error");
  keyInvalid.hidden = true;
  var keyNote = el("p", "hint", "Kept only in this browser tab until you close it, and sent with each question.");
  keyNote.id = this.id + "-key-note";
  keyForm.append(keyLabel, keyRow, keyInvalid, keyNote);
  var keyStatus = el("p", "hint key-status", "Questions are sent with your API key (kept in this tab only). ");
  var forget = el("button", "link", "Forget the key");
  forget.type = "button";
  keyStatus.append(forget);
  keyStatus.hidden = !!config.apiKey || !savedKey();
  var enterKey = function () {
    var key = keyInput.value.trim();
    keyInput.value = "";
    if (!/^[\x21-\x7e]+$/.test(key)) {
      keyInvalid.textContent = key ? "An API key has no spaces or special characters: paste it again."
        : "Enter the API key.";
      keyInvalid.hidden = false;
      keyInput.focus();
      return;
    }
    saveKey(key);
    keyInvalid.hidden = true;
    keyForm.hidden = true;
    keyStatus.hidden = false;
    self.input.focus();
    self.retryWithKey();
  };
  useKey.addEventListener("click", enterKey);
  keyInput.addEventListener("keydown", function (event) {
    if (event.key === "Enter") {
      event.preventDefault();
      enterKey();
    }
  });
  forget.addEventListener("click", function () {
    forgetKey();
    keyStatus.hidden = true;
    self.input.focus();
  });
  this.keyForm = keyForm;
  this.keyInput = keyInput;
  this.keyInvalid = keyInvalid;
  this.keyStatus = keyStatus;
  form.append(keyForm, keyStatus, chip, row, hint);
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    self.submit();
  });
  this.input = input;
  this.send = send;
  this.stop = stop;

  panel.append(header, log, form);
  panel.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && self.floating) {
      event.stopPropagation();
      self.close();
    }
  });
  root.append(panel);
  this.panel = panel;

  var askSelection = el("button", "ask-selection", "Ask about this");
  askSelection.type = "button";
  askSelection.hidden = true;
  // Keep the page's selection: a mousedown on a button would clear it.
  askSelection.addEventListener("mousedown", function (event) {
    event.preventDefault();
  });
  askSelection.addEventListener("click", function () {
    var text = self.pendingSelection;
    askSelection.hidden = true;
    if (!text) return;
    self.setSelection(text);
    self.open(true);
  });
  root.append(askSelection);
  this.askSelection = askSelection;
};

Chat.prototype.nearBottom = function () {
  var log = this.log;
  return log.scrollHeight - log.scrollTop - log.clientHeight < 48;
};

// Follows a turn as it grows until its question reaches the top of the log, then stays there: a long answer is
// read from its start (and any note above it), not from its last line. A reader who scrolls to the end of it
// themselves is followed again from there.
Chat.prototype.followAnswer = function (box) {
  if (!this.follow) return;
  var log = this.log;
  var end = log.scrollHeight - log.clientHeight;
  var start = box ? Math.floor(log.scrollTop + box.getBoundingClientRect().top - log.getBoundingClientRect().top) - 8
    : end;
  if (start < end && log.scrollTop <= start + 1) {
    log.scrollTop = start;
    this.follow = false;
  } else {
    log.scrollTop = end;
  }
};

Chat.prototype.lastTurn = function () {
  var turns = this.log.querySelectorAll("article.turn");
  return turns.length ? turns[turns.length - 1] : undefined;
};

Chat.prototype.open = function (focus) {
  if (this.floating) {
    this.panel.hidden = false;
    this.launcher.hidden = true;
    this.launcher.setAttribute("aria-expanded", "true");
    this.state.open = true;
    saveState(this.config, this.state);
  }
  this.follow = true;
  this.followAnswer(this.lastTurn());
  if (focus) this.input.focus();
};

Chat.prototype.close = function () {
  if (!this.floating) return;
  this.panel.hidden = true;
  this.launcher.hidden = false;
  this.launcher.setAttribute("aria-expanded", "false");
  this.state.open = false;
  saveState(this.config, this.state);
  this.launcher.focus();
};

Chat.prototype.clear = function () {
  if (this.controller) this.controller.abort();
  this.state.turns = [];
  saveState(this.config, this.state);
  this.log.replaceChildren(this.empty);
  this.setSelection(null);
  this.input.focus();
};

Chat.prototype.setSelection = function (text) {
  this.selection = text ? text.slice(0, MAX_SELECTION) : null;
  this.chip.hidden = !this.selection;
  this.chipText.textContent = this.selection ? "About: “" + this.selection + "”" : "";
  this.input.placeholder = this.selection ? "Ask about the selected text…" : this.config.placeholder;
};

Chat.prototype.restore = function () {
  var self = this;
  this.state.turns.forEach(function (turn) {
    self.drawTurn(turn).finish();
  });
  this.follow = true;
  this.followAnswer(this.lastTurn());
  if (this.floating && this.state.open) this.open(false);
};

// One turn on screen; `turn` is the stored record it draws and updates.
Chat.prototype.drawTurn = function (turn) {
  var self = this;
  var config = this.config;
  if (this.empty.parentNode) this.empty.remove();
  var box = el("article", "turn");
  box.append(el("div", "question", turn.question));
  if (turn.selected) box.append(el("div", "about", "About: “" + turn.selected.slice(0, 200) + "”"));
  var status = el("div", "typing");
  status.setAttribute("role", "status");
  var dots = el("span", "dots");
  dots.setAttribute("aria-hidden", "true");
  dots.append(el("i"), el("i"), el("i"));
  var statusText = el("span", "", "Searching the book");
  status.append(dots, statusText);
  var answer = el("div", "answer");
  var sources = el("div", "sources");
  sources.hidden = true;
  var sourcesTitle = el("p", "sources-title", "Sources");
  var sourceList = el("ol");
  sources.append(sourcesTitle, sourceList);
  var meta = el("div", "meta");
  meta.hidden = true;
  var mode = el("span");
  var copy = el("button", "", "Copy answer");
  copy.type = "button";
  copy.addEventListener("click", function () {
    var done = function (label) {
      copy.textContent = label;
      setTimeout(function () {
        copy.textContent = "Copy answer";
      }, 1500);
    };
    try {
      navigator.clipboard.writeText(turn.answer || "").then(
        function () { done("Copied"); },
        function () { done("Could not copy"); }
      );
    } catch (e) {
      done("Could not copy");
    }
  });
  // A reader's rating of the answer (POST /feedback), with an optional comment when it is a thumbs down.
  var rate = el("span", "rate");
  // Words, not emoji: a machine without an emoji font shows an empty box.
  var up = el("button", "", "Helpful");
  var down = el("button", "", "Not helpful");
  var rateNote = el("span", "rate-note");
  rateNote.setAttribute("role", "status");
  [[up, "Helpful"], [down, "Not helpful"]].forEach(function (pair) {
    pair[0].type = "button";
    pair[0].setAttribute("aria-pressed", "false");
  });
  rate.append(up, down, rateNote);
  var comment = el("div", "rate-comment");
  comment.hidden = true;
  var commentInput = el("input");
  commentInput.type = "text";
  commentInput.maxLength = 2000;
  commentInput.placeholder = "What was missing or wrong? (optional)";
  commentInput.setAttribute("aria-label", "What was missing or wrong? (optional)");
  var commentSend = el("button", "", "Send");
  commentSend.type = "button";
  comment.append(commentInput, commentSend);
  var showRating = function () {
    up.setAttribute("aria-pressed", String(turn.rating === "up"));
    down.setAttribute("aria-pressed", String(turn.rating === "down"));
  };
  var sendRating = function (rating, text) {
    rateNote.textContent = "Sending…";
    self.rate(turn, rating, text).then(function (ok) {
      rateNote.textContent = ok ? "Thanks for the feedback" : "Could not send the rating";
      showRating();
    });
  };
  up.addEventListener("click", function () {
    comment.hidden = true;
    sendRating("up", null);
  });
  down.addEventListener("click", function () {
    comment.hidden = false;
    commentInput.focus();
  });
  var sendComment = function () {
    comment.hidden = true;
    sendRating("down", commentInput.value.trim() || null);
    down.focus();
  };
  commentSend.addEventListener("click", sendComment);
  commentInput.addEventListener("keydown", function (event) {
    if (event.key === "Enter") {
      event.preventDefault();
      sendComment();
    }
  });
  meta.append(copy, rate, mode);
  box.append(status, answer, sources, meta, comment);
  this.log.append(box);

  var scheduled = false;
  var view = {
    box: box,
    status: function (text) {
      statusText.textContent = text;
    },
    sources: function () {
      sourceList.replaceChildren();
      (turn.sources || []).forEach(function (source) {
        var item = el("li");
        item.value = source.number;
        item.id = self.id + "-source-" + box.dataset.index + "-" + source.number;
        item.tabIndex = -1;
        var shown = quotedSection(source);
        var href = sourceHref(shown, config);
        var label = sourceLabel(shown);
        var link = href ? el("a", "", label) : el("span", "", label);
        if (href) {
          link.href = href;
          link.target = "_blank";
          link.rel = "noopener noreferrer";
        }
        item.append(link);
        var file = source.title && source.heading_path && source.heading_path[0] !== source.title
          ? source.title : null;
        if (source.page) file = (file ? file + ", " : "") + "page " + source.page;
        if (file) item.append(el("span", "file", " · " + file));
        var quoted = sourceQuote(source);
        if (quoted) item.append(el("q", "quote", quoted));
        sourceList.append(item);
      });
      sources.hidden = !(turn.sources && turn.sources.length);
      self.followAnswer(box);
    },
    answer: function () {
      if (scheduled) return;
      scheduled = true;
      requestAnimationFrame(function () {
        scheduled = false;
        view.renderAnswer();
      });
    },
    renderAnswer: function () {
      status.hidden = true;
      renderMarkdown(answer, turn.answer || "", turn.sources, config, function (number) {
        var item = sources.querySelector("li[value='" + number + "']");
        if (!item) return;
        item.classList.add("flash");
        item.focus();
        setTimeout(function () { item.classList.remove("flash"); }, 1200);
      });
      self.followAnswer(box);
    },
    finish: function () {
      status.hidden = true;
      if (turn.answer) view.renderAnswer();
      view.sources();
      if (turn.error) {
        var error = el("div", "error", turn.error);
        error.setAttribute("role", "alert");
        box.append(error);
      }
      mode.textContent = turn.mode === "extractive" ? "Passages from the book (no chat model configured)"
        : turn.mode === "not_in_book" ? "Not found in the book" : "";
      meta.hidden = !turn.answer;
      rate.hidden = !(turn.answerId && turn.complete);
      showRating();
      self.followAnswer(box);
    },
  };
  box.dataset.index = String(this.log.querySelectorAll(".turn").length);
  return view;
};

Chat.prototype.history = function () {
  var turns = [];
  this.state.turns.forEach(function (turn) {
    if (!turn.complete) return;
    turns.push({ role: "user", content: turn.question.slice(0, MAX_TURN_CHARS) });
    turns.push({ role: "assistant", content: turn.answer.slice(0, MAX_TURN_CHARS) });
  });
  return turns.slice(-MAX_HISTORY);
};

Chat.prototype.submit = function () {
  if (this.controller) return;
  var question = this.input.value.trim();
  if (!question && this.selection) question = "Explain this passage.";
  if (!question) return;
  this.input.value = "";
  this.input.style.height = "";
  var selected = this.selection;
  this.setSelection(null);
  this.ask(question, selected);
};

Chat.prototype.ask = async function (question, selected) {
  var config = this.config;
  var history = this.history();
  var turn = { question: question, selected: selected, answer: "", sources: [], mode: null, error: null,
    complete: false };
  this.state.turns.push(turn);
  var view = this.drawTurn(turn);
  this.follow = true;
  this.followAnswer(this.lastTurn());
  var controller = new AbortController();
  this.controller = controller;
  this.send.hidden = true;
  this.stop.hidden = false;
  var finished = false;
  try {
    var body = { question: question, stream: true, history: history, page_url: location.href.slice(0, 2000) };
    if (selected) {
      body.selected_text = selected;
      body.selected_from = (document.title || location.pathname).slice(0, 500);
    }
    var headers = { "Content-Type": "application/json", Accept: "text/event-stream" };
    var key = config.apiKey || savedKey();
    if (key) headers.Authorization = "Bearer " + key;
    var response = await fetch(config.apiBase + "/ask", {
      method: "POST",
      headers: headers,
      body: JSON.stringify(body),
      signal: controller.signal,
      credentials: "omit",
    });
    if ((response.status === 401 || response.status === 403) && !config.apiKey) {
      this.askForKey(turn, view, key);
      return;
    }
    if (!response.ok) {
      var problem = await response.json().catch(function () { return {}; });
      throw { problem: httpProblem(response.status, problem.error && problem.error.message, config) };
    }
    for await (var item of readEvents(response, controller.signal)) {
      var data = item.data;
      if (item.event === "status") {
        view.status(data.stage === "generating" ? "Writing the answer" : "Searching the book");
      } else if (item.event === "sources") {
        turn.sources = Array.isArray(data.sources) ? data.sources : [];
        view.sources();
      } else if (item.event === "highlights") {
        // a generated answer's highlights come after its first token: each source's quote, by number
        (Array.isArray(data.highlights) ? data.highlights : []).forEach(function (entry) {
          turn.sources.forEach(function (source) {
            if (entry && source.number === entry.number) source.highlights = entry.highlights;
          });
        });
        view.sources();
      } else if (item.event === "token") {
        turn.answer += String(data.text || "");
        view.answer();
      } else if (item.event === "done") {
        finished = true;
        turn.mode = data.mode || null;
        turn.answerId = typeof data.answer_id === "string" ? data.answer_id : null;
      } else if (item.event === "error") {
        turn.error = "The answer failed: " + (data.message || "unknown error") + (data.code ? " (" + data.code + ")" : "");
      }
    }
    if (finished) turn.complete = true;
    else if (!turn.error) turn.error = controller.signal.aborted ? "Stopped." : "The answer was cut off. Ask again.";
  } catch (error) {
    if (error && error.problem) turn.error = error.problem;
    else if (error && error.name === "AbortError") turn.error = "Stopped.";
    else turn.error = await unreachable(config);
  } finally {
    this.controller = null;
    this.send.hidden = false;
    this.stop.hidden = true;
    view.finish();
    saveState(config, this.state);
  }
};

// Why a request failed before any reply: the browser hides the reason, but a no-cors request (which no CORS rule
// blocks) that succeeds shows the service is up and refused this page's origin, a setup mistake the book team must
// fix (the API's CORS_ORIGINS); else the service or the network is down.
async function unreachable(config) {
  try {
    await fetch(config.apiBase + "/health", { mode: "no-cors", credentials: "omit", cache: "no-store" });
  } catch (e) {
    return "Could not reach the book's assistant. Check your connection and try again.";
  }
  warn(
    "the API at " + config.apiBase + " is up but does not allow this page's origin (" + location.origin + "): " +
      "add it to the API's CORS_ORIGINS (a comma-separated list)"
  );
  return "The book's assistant is not set up for this page yet (it does not accept questions from " +
    location.origin + "). Please tell the book's team.";
}

// Sends a rating for a finished answer; true when the service stored it.
Chat.prototype.rate = async function (turn, rating, comment) {
  var config = this.config;
  var headers = { "Content-Type": "application/json" };
  var key = config.apiKey || savedKey();
  if (key) headers.Authorization = "Bearer " + key;
  var body = { answer_id: turn.answerId, rating: rating };
  if (comment) body.comment = comment.slice(0, 2000);
  try {
    var response = await fetch(config.apiBase + "/feedback", {
      method: "POST",
      headers: headers,
      body: JSON.stringify(body),
      credentials: "omit",
    });
    if (!response.ok) return false;
  } catch (e) {
    return false;
  }
  turn.rating = rating;
  saveState(config, this.state);
  return true;
};

// A refused question: the key prompt, and the question again once a key is entered.
Chat.prototype.askForKey = function (turn, view, sentKey) {
  // A refused key is dropped, unless another one was entered meanwhile.
  if (sentKey && savedKey() === sentKey) forgetKey();
  this.keyStatus.hidden = true;
  turn.error = sentKey
    ? "That API key was not accepted. Check it and enter it again below."
    : "This service needs an API key. Enter yours below and the question will be sent again.";
  turn.needsKey = true;
  this.waitingForKey = { turn: turn, box: view.box };
  this.keyInvalid.hidden = true;
  this.keyForm.hidden = false;
  this.keyInput.focus();
};

Chat.prototype.retryWithKey = function () {
  var waiting = this.waitingForKey;
  this.waitingForKey = null;
  if (!waiting || this.controller) return;
  var index = this.state.turns.indexOf(waiting.turn);
  if (index >= 0) this.state.turns.splice(index, 1);
  waiting.box.remove();
  this.ask(waiting.turn.question, waiting.turn.selected);
};

// The "Ask about this" button near a selection on the host page.
Chat.prototype.watchSelection = function () {
  var self = this;
  var button = this.askSelection;
  var update = function () {
    var selection = document.getSelection();
    var text = selection ? String(selection).trim() : "";
    if (!text || text.length < 2 || !selection.rangeCount || self.host.contains(selection.anchorNode)) {
      button.hidden = true;
      return;
    }
    var rect = selection.getRangeAt(0).getBoundingClientRect();
    if (!rect || (!rect.width && !rect.height)) {
      button.hidden = true;
      return;
    }
    self.pendingSelection = text.slice(0, MAX_SELECTION);
    button.hidden = false;
    var top = rect.bottom + 8;
    if (top + 36 > window.innerHeight) top = Math.max(8, rect.top - 44);
    var left = Math.min(Math.max(8, rect.left + rect.width / 2 - 60), window.innerWidth - 140);
    button.style.top = top + "px";
    button.style.left = left + "px";
  };
  var timer = null;
  document.addEventListener("selectionchange", function () {
    clearTimeout(timer);
    timer = setTimeout(update, 150);
  });
  window.addEventListener("scroll", function () { button.hidden = true; }, { passive: true });
};

// ---- the element ----------------------------------------------------------------------------------------------

var watching = false;

function start(host) {
  if (host._bookragChat) return;
  try {
    var floating = host.getAttribute("data-mode") === "launcher";
    var config = readConfig(floating ? [SCRIPT, host] : [SCRIPT, host]);
    var chat = new Chat(host, config, floating);
    host._bookragChat = chat;
    if (!watching) {
      watching = true;
      chat.watchSelection();
    }
  } catch (error) {
    warn("could not start: " + (error && error.message));
  }
}

if (window.customElements && !customElements.get(TAG)) {
  customElements.define(
    TAG,
    class extends HTMLElement {
      connectedCallback() {
        start(this);
      }
    }
  );

  var addLauncher = function () {
    try {
      if (document.querySelector(TAG)) return;
      var host = document.createElement(TAG);
      host.setAttribute("data-mode", "launcher");
      (document.body || document.documentElement).append(host);
    } catch (error) {
      warn("could not add the launcher: " + (error && error.message));
    }
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", addLauncher);
  else addLauncher();
} else if (!window.customElements) {
  warn("this browser has no custom elements; the widget is off");
}
