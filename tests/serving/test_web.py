"""The web chat page in headless Chromium: send, see the answer, thumbs up, feedback row stored."""

from __future__ import annotations

import shutil

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
    page.wait_for_function("document.getElementById('status').textContent.length > 0", timeout=30_000)
    assert page.inner_text("#status") == "invalid API key: it is not in this server's keys file"
    assert page.query_selector(".msg.assistant") is None
