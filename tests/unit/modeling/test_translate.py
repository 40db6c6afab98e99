"""Translators: a real tiny MarianMT trained in-process, a tiny causal LM, the cache, parallel data."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
import torch

from chatforge.modeling import translate as tr
from chatforge.modeling import translator_train as tt
from chatforge.params import TranslatorParams

torch.set_num_threads(1)

CITIES = [("北京", "Beijing"), ("上海", "Shanghai"), ("广州", "Guangzhou"), ("深圳", "Shenzhen")]
PAIRS = pl.DataFrame(
    [p for zc, ec in CITIES for p in [(f"{zc}今天天气怎么样？", f"What is the weather in {ec} today?"),
                                      (f"我想去{zc}。", f"I want to go to {ec}."), (f"{zc}很漂亮。", f"{ec} is beautiful.")]],
    schema={"zh": pl.String, "en": pl.String}, orient="row",
)
TINY = TranslatorParams(vocab_size=300, d_model=64, layers=2, heads=2, ffn_dim=128, max_steps=250, warmup_steps=10,
                        batch_size=8, lr=3e-3, dropout=0.0, label_smoothing=0.0)


@pytest.fixture(scope="module")
def marian_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    trained = tt.train_translator(PAIRS, TINY)
    folder = tmp_path_factory.mktemp("marian") / "translator"
    folder.mkdir()
    tt.save_translator(trained.model, trained.tokenizer, folder, details={"steps": TINY.max_steps})
    return folder


def test_trained_marian_translates_both_directions(marian_folder: Path):
    translator = tr.load_translator(marian_folder)
    assert isinstance(translator, tr.Seq2SeqTranslator)
    assert (marian_folder / "config.json").read_text().count('"marian"') == 1
    scores = tt.bleu_scores(translator, PAIRS)
    # the model has memorised its 12 training pairs in both directions
    assert scores["bleu_zh_en"] > 60 and scores["bleu_en_zh"] > 60, scores
    out = translator.translate(["我想去上海。"], src="zh", tgt="en")
    assert out == ["I want to go to Shanghai."]
    assert translator.translate(["Shenzhen is beautiful."], src="en", tgt="zh") == ["深圳很漂亮。"]


def test_batched_equals_one_at_a_time_and_counts_calls(marian_folder: Path):
    batched = tr.load_translator(marian_folder, options=tr.DecodeOptions(batch_size=4))
    texts = PAIRS["zh"].to_list()
    together = batched.translate(texts, src="zh", tgt="en")
    assert batched.generate_calls == 3 and batched.texts_translated == 12
    single = tr.load_translator(marian_folder, options=tr.DecodeOptions(batch_size=1))
    assert [single.translate([t], src="zh", tgt="en")[0] for t in texts] == together
    assert single.generate_calls == 12


def test_cache_serves_repeats_without_model_calls(marian_folder: Path, tmp_path: Path):
    texts = PAIRS["en"].to_list()[:6]
    first = tr.CachedTranslator(tr.load_translator(marian_folder), tr.TranslationCache(tmp_path / "c.sqlite"))
    expected = first.translate(texts + texts[:2], src="en", tgt="zh")  # repeats inside one call: once each
    assert first.texts_translated == 6
    # a new process: new translator object, same cache file
    again = tr.CachedTranslator(tr.load_translator(marian_folder), tr.TranslationCache(tmp_path / "c.sqlite"))
    assert again.translate(texts + texts[:2], src="en", tgt="zh") == expected
    assert again.texts_translated == 0 and again.hits == 8
    # only the new text reaches the model; the other direction is a different key
    again.translate(texts + ["Guangzhou is beautiful."], src="en", tgt="zh")
    assert again.texts_translated == 1
    again.translate(texts[:1], src="zh", tgt="en")
    assert again.texts_translated == 2


def test_fingerprint_tracks_weights_and_decoding(marian_folder: Path, tmp_path: Path):
    a = tr.load_translator(marian_folder).fingerprint
    assert tr.load_translator(marian_folder).fingerprint == a
    assert tr.load_translator(marian_folder, options=tr.DecodeOptions(num_beams=2)).fingerprint != a
    copy = shutil.copytree(marian_folder, tmp_path / "copy")
    model = tr.load_translator(copy).model
    with torch.no_grad():
        model.model.shared.weight[5, 0] += 1.0
    model.save_pretrained(copy)
    assert tr.load_translator(copy).fingerprint != a


def test_causal_lm_translator_with_tiny_llama(tiny_causal_lm: Path, tmp_path: Path):
    folder = shutil.copytree(tiny_causal_lm, tmp_path / "llm")
    translator = tr.load_translator(folder, options=tr.DecodeOptions(batch_size=2, max_new_tokens=8))
    assert isinstance(translator, tr.CausalLMTranslator)
    # teach the tiny model one answer to the translation prompt, so the output is checkable
    tok, model = translator.tokenizer, translator.model
    prompt = tok.apply_chat_template(tr.translation_prompt("谢谢，再见", src="zh", tgt="en"), tokenize=False,
                                     add_generation_prompt=True)
    ids = tok(prompt + "hello<|im_end|>", return_tensors="pt", add_special_tokens=False)["input_ids"]
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(60):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    out = translator.translate(["谢谢，再见", "谢谢，再见", "好的，没问题"], src="zh", tgt="en")
    assert out[0] == out[1] == "hello"
    assert len(out) == 3 and all("Translate" not in o for o in out)
    assert translator.generate_calls == 2 and translator.texts_translated == 3


def test_translation_prompt_names_languages():
    [msg] = tr.translation_prompt("你好", src="zh", tgt="en")
    assert msg["role"] == "user" and "Chinese" in msg["content"] and "into English" in msg["content"]
    assert msg["content"].endswith("你好")


def test_load_errors_say_what_to_do(tmp_path: Path):
    with pytest.raises(tr.TranslatorLoadError, match="cannot load translator"):
        tr.load_translator(tmp_path)  # an empty folder
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(tr.TranslatorLoadError, match="a file, not a model folder"):
        tr.load_translator(tmp_path / "weights.bin")
    with pytest.raises(tr.TranslatorLoadError, match="translator folder not found"):
        tr.load_translator(tmp_path / "models" / "translator")
    with pytest.raises(tr.TranslatorLoadError, match="hub id"):
        tr.load_translator("no-such-org/no-such-model")


def test_read_parallel_counts_bad_lines_and_reads_folders(tmp_path: Path):
    (tmp_path / "a.tsv").write_text("en\tzh\nhello\t你好\nbroken line\n\t空的\nthanks\t谢谢\nhello\t你好\n",
                                    encoding="utf-8")
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "b.tsv").write_text("zh\ten\n再见\tbye\n", encoding="utf-8")
    data = tt.read_parallel([tmp_path / "a.tsv", tmp_path / "more"])
    assert data.pairs.rows() == [("你好", "hello"), ("谢谢", "thanks"), ("再见", "bye")]
    assert data.rejected == {"field_count": 1, "empty_side": 1}


def test_read_parallel_errors(tmp_path: Path):
    with pytest.raises(tt.ParallelDataError, match="not found"):
        tt.read_parallel([tmp_path / "missing.tsv"])
    (tmp_path / "x.tsv").write_text("chinese\tenglish\n你好\thello\n", encoding="utf-8")
    with pytest.raises(tt.ParallelDataError, match="header must name the columns"):
        tt.read_parallel([tmp_path / "x.tsv"])
    (tmp_path / "y.tsv").write_text("zh\ten\n你好\thello\n", encoding="utf-8")
    with pytest.raises(tt.ParallelDataError, match="fewer than 2"):
        tt.read_parallel([tmp_path / "y.tsv"])


def test_heldout_split_is_stable_and_disjoint():
    train, held = tt.split_heldout(PAIRS, fraction=0.25, max_heldout=5, seed=1)
    again_train, again_held = tt.split_heldout(PAIRS.reverse(), fraction=0.25, max_heldout=5, seed=1)
    assert held.rows() == again_held.rows() and sorted(train.rows()) == sorted(again_train.rows())
    assert 1 <= held.height <= 5 and not set(held["zh"]) & set(train["zh"])
    assert train.height + held.height == PAIRS.height


def test_translator_params_reject_bad_shapes():
    from chatforge.params import ParamsError, validate_section

    with pytest.raises(ParamsError, match="divisible by heads"):
        validate_section("translator", {"d_model": 30, "heads": 4}, TranslatorParams)
    with pytest.raises(ParamsError, match="unknown key"):
        validate_section("translator", {"epochs": 3}, TranslatorParams)
    assert validate_section("translator", {"max_steps": "200", "lr": "1e-4"}, TranslatorParams).lr == 1e-4
