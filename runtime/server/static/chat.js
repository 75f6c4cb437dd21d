// The edgeslim chat page: keeps the conversation here, sends it whole to /v1/chat/completions
// (the server reuses the cached prefix), shows the reply as server-sent events arrive.
"use strict";
const $ = (id) => document.getElementById(id);
const history = [];  // [{role, content}] of finished turns
let controller = null;

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("messages").appendChild(div);
  div.scrollIntoView({block: "end"});
  return div;
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  $("status").textContent = busy ? "generating..." : "ready";
}

function headers() {
  const h = {"Content-Type": "application/json"};
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function errorText(resp) {
  try { return (await resp.json()).error.message; } catch (e) { return resp.status + " " + resp.statusText; }
}

// Reads "data: ..." events from a fetch body; calls onEvent(obj) for each JSON event.
async function readEvents(resp, onEvent) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buf += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }
}

async function send(text) {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({role: "system", content: system});
  messages.push(...history, {role: "user", content: text});
  addMessage("user", text);
  const out = addMessage("assistant", "");
  controller = new AbortController();
  setBusy(true);
  let reply = "";
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({messages, stream: true, temperature: Number($("temperature").value),
                            max_tokens: Number($("max-tokens").value) || 256}),
    });
    if (!resp.ok) throw new Error(await errorText(resp));
    await readEvents(resp, (ev) => {
      if (ev.error) throw new Error(ev.error.message);
      const delta = ev.choices && ev.choices[0] && ev.choices[0].delta;
      if (delta && delta.content) {
        reply += delta.content;
        out.textContent = reply.trimStart();
        out.scrollIntoView({block: "end"});
      }
    });
  } catch (err) {
    if (err.name === "AbortError") {
      out.classList.add("stopped");
    } else {
      out.classList.add("error");
      out.textContent = (reply ? reply + "\n" : "") + "Error: " + err.message;
    }
  } finally {
    controller = null;
    setBusy(false);
  }
  history.push({role: "user", content: text}, {role: "assistant", content: reply.trim()});
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || controller) return;
  $("prompt").value = "";
  send(text);
});
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
});
$("stop").addEventListener("click", () => { if (controller) controller.abort(); });
$("new-chat").addEventListener("click", () => {
  if (controller) controller.abort();
  history.length = 0;
  $("messages").textContent = "";
});
$("temperature").addEventListener("input", () => { $("temperature-value").textContent = $("temperature").value; });

fetch("/v1/models", {headers: headers()}).then((r) => r.ok ? r.json() : null).then((m) => {
  if (m && m.data && m.data[0]) $("model-name").textContent = m.data[0].id;
}).catch(() => {});
