"""Tiny models and turns built in-process for unit tests (2 layers, 64 dims; no downloads).

Import with `from tinymodels import ...` (tests/ is on pytest's pythonpath).
"""

from __future__ import annotations

from pathlib import Path

from chatforge.modeling.tokenizer import CHATML_TEMPLATE  # the one ChatML template (re-exported for tests)
TINY_CORPUS = [
    "查询北京天气", "今日北京晴，15-25℃", "明天上海会下雨吗", "我想订一张去广州的机票",
    "what is the weather in Beijing", "It is sunny today, 15 to 25 degrees.",
    "book a flight to Shanghai please", "Your order has shipped and arrives tomorrow.",
    "hello, how can I help you?", "谢谢，再见", "好的，没问题", "please reset my password",
]


def build_tiny_tokenizer():
    """A byte-level BPE (any text round-trips) with ChatML special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TINY_CORPUS * 3, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def write_tiny_causal_lm(folder: Path, *, layers: int = 2, seed: int = 0, variant: str = "teacher",
                         hidden: int = 64, intermediate: int = 128) -> Path:
    """LlamaForCausalLM (default hidden 64, 4 heads / 2 KV heads, tied embeddings) + chatforge.json."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from chatforge.runtime.folder import Manifest, write_manifest

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_manifest(folder, Manifest(family="causal_lm", variant=variant, base="tiny"))
    return folder


def write_tiny_classifier(folder: Path, *, intents: tuple[str, ...] = ("weather", "flight", "greeting"),
                          layers: int = 2, seed: int = 0) -> Path:
    """BertForSequenceClassification (hidden 64) with intents in id2label, responses.json, manifest."""
    import json

    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from chatforge.runtime.folder import Manifest, write_manifest

    folder.mkdir(parents=True, exist_ok=True)
    chars = sorted({c for line in TINY_CORPUS for c in line.lower() if not c.isspace()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), tokenize_chinese_chars=True)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=128, num_labels=len(intents),
        id2label=dict(enumerate(intents)), label2id={k: i for i, k in enumerate(intents)},
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "responses.json").write_text(
        json.dumps({i: {"zh": f"{i}（中文）", "en": f"{i} (en)"} for i in intents}, ensure_ascii=False),
        encoding="utf-8",
    )
    write_manifest(folder, Manifest(family="classifier", variant="teacher", base="tiny",
                                    details={"calibration_temperature": 1.0}))
    return folder


def tiny_turns(conversations: int = 24, *, intents: tuple[str, ...] = ("weather", "flight", "greeting")):
    """A small turns table (one user + one assistant message per conversation), zh and en, with intents."""
    import polars as pl

    from chatforge.data.schema import conform

    pairs = {
        "weather": [("查询北京天气", "今日北京晴，15-25℃"), ("what is the weather in Beijing", "It is sunny today, 15 to 25 degrees.")],
        "flight": [("我想订一张去广州的机票", "好的，没问题"), ("book a flight to Shanghai please", "Your order has shipped and arrives tomorrow.")],
        "greeting": [("hello, how can I help you?", "谢谢，再见"), ("明天上海会下雨吗", "It is sunny today, 15 to 25 degrees.")],
    }
    rows = []
    for i in range(conversations):
        intent = intents[i % len(intents)]
        user, answer = pairs.get(intent, pairs["weather"])[i // len(intents) % 2]
        lang = "zh" if any("\u4e00" <= c <= "\u9fff" for c in user) else "en"
        for turn, (role, content) in enumerate((("user", user), ("assistant", answer))):
            rows.append({"conversation_id": f"c{i:04d}", "turn": turn, "role": role, "content": content, "lang": lang,
                         "intent": intent, "source": "test", "origin_id": None, "method": "original"})
    return conform(pl.DataFrame(rows))
