"""Tiny randomly initialised model folders (2 layers, 64 dims) for serving smoke tests and benches.

They answer nonsense, fast: enough to exercise every code path of the service when no build
exists (tests, `bench/serve.py` on a fresh clone). Never a substitute for a model `dvc repro` built.
"""

from __future__ import annotations

import json
from pathlib import Path

from chatforge.modeling.tokenizer import CHATML_TEMPLATE
from chatforge.runtime.folder import Manifest, write_manifest
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


def _tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|pad|>", "<|im_start|>", "<|im_end|>", "[CLS]", "[SEP]"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(SAMPLE_TEXT * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        bos_token="<|im_start|>",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_causal_lm(folder: Path | str, *, seed: int = 0, vocab_size: int = 320) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    tokenizer = _tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_manifest(folder, Manifest(family="causal_lm", variant="tiny", details={"note": "random weights"}))
    return folder


def build_tiny_classifier(
    folder: Path | str,
    *,
    responses: dict[str, dict[str, str]],
    calibration_temperature: float = 1.0,
    seed: int = 0,
) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    folder = Path(folder)
    tokenizer = _tokenizer(320)
    labels = sorted(responses)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "responses.json").write_text(
        json.dumps(responses, ensure_ascii=False, indent=2), encoding="utf-8"
    )
    write_manifest(
        folder,
        Manifest(
            family="classifier", variant="tiny", details={"calibration_temperature": calibration_temperature}
        ),
    )
    return folder


__all__ = ["build_tiny_causal_lm", "build_tiny_classifier"]
