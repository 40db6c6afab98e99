"""The web chat page in headless Chromium: send, see the answer, thumbs up, feedback row stored;
no request without a key; failed messages marked and never resent; long text wraps; the page runs
under the server's Content-Security-Policy and shows text as text."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from chatforge.serving.store import Conversation, Feedback

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def page():
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not shutil.which(executable):
        pytest.fail(
            "chromium is not installed: run scripts/install-test-services.sh (apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser.new_page()
        finally:
            browser.close()


def test_send_message_see_answer_thumbs_up_stores_feedback(page, live_server):
    page.goto(live_server.url + "/")
    page.fill("#api-key", live_server.key)
    page.dispatch_event("#api-key", "change")
    page.wait_for_selector("#persona option[value='friendly']", state="attached")
    page.select_option("#persona", "friendly")
    page.fill("#message", "Hello, where is my parcel?")
    page.click("#send")
    answer = page.wait_for_selector(".msg.assistant", timeout=60_000)
    assert page.inner_text(".msg.user") == "Hello, where is my parcel?"
    completion_id = answer.get_attribute("data-completion-id")
    assert completion_id and completion_id.startswith("chatcmpl-")
    page.click(".msg.assistant .thumbs-up")
    page.wait_for_selector(".msg.assistant[data-rated='1']", timeout=30_000)
    assert page.inner_text("#status") == ""

    sessions = live_server.app.state.service.sessions
    with sessions() as s:
        conv = s.get(Conversation, completion_id)
        assert conv.persona == "friendly" and conv.user.startswith("web-")
        shown = answer.query_selector(".content").inner_text()
        assert conv.messages[-1].content.strip() == shown.strip()
        rows = s.scalars(select(Feedback)).all()
        assert [(f.conversation_id, f.rating) for f in rows] == [(completion_id, 1)]


def test_bad_key_shows_the_servers_message(page, live_server):
    page.goto(live_server.url + "/")
    page.fill("#api-key", "cf-wrong")
    page.fill("#message", "hi")
    page.click("#send")
    page.wait_for_function("() => document.getElementById('status').textContent.length > 0", timeout=30_000)
    assert page.inner_text("#status") == "invalid API key: it is not in this server's keys file"
    assert page.query_selector(".msg.assistant") is None


# --- helpers for the checks below ------------------------------------------------------------

STATIC = Path(__file__).resolve().parents[2] / "src/chatforge/serving/static"
KEY_PROMPT = "Enter your API key above to start chatting."
COMPLETIONS = "/v1/chat/completions"
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
}


class Watch:
    """Console errors, uncaught page errors and the /v1 requests of one page, from before goto."""

    def __init__(self, page) -> None:
        self.console: list[tuple[str, str]] = []  # (text, url of the resource it is about)
        self.page_errors: list[str] = []
        self.api_requests: list[Any] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("request", lambda r: self.api_requests.append(r) if "/v1/" in r.url else None)

    def _on_console(self, message) -> None:
        if message.type == "error":
            self.console.append((message.text, message.location.get("url", "")))

    def completion_requests(self) -> list[Any]:
        return [r for r in self.api_requests if r.url.endswith(COMPLETIONS)]

    def errors(self, failing: tuple[str, ...] = ()) -> list[str]:
        """Every error, except Chromium's own "Failed to load resource" line for a request to one
        of `failing` (the paths a test makes fail on purpose)."""

        def expected(text: str, url: str) -> bool:
            return text.startswith("Failed to load resource") and url.endswith(failing)

        return [text for text, url in self.console if not expected(text, url)] + self.page_errors


def harden(page, base_url: str) -> None:
    """Serve the page and its static files with the headers the server is about to send."""

    def add_headers(route) -> None:
        response = route.fetch()
        route.fulfill(response=response, headers={**response.headers, **SECURITY_HEADERS})

    page.route(base_url + "/", add_headers)
    page.route(base_url + "/static/**", add_headers)


def fake_completion(answer: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": "chatforge",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
        ],
    }


def open_with_key(page, live_server, key: str | None = None) -> None:
    page.goto(live_server.url + "/")
    page.fill("#api-key", live_server.key if key is None else key)
    page.dispatch_event("#api-key", "change")


def send(page, text: str) -> None:
    page.fill("#message", text)
    page.click("#send")


def user_messages(page) -> list[tuple[str, bool]]:
    """(text, failed?) of every user message on screen, in order."""
    rows = page.eval_on_selector_all(
        ".msg.user",
        "els => els.map(e => [e.querySelector('.content').textContent, e.classList.contains('failed')])",
    )
    return [(text, failed) for text, failed in rows]


# --- 1: no key -------------------------------------------------------------------------------


def test_no_key_prompts_for_it_focuses_it_and_sends_nothing(page, live_server):
    watch = Watch(page)
    page.goto(live_server.url + "/")
    assert page.input_value("#api-key") == ""
    send(page, "hello without a key")
    page.wait_for_function(f"() => document.getElementById('status').textContent === {KEY_PROMPT!r}")
    page.press("#message", "Enter")  # the keyboard path asks too
    page.wait_for_timeout(500)
    assert page.inner_text("#status") == KEY_PROMPT
    assert page.evaluate("document.activeElement.id") == "api-key"
    assert page.get_attribute("#api-key", "aria-invalid") == "true"
    assert page.input_value("#message") == "hello without a key"  # kept for when the key is in
    assert page.query_selector_all(".msg") == []
    assert watch.api_requests == []  # neither /v1/chat/completions nor anything else

    page.fill("#api-key", live_server.key)  # typing the key clears the prompt
    assert page.inner_text("#status") == ""
    assert page.get_attribute("#api-key", "aria-invalid") is None
    page.click("#send")
    page.wait_for_selector(".msg.assistant", timeout=60_000)
    assert [r.post_data_json["messages"] for r in watch.completion_requests()] == [
        [{"role": "user", "content": "hello without a key"}]
    ]
    assert watch.errors() == []


# --- 2: failed messages ----------------------------------------------------------------------


def test_message_refused_by_the_server_is_marked_and_left_out_of_the_next_request(page, live_server):
    watch = Watch(page)
    open_with_key(page, live_server, key="cf-wrong")
    send(page, "sent with a wrong key")
    failed = page.wait_for_selector(".msg.user.failed", timeout=30_000)
    reason = "invalid API key: it is not in this server's keys file"
    assert failed.query_selector(".failure .reason").inner_text() == f"not sent: {reason}"
    assert failed.query_selector(".failure button.retry") is not None
    assert page.inner_text("#status") == reason
    assert page.query_selector(".msg.assistant") is None

    page.fill("#api-key", live_server.key)
    page.dispatch_event("#api-key", "change")
    with page.expect_response(lambda r: r.url.endswith(COMPLETIONS)) as answered:
        send(page, "sent with the right key")
    assert answered.value.status == 200
    request = answered.value.request
    assert request.post_data_json["messages"] == [{"role": "user", "content": "sent with the right key"}]
    assert "wrong key" not in request.post_data
    page.wait_for_selector(".msg.assistant", timeout=30_000)
    assert user_messages(page) == [("sent with a wrong key", True), ("sent with the right key", False)]
    assert page.inner_text("#status") == ""
    assert watch.errors(failing=(COMPLETIONS, "/v1/models")) == []


def test_message_lost_on_the_network_is_marked_excluded_and_can_be_retried(page, live_server):
    watch = Watch(page)
    open_with_key(page, live_server)
    page.wait_for_selector("#persona option[value='friendly']", state="attached")
    send(page, "first")
    page.wait_for_selector(".msg.assistant", timeout=60_000)
    first_answer = page.inner_text(".msg.assistant .content")

    page.route("**" + COMPLETIONS, lambda route: route.abort("connectionrefused"), times=1)
    send(page, "lost on the way")
    failed = page.wait_for_selector(".msg.user.failed", timeout=30_000)
    note = failed.query_selector(".failure .reason").inner_text()
    assert note.startswith("not sent: could not reach the server"), note
    assert len(page.query_selector_all(".msg.assistant")) == 1

    with page.expect_response(lambda r: r.url.endswith(COMPLETIONS)) as answered:
        send(page, "third")
    assert answered.value.status == 200
    assert answered.value.request.post_data_json["messages"] == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": first_answer},
        {"role": "user", "content": "third"},
    ]
    assert "lost on the way" not in answered.value.request.post_data
    page.wait_for_function("() => document.querySelectorAll('.msg.assistant').length === 2", timeout=60_000)
    third_answer = page.eval_on_selector_all(".msg.assistant .content", "els => els[1].textContent")

    # Retry sends it again as a new turn at the end; the failed copy goes away.
    with page.expect_response(lambda r: r.url.endswith(COMPLETIONS)) as answered:
        page.click(".msg.user.failed .retry")
    assert answered.value.status == 200
    assert answered.value.request.post_data_json["messages"] == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": first_answer},
        {"role": "user", "content": "third"},
        {"role": "assistant", "content": third_answer},
        {"role": "user", "content": "lost on the way"},
    ]
    page.wait_for_function("() => document.querySelectorAll('.msg.assistant').length === 3", timeout=60_000)
    assert user_messages(page) == [("first", False), ("third", False), ("lost on the way", False)]
    assert page.query_selector(".failure") is None
    assert page.inner_text("#status") == ""
    assert len(watch.completion_requests()) == 4  # first, lost, third, retry
    assert watch.errors(failing=(COMPLETIONS,)) == []


# --- 3: long unbroken text -------------------------------------------------------------------

URL_300 = "https://example.com/" + "a" * 280
LETTERS_300 = "x" * 300


@pytest.mark.parametrize("width", [375, 1280])
def test_long_unbroken_text_wraps_without_a_horizontal_scrollbar(page, live_server, width):
    assert len(URL_300) == len(LETTERS_300) == 300
    watch = Watch(page)
    page.set_viewport_size({"width": width, "height": 800})
    responses = iter(
        [
            {"status": 200, "json": fake_completion(URL_300)},
            {"status": 200, "json": fake_completion(LETTERS_300)},
            {"status": 400, "json": {"error": {"message": "too long: " + LETTERS_300, "type": "x"}}},
        ]
    )
    page.route("**" + COMPLETIONS, lambda route: route.fulfill(**next(responses)))
    open_with_key(page, live_server)
    send(page, URL_300)
    page.wait_for_selector(".msg.assistant")
    send(page, LETTERS_300)
    page.wait_for_function("() => document.querySelectorAll('.msg.assistant').length === 2")
    send(page, URL_300 + LETTERS_300)
    page.wait_for_selector(".msg.user.failed")

    texts = page.eval_on_selector_all(".msg .content", "els => els.map(e => e.textContent)")
    assert texts == [URL_300, URL_300, LETTERS_300, LETTERS_300, URL_300 + LETTERS_300]
    sizes = page.evaluate(
        "() => { const s = document.scrollingElement; return [s.scrollWidth, s.clientWidth]; }"
    )
    assert sizes[0] <= sizes[1], sizes
    assert sizes[1] <= width
    # nothing sticks out of its own box either (the page could hide that with overflow rules)
    overflowing = page.evaluate(
        """() => [...document.querySelectorAll('.msg, .msg *, #status, header, form')]
            .filter(e => e.scrollWidth > e.clientWidth + 1 || e.getBoundingClientRect().right > innerWidth)
            .map(e => e.className || e.id || e.tagName)"""
    )
    assert overflowing == []
    assert watch.errors(failing=(COMPLETIONS,)) == []


# --- 4: Content-Security-Policy, text never parsed as HTML -----------------------------------


def test_page_has_no_inline_code_or_styles():
    from html.parser import HTMLParser

    found: list[str] = []

    class Inline(HTMLParser):
        def handle_starttag(self, tag, attrs):
            names = {name.lower(): value for name, value in attrs}
            if tag == "style":
                found.append("<style>")
            if tag == "script" and not names.get("src"):
                found.append("inline <script>")
            found.extend(f"{tag} {name}=" for name in names if name == "style" or name.startswith("on"))
            if (names.get("href") or "").lower().startswith("javascript:"):
                found.append(f"{tag} javascript: href")

    Inline().feed((STATIC / "index.html").read_text(encoding="utf-8"))
    assert found == []
    script = (STATIC / "chat.js").read_text(encoding="utf-8")
    for needle in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        ".style",
        "eval(",
        "new Function",
        'setAttribute("style',
        'setAttribute("on',
    ):
        assert needle not in script, needle


def test_page_works_under_the_servers_security_headers(page, live_server):
    watch = Watch(page)
    page.add_init_script(
        "window.__violations = [];"
        "document.addEventListener('securitypolicyviolation',"
        " e => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    harden(page, live_server.url)
    response = page.goto(live_server.url + "/")
    assert response.headers["content-security-policy"] == SECURITY_HEADERS["content-security-policy"]
    # the stylesheet applied (a script-set or inline style would have been refused)
    assert page.eval_on_selector("#status", "e => getComputedStyle(e).color") == "rgb(170, 0, 0)"
    send(page, "no key yet")
    page.wait_for_function(f"() => document.getElementById('status').textContent === {KEY_PROMPT!r}")
    page.fill("#api-key", live_server.key)
    page.dispatch_event("#api-key", "change")
    page.wait_for_selector("#persona option[value='friendly']", state="attached")
    page.select_option("#persona", "friendly")
    page.click("#send")
    page.wait_for_selector(".msg.assistant", timeout=60_000)
    page.click(".msg.assistant .thumbs-up")
    page.wait_for_selector(".msg.assistant[data-rated='1']", timeout=30_000)
    assert page.evaluate("window.__violations") == []
    assert watch.errors() == []

    # control: the policy really is enforced here, so the empty list above means something
    page.evaluate(
        "() => { const s = document.createElement('script'); s.textContent = 'window.__ran = 1';"
        " document.body.append(s); }"
    )
    page.wait_for_function("() => window.__violations.length > 0")
    assert page.evaluate("window.__ran") is None
    assert page.evaluate("window.__violations")[0].startswith("script-src")


def test_user_and_model_text_is_shown_as_text_never_as_html(page, live_server):
    watch = Watch(page)
    harden(page, live_server.url)
    markup = '<img src="x" onerror="window.__pwned = 1"><b>bold</b><script>window.__pwned = 2</script>'
    page.route("**" + COMPLETIONS, lambda route: route.fulfill(json=fake_completion("answer " + markup)))
    open_with_key(page, live_server)
    send(page, "question " + markup)
    page.wait_for_selector(".msg.assistant")
    texts = page.eval_on_selector_all(".msg .content", "els => els.map(e => e.textContent)")
    assert texts == ["question " + markup, "answer " + markup]
    assert page.query_selector_all(".msg img, .msg b, .msg script") == []
    page.wait_for_timeout(300)
    assert page.evaluate("window.__pwned") is None
    assert watch.errors() == []
