from chatforge.chat import Persona, chat_loop
from chatforge.runtime.decode import GenerationConfig
from chatforge.serving.backends import open_backend
from tinymodels import build_tiny_causal_lm, build_tiny_classifier


def test_chat_with_causal_lm_streams_and_keeps_history(tmp_path):
    backend = open_backend(build_tiny_causal_lm(tmp_path / "lm"), backend="torch")
    out: list[str] = []
    convo = chat_loop(backend, ["hello", "/temperature x", "where is my order?", "/exit", "never read"], out.append,
                      config=GenerationConfig(max_new_tokens=5))
    assert [m["role"] for m in convo] == ["user", "assistant", "user", "assistant"]
    assert "".join(out).count("bot> ") == 2
    assert "temperature must be a number" in "".join(out)
    # greedy decoding: the streamed text is the stored answer
    again = chat_loop(backend, ["hello"], lambda s: None, config=GenerationConfig(max_new_tokens=5))
    assert again[1]["content"] == convo[1]["content"]


def test_chat_with_classifier_answers_in_user_language_and_switches_persona(tmp_path):
    responses = {"weather": {"zh": "今日北京晴", "en": "Sunny today"}}
    backend = open_backend(build_tiny_classifier(tmp_path / "clf", responses=responses), backend="torch")
    personas = {"friendly": Persona("friendly", 1.0, 0.9, "Be warm.")}
    out: list[str] = []
    convo = chat_loop(backend, ["/persona nope", "/persona friendly", "查询北京天气", "/reset", "weather?"], out.append,
                      config=GenerationConfig(), personas=personas)
    text = "".join(out)
    assert "unknown persona 'nope'; choose one of: friendly" in text
    assert "persona friendly: temperature 1.0" in text
    assert "今日北京晴" in text and "Sunny today" in text and "(conversation reset)" in text
    assert convo == [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": "Sunny today"}]


def test_chat_answers_as_serve_does_unless_raw(tmp_path):
    """With the serve rules, an untrained model (never confident) shows the fallback and says so; a
    folder with exchanges shows the past answer the model reranks best instead."""
    from chatforge.chat import Served
    from chatforge.params import ServeHybrid
    from chatforge.runtime.conversation import Conversation
    from chatforge.runtime.index import write_index

    folder = build_tiny_causal_lm(tmp_path / "lm")
    served = Served(0.99, 4, {"zh": "抱歉。", "en": "Sorry, not sure."})
    out: list[str] = []
    convo = chat_loop(open_backend(folder, backend="torch"), ["where is my order?"], out.append,
                      config=GenerationConfig(max_new_tokens=5), served=served)
    assert convo[1]["content"] == "Sorry, not sure." and "; fallback)" in "".join(out)
    write_index(folder, [Conversation("c1", "en", "order", [{"role": "user", "content": "where is my order?"},
                                                             {"role": "assistant", "content": "It ships today."}])])
    backend = open_backend(folder, backend="torch", hybrid=ServeHybrid())
    out = []
    convo = chat_loop(backend, ["where is my order?"], out.append, config=GenerationConfig(max_new_tokens=5), served=served)
    assert convo[1]["content"] == "It ships today." and "; retrieval)" in "".join(out)
