// The chatforge web chat: plain DOM, no build step. Talks to the same OpenAI-compatible API
// any client uses, with the API key kept in this browser's localStorage.
// It runs under a strict Content-Security-Policy (script-src/style-src 'self'): no inline code or
// styles anywhere, looks change through classes only, and every text from the user or the model
// goes into the page with textContent, never parsed as HTML.
(() => {
  const $ = (id) => document.getElementById(id);
  const keyInput = $("api-key"), personaSelect = $("persona"), view = $("conversation"), status = $("status");
  const composer = $("composer"), messageInput = $("message"), sendButton = $("send");
  const KEY_PROMPT = "Enter your API key above to start chatting.";

  // crypto.randomUUID exists only in secure contexts (https, localhost); a server reached over
  // plain http on a LAN address still gets a random id.
  const randomId = () => (crypto.randomUUID ? crypto.randomUUID()
    : Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join(""));
  const userId = localStorage.getItem("chatforge.user") || `web-${randomId()}`;
  localStorage.setItem("chatforge.user", userId);
  keyInput.value = localStorage.getItem("chatforge.key") || "";

  // The conversation as the server saw it: only turns that got an answer. A failed message stays
  // on screen, marked, but is never part of this.
  let history = [];
  let chat = 0; // bumped by "New chat", so an answer that arrives for a cleared chat is dropped
  let busy = false;

  const key = () => keyInput.value.trim();
  const headers = () => ({ "Content-Type": "application/json", Authorization: `Bearer ${key()}` });

  // Without a key the server could only answer "malformed Authorization header": ask for the key
  // instead, and send nothing.
  function requireKey() {
    if (key()) return true;
    status.textContent = KEY_PROMPT;
    keyInput.setAttribute("aria-invalid", "true");
    keyInput.focus();
    return false;
  }

  async function errorText(response) {
    try {
      const message = (await response.json()).error.message;
      if (message) return String(message);
    } catch (_) { /* not the OpenAI error shape */ }
    return `HTTP ${response.status}`;
  }
  const unreachable = (error) => `could not reach the server (${(error && error.message) || error})`;

  async function loadPersonas() {
    if (!key()) return;
    try {
      const response = await fetch("/v1/models", { headers: headers() });
      if (!response.ok) { status.textContent = await errorText(response); return; }
      const body = await response.json();
      status.textContent = "";
      const chosen = personaSelect.value;
      personaSelect.replaceChildren(new Option("(default)", ""));
      for (const name of Object.keys(body.personas || {})) personaSelect.add(new Option(name, name));
      personaSelect.value = chosen;
    } catch (error) {
      status.textContent = unreachable(error);
    }
  }

  function addMessage(role, text) {
    const div = document.createElement("div");
    div.className = `msg ${role}`;
    const content = document.createElement("div");
    content.className = "content";
    content.textContent = text;
    div.append(content);
    view.append(div);
    div.scrollIntoView({ block: "end" });
    return div;
  }

  function addFeedback(div, completionId) {
    const meta = document.createElement("div");
    meta.className = "meta";
    for (const [label, rating, name] of [["👍", 1, "thumbs-up"], ["👎", -1, "thumbs-down"]]) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = label;
      button.className = name;
      button.title = rating > 0 ? "Good answer" : "Bad answer";
      button.addEventListener("click", async () => {
        if (!requireKey()) return;
        try {
          const response = await fetch("/v1/feedback", {
            method: "POST", headers: headers(), body: JSON.stringify({ completion_id: completionId, rating }),
          });
          if (!response.ok) { status.textContent = await errorText(response); return; }
        } catch (error) {
          status.textContent = unreachable(error);
          return;
        }
        status.textContent = "";
        meta.querySelectorAll("button").forEach((b) => b.classList.remove("chosen"));
        button.classList.add("chosen");
        div.dataset.rated = String(rating);
      });
      meta.append(button);
    }
    div.dataset.completionId = completionId;
    div.append(meta);
  }

  // Marks a user message that got no answer: class "failed", a "not sent: <reason>" note, and a
  // Retry button that removes it and sends the same text again as a new turn.
  function markFailed(div, text, reason) {
    div.classList.remove("pending");
    div.classList.add("failed");
    const note = document.createElement("div");
    note.className = "failure";
    const why = document.createElement("span");
    why.className = "reason";
    why.textContent = `not sent: ${reason}`;
    const retry = document.createElement("button");
    retry.type = "button";
    retry.className = "retry";
    retry.textContent = "Retry";
    retry.title = "Send this message again";
    retry.addEventListener("click", () => {
      if (busy || !requireKey()) return;
      div.remove();
      send(text);
    });
    note.append(why, retry);
    div.append(note);
  }

  async function send(text) {
    const turn = { role: "user", content: text };
    const body = { model: "chatforge", messages: [...history, turn], user: userId };
    if (personaSelect.value) body.persona = personaSelect.value;
    const div = addMessage("user", text);
    div.classList.add("pending");
    const current = chat;
    busy = true;
    sendButton.disabled = true;
    status.textContent = "";
    let failure = null, completion = null, answer = null;
    try {
      const response = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body) });
      if (!response.ok) {
        failure = await errorText(response);
      } else {
        try {
          completion = await response.json();
          answer = completion.choices[0].message.content;
          if (typeof answer !== "string") throw new TypeError("no answer text");
        } catch (_) {
          failure = "the server's answer could not be read";
        }
      }
    } catch (error) {
      failure = unreachable(error);
    } finally {
      busy = false;
      sendButton.disabled = false;
    }
    if (current !== chat) return; // "New chat" was pressed while this was on its way
    if (failure !== null) {
      status.textContent = failure;
      markFailed(div, text, failure);
      return;
    }
    div.classList.remove("pending");
    history.push(turn, { role: "assistant", content: answer });
    addFeedback(addMessage("assistant", answer), completion.id);
  }

  composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = messageInput.value.trim();
    if (!text || busy) return;
    if (!requireKey()) return;
    localStorage.setItem("chatforge.key", key());
    messageInput.value = "";
    send(text);
  });

  messageInput.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); composer.requestSubmit(); }
  });
  $("new-chat").addEventListener("click", () => { chat += 1; history = []; view.replaceChildren(); status.textContent = ""; });
  keyInput.addEventListener("input", () => {
    if (!key()) return;
    keyInput.removeAttribute("aria-invalid");
    if (status.textContent === KEY_PROMPT) status.textContent = "";
  });
  keyInput.addEventListener("change", () => { localStorage.setItem("chatforge.key", key()); loadPersonas(); });
  loadPersonas();
})();
