"""The one tiny-model factory (2 layers, 64 dims; no downloads) for tests and benchmarks.

Not shipped in the wheel: unit tests import it with `from tinymodels import ...` (tests/ is on
pytest's pythonpath); `bench/serve.py` puts tests/ on sys.path. Random weights answer nonsense,
fast: enough to exercise every code path, never a substitute for a model `dvc repro` built.

- `build_tiny_tokenizer`: a byte-level BPE with ChatML specials and chatforge's one ChatML template.
- `write_tiny_causal_lm` / `write_tiny_classifier`: the model folders most tests share (conftest's
  session fixtures `tiny_causal_lm`, `tiny_classifier`).
- `build_tiny_causal_lm` / `build_tiny_classifier`: the serving tests' and bench's variants (a
  tokenizer with [CLS]/[SEP] and a BOS, 1024 positions, variant "tiny"), built on the same parts.
- `tiny_turns`: a small turns table in zh and en with intents.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chatforge.modeling.tokenizer import CHATML_TEMPLATE  # the one ChatML template (re-exported for tests)

TINY_CORPUS = [
    "查询北京天气", "今日北京晴，15-25℃", "明天上海会下雨吗", "我想订一张去广州的机票",
    "what is the weather in Beijing", "It is sunny today, 15 to 25 degrees.",
    "book a flight to Shanghai please", "Your order has shipped and arrives tomorrow.",
    "hello, how can I help you?", "谢谢，再见", "好的，没问题", "please reset my password",
]
# the serving tests' corpus and special tokens (build_tiny_causal_lm / build_tiny_classifier)
SAMPLE_TEXT = [
    "hello, how can I help you today?",
    "my order has not arrived yet, where is it?",
    "what is the weather in Beijing tomorrow?",
    "I would like a refund for this product.",
    "查询北京天气",
    "今日北京晴，15-25℃",
    "我的订单还没有到，请帮我查一下。",
    "您好，请问有什么可以帮您？",
]
# the serving variant's special tokens (trained in this order) and their tokenizer roles
SERVING_TOKENS = ("<|pad|>", "<|im_start|>", "<|im_end|>", "[CLS]", "[SEP]")
SERVING_ROLES = {"eos_token": "<|im_end|>", "pad_token": "<|pad|>", "bos_token": "<|im_start|>",
                 "cls_token": "[CLS]", "sep_token": "[SEP]"}


def build_tiny_tokenizer(corpus: Sequence[str] = tuple(TINY_CORPUS * 3), *, vocab_size: int = 400,
                         special_tokens: Sequence[str] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                         roles: dict[str, str | None] | None = None):
    """A byte-level BPE (any text round-trips) trained on `corpus` up to `vocab_size` with
    `special_tokens`, and chatforge's ChatML chat template. `roles` maps tokenizer roles to tokens;
    the default: EOS <|im_end|>, pad and unk <|endoftext|>, no BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if roles is None:
        roles = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(special_tokens), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **roles)
    fast.chat_template = CHATML_TEMPLATE
    return fast


def serving_tokenizer(vocab_size: int = 320):
    """The serving tests' tokenizer: SAMPLE_TEXT, a BOS and [CLS]/[SEP] (the classifier reads them)."""
    return build_tiny_tokenizer(SAMPLE_TEXT * 4, vocab_size=vocab_size, special_tokens=SERVING_TOKENS, roles=SERVING_ROLES)


def write_tiny_causal_lm(folder: Path, *, layers: int = 2, seed: int = 0, variant: str = "teacher",
                         hidden: int = 64, intermediate: int = 128, kv_heads: int = 2, tie: bool = True,
                         max_positions: int = 512, tokenizer: Any = None, base: str | None = "tiny",
                         details: dict[str, Any] | None = None) -> Path:
    """LlamaForCausalLM (default hidden 64, 4 heads / `kv_heads` KV heads, tied embeddings) with
    `tokenizer` (default `build_tiny_tokenizer()`), its BOS when it has one, + chatforge.json."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from chatforge.runtime.folder import Manifest, write_manifest

    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
        tie_word_embeddings=tie, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_manifest(folder, Manifest(family="causal_lm", variant=variant, base=base, details=details or {}))
    return folder


def write_tiny_classifier(folder: Path, *, intents: tuple[str, ...] = ("weather", "flight", "greeting"),
                          layers: int = 2, seed: int = 0) -> Path:
    """BertForSequenceClassification (hidden 64) with intents in id2label, responses.json, manifest."""
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


def build_tiny_causal_lm(folder: Path | str, *, seed: int = 0, vocab_size: int = 320) -> Path:
    """The serving tests' and bench's causal LM: `serving_tokenizer`, 1024 positions, variant "tiny"."""
    return write_tiny_causal_lm(Path(folder), seed=seed, variant="tiny", max_positions=1024,
                                tokenizer=serving_tokenizer(vocab_size), base=None, details={"note": "random weights"})


def build_tiny_classifier(folder: Path | str, *, responses: dict[str, dict[str, str]],
                          calibration_temperature: float = 1.0, seed: int = 0) -> Path:
    """The serving tests' intent classifier: BertForSequenceClassification (hidden 64, 2 heads)
    over `serving_tokenizer`, labels = sorted(responses), responses.json, variant "tiny"."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from chatforge.runtime.folder import Manifest, write_manifest

    folder = Path(folder)
    tokenizer = serving_tokenizer(320)
    labels = sorted(responses)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id, id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "responses.json").write_text(json.dumps(responses, ensure_ascii=False, indent=2), encoding="utf-8")
    write_manifest(folder, Manifest(family="classifier", variant="tiny",
                                    details={"calibration_temperature": calibration_temperature}))
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
