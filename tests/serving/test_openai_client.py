"""The official openai client against the service running under uvicorn on loopback."""

from __future__ import annotations

import openai
import pytest


@pytest.fixture
def client(live_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=live_server.key, max_retries=0, timeout=60)


def test_completion_and_stream_through_the_openai_client(client):
    messages = [{"role": "user", "content": "Hello, is my order on its way?"}]
    completion = client.chat.completions.create(model="chatforge", messages=messages, max_tokens=8)
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason in {"stop", "length"}
    assert completion.usage.completion_tokens <= 8

    stream = client.chat.completions.create(
        model="chatforge",
        messages=messages,
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == completion.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == completion.choices[
        0
    ].finish_reason
    assert chunks[-1].usage.total_tokens == completion.usage.total_tokens


def test_models_list_and_errors_through_the_openai_client(client, live_server):
    assert [m.id for m in client.models.list()] == ["chatforge", "chatforge:friendly", "lm"]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="chatforge:grumpy", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 400
    assert err.value.body["message"] == "unknown persona 'grumpy'; valid personas: friendly"
    bad_key = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="cf-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.models.list()
    friendly = client.chat.completions.create(
        model="chatforge",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        extra_body={"persona": "friendly"},
    )
    assert friendly.model_extra["chatforge"]["persona"] == "friendly"


def test_logprobs_plain_and_streamed_through_the_openai_client(client):
    messages = [{"role": "user", "content": "Where is my order?"}]
    plain = client.chat.completions.create(model="chatforge", messages=messages, max_tokens=8, logprobs=True,
                                           top_logprobs=2)
    content = plain.choices[0].logprobs.content
    assert len(content) == plain.usage.completion_tokens
    assert "".join(t.token for t in content) == plain.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    stream = client.chat.completions.create(model="chatforge", messages=messages, max_tokens=8, logprobs=True,
                                            top_logprobs=2, stream=True)
    streamed = [t for c in stream if c.choices and c.choices[0].logprobs and c.choices[0].logprobs.content
                for t in c.choices[0].logprobs.content]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]


def test_developer_role_and_response_format_through_the_openai_client(client, live_server):
    from sqlalchemy import select

    from chatforge.serving.store import Conversation

    answer = client.chat.completions.create(
        model="chatforge",
        messages=[{"role": "developer", "content": "Answer briefly."}, {"role": "user", "content": "hi"}],
        max_tokens=4,
    )
    with live_server.app.state.service.sessions() as s:
        conv = s.scalars(select(Conversation).where(Conversation.id == answer.id)).one()
        assert [m.role for m in conv.messages] == ["system", "user", "assistant"]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="chatforge", messages=[{"role": "user", "content": "hi"}],
                                       response_format={"type": "json_object"})
    assert err.value.body["param"] == "response_format"
    assert err.value.body["code"] == "unsupported_value"
    assert "not supported by this model" in err.value.body["message"]
    # a model by id, as the client's models.retrieve asks for it
    assert client.models.retrieve("lm").id == "lm"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
