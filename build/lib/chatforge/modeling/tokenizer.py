"""A byte-level BPE tokenizer trained on the corpus, for models built from scratch.

Chinese-aware: every CJK character is pre-tokenized on its own, so a token never spans two Chinese
characters (merges only join the UTF-8 bytes of one character), and digits are split one by one so
numbers do not eat the vocabulary. Byte-level fallback means no input is ever unknown.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

# CJK unified ideographs (+ extension A), CJK symbols/punctuation, full-width forms, kana and hangul.
CJK_PATTERN = r"[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uff00-\uffef]"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CAUSAL_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ENCODER_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_bpe_tokenizer(
    texts: Iterable[str],
    *,
    vocab_size: int,
    min_frequency: int = 2,
    kind: Literal["causal_lm", "classifier"] = "causal_lm",
    model_max_length: int = 512,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts`; ChatML special tokens and template for causal_lm,
    BERT-style [CLS] ... [SEP] for classifier."""
    specials = CAUSAL_SPECIALS if kind == "causal_lm" else ENCODER_SPECIALS
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CJK_PATTERN), behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is ever unknown
        show_progress=False,
    )
    # sorted + deduplicated: the trainer's result must not depend on row order or repeats of upsampling
    tok.train_from_iterator(sorted(set(texts)), trainer=trainer)
    if kind == "causal_lm":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            bos_token=None,
            unk_token=None,
            chat_template=CHATML_TEMPLATE,
            model_max_length=model_max_length,
            clean_up_tokenization_spaces=False,
        )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
