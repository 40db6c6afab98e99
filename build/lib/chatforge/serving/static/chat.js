// The chatforge web chat: plain DOM, no build step. Talks to the same OpenAI-compatible API
// any client uses, with the API key kept in this browser's localStorage.
(() => {
  const $ = (id) => document.getElementById(id);
  const keyInput = $("api-key"), personaSelect = $("persona"), view = $("conversation"), status = $("status");
  const userId = localStorage.getItem("chatforge.user") || `web-${crypto.randomUUID()}`;
  localStorage.setItem("chatforge.user", userId);
  keyInput.value = localStorage.getItem("chatforge.key") || "";
  let history = [];

  const headers = () => ({ "Content-Type": "application/json", Authorization: `Bearer ${keyInput.value.trim()}` });
  const showError = async (response) => {
    let message = `HTTP ${response.status}`;
    try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
    status.textContent = message;
  };

  async function loadPersonas() {
    if (!keyInput.value.trim()) return;
    const response = await fetch("/v1/models", { headers: headers() });
    if (!response.ok) return showError(response);
    status.textContent = "";
    const body = await response.json();
    const chosen = personaSelect.value;
    personaSelect.replaceChildren(new Option("(default)", ""));
    for (const name of Object.keys(body.personas || {})) personaSelect.add(new Option(name, name));
    personaSelect.value = chosen;
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
        const response = await fetch("/v1/feedback", {
          method: "POST", headers: headers(), body: JSON.stringify({ completion_id: completionId, rating }),
        });
        if (!response.ok) return showError(response);
        meta.querySelectorAll("button").forEach((b) => b.classList.remove("chosen"));
        button.classList.add("chosen");
        div.dataset.rated = String(rating);
      });
      meta.append(button);
    }
    div.dataset.completionId = completionId;
    div.append(meta);
  }

  $("composer").addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = $("message").value.trim();
    if (!text) return;
    localStorage.setItem("chatforge.key", keyInput.value.trim());
    $("message").value = "";
    addMessage("user", text);
    history.push({ role: "user", content: text });
    $("send").disabled = true;
    status.textContent = "";
    try {
      const body = { model: "chatforge", messages: history, user: userId };
      if (personaSelect.value) body.persona = personaSelect.value;
      const response = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body) });
      if (!response.ok) { history.pop(); return showError(response); }
      const completion = await response.json();
      const answer = completion.choices[0].message.content;
      history.push({ role: "assistant", content: answer });
      addFeedback(addMessage("assistant", answer), completion.id);
    } catch (error) {
      history.pop();
      status.textContent = `could not reach the server: ${error}`;
    } finally {
      $("send").disabled = false;
    }
  });

  $("message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("composer").requestSubmit(); }
  });
  $("new-chat").addEventListener("click", () => { history = []; view.replaceChildren(); status.textContent = ""; });
  keyInput.addEventListener("change", () => { localStorage.setItem("chatforge.key", keyInput.value.trim()); loadPersonas(); });
  loadPersonas();
})();
