"""Slot placeholders: exact encodings, lossless decoding, and the round trip through a saved tokenizer."""

from chatforge.runtime import slots

GAZ = {"zh": {"city": ["北京", "伦敦"], "product": ["空气净化器"]}, "en": {"city": ["Wuhan", "New York"], "product": ["iPhone 15"]}}


def _codec():
    return slots.SlotCodec(slots.slot_config(["number", "city", "product"], max_per_kind=2, gazetteer=GAZ))


def test_encode_numbers_and_entities_in_order_of_first_appearance():
    enc = _codec().encode([
        {"role": "user", "content": "2024012371049这单我想改地址，改到伦敦"},
        {"role": "assistant", "content": "订单2024012371049已改为伦敦。快递单号ZT990163664325"},
    ])
    assert enc.messages[0]["content"] == "<number_1>这单我想改地址，改到<city_1>"
    # the assistant reuses placeholders but never introduces one: its tracking number stays literal
    assert enc.messages[1]["content"] == "订单<number_1>已改为<city_1>。快递单号ZT990163664325"
    assert enc.values == {"<number_1>": "2024012371049", "<city_1>": "伦敦"}


def test_english_ids_case_and_the_per_kind_limit():
    enc = _codec().encode([{"role": "user", "content": "order #K71236 to new york, then 2024110381880 and 20240101999 via wuhan"}])
    assert enc.messages[0]["content"] == "order <number_1> to <city_1>, then <number_2> and 20240101999 via <city_2>"
    assert enc.values["<number_1>"] == "#K71236" and enc.values["<city_1>"] == "new york"


def test_decode_is_lossless_and_drops_undefined_placeholders():
    codec = _codec()
    msgs = [{"role": "user", "content": "Can I return the iPhone 15 from order 2024071217367?"}]
    enc = codec.encode(msgs)
    assert codec.decode(enc.messages[0]["content"], enc.values) == msgs[0]["content"]
    assert codec.decode("Order <number_1> for <product_1>, city <city_2>.", enc.values) == \
        "Order 2024071217367 for iPhone 15, city ."


def test_config_travels_with_a_saved_tokenizer(tmp_path):
    from tinymodels import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    added = slots.enable(tok, slots.slot_config(["number", "city"], max_per_kind=2, gazetteer=GAZ))
    assert added == ["<number_1>", "<number_2>", "<city_1>", "<city_2>"]
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path)
    codec = slots.codec_for(again)
    assert codec is not None and codec.max_per_kind == 2
    ids = again("订单<number_1>", add_special_tokens=False)["input_ids"]
    assert again.convert_ids_to_tokens(ids)[-1] == "<number_1>"  # one token, kept by decode
    assert again.decode(ids, skip_special_tokens=True).endswith("<number_1>")
    assert slots.gazetteer_of(again) == {"zh": ["北京", "伦敦"], "en": ["Wuhan", "New York"]}
