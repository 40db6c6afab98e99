"""The typed schema of params.yaml: one pydantic model per section.

Every section rejects unknown keys (a misspelt key is an error, not a silently ignored knob) and
coerces what `dvc exp run -S` writes: `-S train.lr=1e-07` writes a value that YAML reads back as the
string "1e-07", which must still be a float here, and `-S split.salt=2024` writes the number 2024, which
a text-typed key takes as the text "2024". Errors name the key, the value, what is allowed and how to
quote a value on the command line.

params.yaml is the single source of truth: it holds every key, and the defaults written here equal
its values (tests/unit/serving/test_params.py holds both true), so a section built in code and the
default build agree.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_PARAMS_PATH = Path("params.yaml")


class ParamsError(ValueError):
    """A params file that cannot be used; the message says which key and how to fix it."""


class Section(BaseModel):
    # coerce_numbers_to_str: `dvc exp run -S split.salt=2024` writes the number 2024 (YAML reads bare
    # digits as a number); a text-typed key takes it as the text "2024".
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, coerce_numbers_to_str=True)


# --------------------------------------------------------------------------------------- ingest
SourceFormat = Literal[
    "conversations_json",  # {"conversations": [{"id", "messages": [{"role", "content"}], "intent"?}]}
    "messages_jsonl",  # OpenAI / ShareGPT {"messages": [...]} / {"conversations": [...]}: JSONL or one JSON array
    "cornell",  # Cornell Movie-Dialogs: a folder with movie_lines.txt + movie_conversations.txt
    "dailydialog",  # one dialogue per line, utterances separated by __eou__ (+ optional TAB labels)
    "crosswoz",  # CrossWOZ JSON (optionally .zip): roles usr/sys, dialog_act gives the intent
    "csv",  # one row per exchange: utterance, response and optionally intent columns
    "tsv",
    "chatterbot_yaml",  # chatterbot-corpus YAML: {categories, conversations: [[a, b, ...]]}
    "feedback",  # `chatforge feedback export` output (JSONL of messages with intent/lang)
    "alpaca",  # LLaMA-Factory alpaca records {"instruction", "input", "output", "system"?, "history"?}
    "parquet",  # rows with a messages column, a question/answer column pair or alpaca columns
    "hf_dataset",  # a `datasets` save_to_disk folder, data files read by `datasets`, or a hub id
]


class AlpacaColumns(Section):
    """Record keys of an alpaca source (LLaMA-Factory's `columns`); null = the record has no such key."""

    prompt: str = "instruction"  # the user's instruction
    query: str | None = "input"  # appended to the instruction after a newline when non-empty
    response: str = "output"  # the assistant's answer
    system: str | None = "system"  # a leading system message when non-empty
    history: str | None = "history"  # [[user, assistant], ...] exchanges before this one


class SourceOptions(Section):
    # text encoding of the files; null = the format's usual one (utf-8; iso-8859-1 for cornell);
    # auto = utf-8 when the file decodes as utf-8, else the charset charset-normalizer detects
    encoding: str | None = None
    # role names in the file -> user|assistant|system (defaults per format cover the usual names)
    role_map: dict[str, Literal["user", "assistant", "system"]] = Field(default_factory=dict)
    lang: Literal["auto", "zh", "en"] = "auto"
    intent: str | None = None  # intent for every conversation of this source (when it has none)
    # csv/tsv column names
    utterance_column: str = "utterance"
    response_column: str = "response"
    intent_column: str | None = "intent"
    conversation_column: str | None = None  # rows sharing a value form one multi-turn conversation
    delimiter: str | None = Field(default=None, min_length=1, max_length=1)  # csv/tsv field separator; null = , (csv) / TAB (tsv)
    # dailydialog: label columns after the text (topic/act/emotion); topic becomes the intent
    topic_names: dict[str, str] = Field(default_factory=dict)
    limit: int | None = Field(default=None, ge=1)  # read at most this many conversations
    # alpaca (and alpaca-shaped parquet/hf_dataset rows): the record keys
    columns: AlpacaColumns = Field(default_factory=AlpacaColumns)
    # messages_jsonl/conversations_json/parquet/hf_dataset: the list of messages and its keys;
    # null = "messages" or "conversations" / the first of role, from, speaker / content, value, text
    messages_column: str | None = None
    role_key: str | None = None
    content_key: str | None = None
    split: str = "train"  # hf_dataset: the split of a DatasetDict folder or a hub dataset

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str | None) -> str | None:
        if value is not None and value != "auto":
            try:
                codecs.lookup(value)
            except LookupError:
                raise ValueError(f"unknown encoding {value!r}; use a Python codec name such as utf-8, gbk, big5, iso-8859-1, or auto to detect it") from None
        return value


class Source(Section):
    path: str
    format: SourceFormat
    name: str | None = None  # the `source` column value; defaults to the file stem
    optional: bool = False  # a missing optional source (e.g. no feedback exported yet) is logged, not an error
    options: SourceOptions = Field(default_factory=SourceOptions)

    @property
    def source_name(self) -> str:
        """The `source` column value and conversation-id prefix: `name`, else the file name before its first dot."""
        return self.name or Path(self.path).name.split(".")[0]


class IngestParams(Section):
    sources: list[Source] = Field(min_length=1)
    # what to do with consecutive messages of the same role after role mapping
    same_role: Literal["merge", "drop_conversation"] = "merge"
    # the separator used when merging consecutive same-role messages
    merge_separator: str = "\n"
    # a conversation needs at least one user and one assistant message
    min_turns: int = Field(default=2, ge=2)

    @model_validator(mode="after")
    def _unique_names(self) -> IngestParams:
        names = [s.source_name for s in self.sources]
        clashes = sorted({n for n in names if names.count(n) > 1})
        if clashes:
            raise ValueError(f"sources share the name(s) {clashes}; give each source a distinct `name` (it prefixes conversation ids)")
        return self


# ---------------------------------------------------------------------------------------- clean
class CleanParams(Section):
    strip_html: bool = True
    remove_control: bool = True  # control chars, zero-width chars, U+FFFD, emoji and stray symbols
    keep_emoji: bool = False
    nfkc: bool = True  # full-width -> half-width letters/digits, compatibility forms
    traditional_to_simplified: bool = True  # OpenCC t2s on Chinese rows
    synonyms_path: str | None = "lexicons/synonyms.tsv"  # TSV lexicon: variant<TAB>canonical (one per line, # comments)
    mask_pii: bool = True
    pii_kinds: list[Literal["phone", "email", "id_number", "card"]] = Field(
        default_factory=lambda: ["phone", "email", "id_number", "card"]
    )
    min_chars: int = Field(default=1, ge=0)  # a turn shorter than this (after cleaning) drops its conversation
    max_chars: int = Field(default=2000, ge=1)  # a longer turn drops its conversation
    dedup_exact: bool = True
    dedup_near: bool = True  # conversations equal after case/punctuation/space/symbol folding

    @model_validator(mode="after")
    def _bounds(self) -> CleanParams:
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) must not exceed max_chars ({self.max_chars})")
        return self


# ---------------------------------------------------------------------------------------- split
class SplitParams(Section):
    val_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    salt: str = "chatforge-split-v1"  # changing it reshuffles every conversation: do it deliberately
    # sources that always go to train (users' feedback: val/test stay the same from round to round)
    train_only_sources: list[str] = Field(default_factory=lambda: ["feedback"])

    @model_validator(mode="after")
    def _fractions(self) -> SplitParams:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be below 1 so train is not empty")
        return self


# -------------------------------------------------------------------------------------- balance
class BalanceParams(Section):
    max_imbalance: float = Field(default=0.2, ge=0.0, lt=1.0)  # (max - min) / max over intents
    min_count: int = Field(default=5, ge=1)  # intents with fewer conversations are left as they are
    target: Literal["median", "mean", "max", "min"] = "max"  # the class size to aim at
    max_upsample_factor: float = Field(default=4.0, ge=1.0)  # never copy a class beyond this factor
    seed: int = 13


# ==== section: model (issue 3) ====
PIP_SHIPPED_BASES: dict[str, str] = {
    # name -> the family it serves (the folders ship inside pip packages; nothing is downloaded)
    "smollm2-135m-instruct": "causal_lm",
    "gemma3-270m": "causal_lm",  # Gemma 3 270M pretrained (multilingual, reads/writes Chinese); Gemma Terms of Use
    "minilm-l6": "classifier",
}


class ScratchSizes(Section):
    """Sizes of a model built from a fresh config when `model.base: scratch`."""

    layers: int = Field(default=6, ge=1, le=96)
    hidden: int = Field(default=384, ge=8, le=16384)
    heads: int = Field(default=6, ge=1, le=256)
    intermediate: int | None = Field(default=None, ge=8)  # None: 4 x hidden (encoder), 8/3 x hidden (decoder)
    vocab_size: int = Field(default=8000, ge=300, le=262144)  # BPE vocabulary trained on the corpus
    max_position_embeddings: int = Field(default=512, ge=16, le=131072)
    min_frequency: int = Field(default=2, ge=1)  # a BPE merge needs a pair seen this often
    encoder: Literal["bert", "distilbert"] = "bert"  # architecture of a scratch classifier

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> ScratchSizes:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        return self


class SlotParams(Section):
    # slot placeholders (chatforge.runtime.slots): order numbers and gazetteer entities in the
    # dialogue become <number_1>, <city_1> ... for the model and are filled back into its reply
    enabled: bool = True
    kinds: list[str] = Field(default_factory=lambda: ["number", "city", "product", "person"])
    max_per_kind: int = Field(default=4, ge=1, le=32)  # placeholders per kind in one conversation

    @model_validator(mode="after")
    def _known_kinds(self) -> SlotParams:
        bad = [k for k in self.kinds if not k.isalpha() or not k.islower()]
        if bad or len(set(self.kinds)) != len(self.kinds):
            raise ValueError(
                f"kinds {self.kinds}: each kind is a distinct lower-case word: 'number' or the name of a "
                "gazetteer file lexicons/gazetteers/<lang>/<kind>.txt (city, product, person, date)"
            )
        return self


class ModelParams(Section):
    # causal_lm: a chat model fine-tuned on conversations; classifier: an intent classifier + responses
    family: Literal["causal_lm", "classifier"] = "causal_lm"
    # smollm2-135m-instruct | gemma3-270m | minilm-l6 | scratch | a local folder | a hub id (needs network or a cache)
    base: str = Field(default="scratch", min_length=1)
    revision: str | None = None  # hub revision, only for hub ids
    trust_remote_code: bool = False  # only for hub/local folders whose code you have read
    scratch: ScratchSizes = Field(default_factory=ScratchSizes)
    slots: SlotParams = Field(default_factory=SlotParams)
    seed: int = 0  # initialisation of scratch weights and of a classifier head

    @model_validator(mode="after")
    def _family_matches_base(self) -> ModelParams:
        shipped = PIP_SHIPPED_BASES.get(self.base)
        if shipped is not None and shipped != self.family:
            raise ValueError(
                f"base '{self.base}' is a {shipped} model but family is '{self.family}'; "
                f"set model.family: {shipped} or pick a base for {self.family} "
                f"({', '.join(k for k, v in PIP_SHIPPED_BASES.items() if v == self.family)}, scratch, a folder)"
            )
        return self


# ==== end section: model ====


# ==== section: translator (issue 4) ====
class TranslatorParams(Section):
    # A local folder or hub id of a ready translation model (MarianMT, NLLB, M2M100, mBART, or an
    # instruction-tuned causal LM). null trains the compact offline default from the parallel pairs.
    pretrained: str | None = None
    kind: Literal["auto", "seq2seq", "causal_lm"] = "auto"  # auto reads config.is_encoder_decoder
    trust_remote_code: bool = False  # only for a pretrained model whose code you have read
    vocab_size: int = Field(default=4000, ge=300, le=64_000)  # shared zh+en BPE vocabulary
    d_model: int = Field(default=128, ge=16, le=1024)
    layers: int = Field(default=2, ge=1, le=12)  # encoder and decoder layers each
    heads: int = Field(default=4, ge=1, le=16)
    ffn_dim: int = Field(default=512, ge=16, le=8192)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    max_len_tokens: int = Field(default=64, ge=8, le=512)  # longer sentences are truncated
    batch_size: int = Field(default=32, ge=1, le=1024)
    max_steps: int = Field(default=600, ge=1)
    lr: float = Field(default=1e-3, gt=0.0, le=1.0)
    warmup_steps: int = Field(default=100, ge=0)
    label_smoothing: float = Field(default=0.1, ge=0.0, lt=1.0)
    heldout_fraction: float = Field(default=0.05, gt=0.0, lt=1.0)  # pairs kept out for BLEU
    max_heldout: int = Field(default=300, ge=1)
    max_pairs: int | None = Field(default=None, ge=2)  # read at most this many pairs (null: all)
    eval_num_beams: int = Field(default=1, ge=1, le=8)
    seed: int = 13

    @model_validator(mode="after")
    def _shape(self) -> TranslatorParams:
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be below max_steps ({self.max_steps})")
        return self


# ==== end section: translator ====


# ==== section: augment (issue 4) ====
AugmentLang = Literal["zh", "en"]


class BackTranslationParams(Section):
    enabled: bool = False
    ratio: float = Field(default=0.15, ge=0.0, le=10.0)  # added rows / original rows, at most
    pivot: dict[AugmentLang, AugmentLang] = Field(default_factory=lambda: {"zh": "en", "en": "zh"})  # source -> pivot
    roles: list[Literal["user", "assistant"]] = Field(default_factory=lambda: ["user"], min_length=1)
    # null uses the translator folder dvc.yaml passes (built by the `translator` stage); a local
    # folder or hub id uses that model instead
    translator: str | None = None
    kind: Literal["auto", "seq2seq", "causal_lm"] = "auto"
    trust_remote_code: bool = False
    batch_size: int = Field(default=32, ge=1, le=1024)
    num_beams: int = Field(default=1, ge=1, le=8)
    max_new_tokens: int = Field(default=96, ge=4, le=1024)
    no_repeat_ngram_size: int = Field(default=3, ge=0, le=10)  # blocks loops in small models; 0 allows repeats
    min_length_ratio: float = Field(default=0.5, gt=0.0)  # output chars / input chars, lower bound
    max_length_ratio: float = Field(default=2.0, gt=0.0)  # ... upper bound
    # chrF (0-100) of the result against the input: below it the meaning has drifted (0 disables)
    min_similarity: float = Field(default=40.0, ge=0.0, le=100.0)
    keep_numbers: bool = True  # reject a result whose numbers (order ids, prices) or <TAGS> differ from the input's
    keep_entities: bool = True  # reject a result whose gazetteer entities (entity_swap.kinds) differ from the input's
    cache: bool = True  # reuse translations across runs (keyed by translator fingerprint)

    @model_validator(mode="after")
    def _checks(self) -> BackTranslationParams:
        if self.min_length_ratio >= self.max_length_ratio:
            raise ValueError(
                f"min_length_ratio ({self.min_length_ratio}) must be below max_length_ratio ({self.max_length_ratio})"
            )
        same = [k for k, v in self.pivot.items() if k == v]
        if same:
            raise ValueError(f"pivot maps {same[0]!r} to itself; use the other language (zh <-> en)")
        return self


class EntitySwapParams(Section):
    enabled: bool = True
    ratio: float = Field(default=0.1, ge=0.0, le=10.0)  # added rows / original rows, at most
    # gazetteer kinds: <gazetteer folder from dvc.yaml>/<lang>/<kind>.txt, one entity per line
    kinds: list[str] = Field(default_factory=lambda: ["city", "product", "person", "date"], min_length=1)
    variants_per_conversation: int = Field(default=1, ge=1, le=20)
    # false: an entity inside a longer word (北京 in 北京大学) is left alone; true matches it anyway
    match_inside_words: bool = False
    case_sensitive_en: bool = False


class VoiceSwapParams(Section):
    enabled: bool = True
    ratio: float = Field(default=0.3, ge=0.0, le=10.0)  # added rows / original rows, at most
    roles: list[Literal["user", "assistant"]] = Field(default_factory=lambda: ["user", "assistant"], min_length=1)


class AugmentParams(Section):
    seed: int = 13
    max_ratio: float = Field(default=0.8, ge=0.0, le=30.0)  # all added rows / original rows, at most
    max_turn_chars: int = Field(default=400, ge=1)  # longer turns are skipped (counted), never rewritten
    examples_per_method: int = Field(default=3, ge=0, le=100)
    back_translation: BackTranslationParams = Field(default_factory=BackTranslationParams)
    entity_swap: EntitySwapParams = Field(default_factory=EntitySwapParams)
    voice_swap: VoiceSwapParams = Field(default_factory=VoiceSwapParams)


# ==== end section: augment ====


# ==== section: train (issue 3) ====
class LoraOptions(Section):
    enabled: bool = False
    r: int = Field(default=8, ge=1, le=1024)  # adapter rank
    alpha: int = Field(default=16, ge=1)  # scaling = alpha / r
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | None = None  # None: peft's default for the architecture


class TrainParams(Section):
    # base: train from models/base | served: continue from the promoted model (models/served, written by
    # `chatforge promote`): an incremental feedback round (dvc.yaml reads models/${train.init_from})
    init_from: Literal["base", "served"] = "base"
    seed: int = 42  # data order, dropout, sampling of BLEU examples
    lr: float = Field(default=0.002, gt=0.0, le=1.0)  # peak learning rate, reached after warmup
    lr_min: float = Field(default=1e-05, ge=0.0)  # cosine floor (the schedule never goes below it)
    warmup_steps: int = Field(default=30, ge=0)  # linear warmup from 0 to lr, in optimizer steps
    batch_size: int = Field(default=8, ge=1)  # sequences (or packed rows) per micro-batch per process
    grad_accum_steps: int = Field(default=1, ge=1)  # micro-batches per optimizer step
    epochs: int = Field(default=100, ge=1)  # passes over the train data (unless max_steps ends first)
    max_steps: int | None = Field(default=800, ge=1)  # optimizer steps; overrides epochs when set
    max_seq_len: int = Field(default=256, ge=8)  # tokens per sequence / packed row
    overlong: Literal["truncate", "drop"] = "truncate"  # conversations above max_seq_len (counted in metrics)
    batching: Literal["pack", "length_group"] = "pack"  # how padding is avoided (causal_lm)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # fp16 uses dynamic loss scaling (accelerate)
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    max_grad_norm: float | None = Field(default=1.0, gt=0.0)  # None disables clipping
    # freezing: embeddings and the bottom freeze_layers layers, or everything except the head
    freeze: Literal["none", "bottom", "all_but_head"] = "none"
    freeze_embeddings: bool = True  # with freeze: bottom
    freeze_layers: int = Field(default=24, ge=0)  # with freeze: bottom
    # progressive unfreezing: K more layers (top down) every E epochs or every S steps
    unfreeze_layers: int = Field(default=0, ge=0)
    unfreeze_every_epochs: int | None = Field(default=None, ge=1)
    unfreeze_every_steps: int | None = Field(default=None, ge=1)
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)
    dropout: float | None = Field(default=None, ge=0.0, lt=1.0)  # hidden dropout override (seed guide 0.1-0.3)
    attention_dropout: float | None = Field(default=None, ge=0.0, lt=1.0)  # attention dropout override
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    eval_every_steps: int = Field(default=200, ge=1)  # val loss / perplexity / BLEU every N optimizer steps
    eval_max_conversations: int | None = Field(default=64, ge=1)  # val subset for the loss (None: all)
    bleu_samples: int = Field(default=10, ge=0)  # val conversations generated greedily for BLEU (0: off)
    bleu_max_new_tokens: int = Field(default=128, ge=1)
    eval_base: bool = False  # evaluate the untouched base first (base_* metrics: what the fine-tune must beat)
    early_stopping_patience: int = Field(default=3, ge=0)  # evals without val-loss improvement; 0: off
    early_stopping_min_delta: float = Field(default=0.0, ge=0.0)
    max_gap: float = Field(default=0.1, ge=0.0)  # flag when val loss - train loss exceeds this
    checkpoint_every_steps: int = Field(default=100, ge=1)  # crash-safe checkpoint period
    keep_checkpoints: int = Field(default=2, ge=1)
    num_processes: int = Field(default=1, ge=1, le=1024)  # > 1: DDP via `accelerate launch` (gloo on CPU)
    lora: LoraOptions = Field(default_factory=LoraOptions)
    # with init_from served: train on the feedback conversations plus a seeded replay sample of
    # replay_ratio x as many other train conversations (chatforge.data.replay); ignored with base
    replay_ratio: float = Field(default=4.0, ge=0.0, le=1000.0)
    # classifier family
    classifier_input: Literal["first_user", "all_user"] = "first_user"  # text the intent is read from
    responses_path: str | None = None  # JSON {intent: {zh, en}}; None: learnt from the train data
    calibrate: bool = True  # fit a softmax temperature on val (calibrated confidences)

    @model_validator(mode="after")
    def _consistent(self) -> TrainParams:
        if self.lr_min > self.lr:
            raise ValueError(f"lr_min ({self.lr_min}) must not exceed lr ({self.lr})")
        if self.unfreeze_layers and not (self.unfreeze_every_epochs or self.unfreeze_every_steps):
            raise ValueError("unfreeze_layers needs unfreeze_every_epochs or unfreeze_every_steps")
        if self.unfreeze_every_epochs and self.unfreeze_every_steps:
            raise ValueError("set only one of unfreeze_every_epochs and unfreeze_every_steps")
        if self.unfreeze_layers and self.freeze == "none":
            raise ValueError("progressive unfreezing needs something frozen: set freeze: bottom or all_but_head")
        if self.lora.enabled and self.freeze != "none":
            raise ValueError("lora trains adapters only (the base is frozen by peft); set freeze: none with lora")
        return self


# ==== end section: train ====


# ==== section: kto (issue 23) ====
class KTOParams(Section):
    """models/teacher -> models/aligned: KTO on the thumbs-up / thumbs-down rows of data/raw/preferences."""

    beta: float = Field(default=0.1, gt=0.0, le=10.0)  # how far the policy may move from the reference (TRL 0.1)
    # loss weights (TRL 1.0 each); null on both: TRL's imbalance rule from the row counts (modeling.kto.default_weights)
    desirable_weight: float | None = Field(default=1.0, gt=0.0, le=100.0)
    undesirable_weight: float | None = Field(default=1.0, gt=0.0, le=100.0)
    steps: int = Field(default=100, ge=0)  # optimizer steps; 0: off (the input model is published unchanged)
    lr: float = Field(default=5e-05, gt=0.0, le=1.0)  # AdamW peak; cosine decay to lr/100 over the steps
    batch_size: int = Field(default=8, ge=2)  # examples per step (>= 2: the KL estimate pairs them)
    max_seq_len: int = Field(default=256, ge=8)  # tokens of prompt + completion; the prompt's start is cut first
    seed: int = 13  # batch order
    min_rows: int = Field(default=10, ge=2)  # fewer usable rows than this: off (the input model unchanged)

    @model_validator(mode="after")
    def _weights_together(self) -> KTOParams:
        if (self.desirable_weight is None) != (self.undesirable_weight is None):
            raise ValueError("set desirable_weight and undesirable_weight both to numbers, or both to null "
                             "(null: TRL's imbalance rule computes both from the row counts)")
        return self


# ==== end section: kto ====


# ==== section: distill (issue 5) — replace this placeholder block with the real model ====
class DistillParams(Section):
    # student depth: teacher layers kept (evenly spaced, first and last included); null = half the teacher's
    student_layers: int | None = Field(default=5, ge=1)
    temperature: float = Field(default=2.0, gt=0.0, le=20.0)  # softening of both distributions in the KL term
    alpha: float = Field(default=0.5, ge=0.0, le=1.0)  # weight of the soft (KL) loss; 1 - alpha on hard labels
    steps: int = Field(default=600, ge=1)  # optimizer steps
    batch_size: int = Field(default=8, ge=1)
    lr: float = Field(default=0.0005, gt=0.0, le=1.0)
    max_seq_len: int = Field(default=256, ge=8)
    seed: int = 13
    eval_max_conversations: int = Field(default=40, ge=1)  # val conversations scored for teacher and student
    bleu_samples: int = Field(default=10, ge=0)  # causal_lm: greedy replies scored with BLEU (0: off)
    max_new_tokens: int = Field(default=128, ge=1)  # for BLEU replies and latency
    latency_requests: int = Field(default=4, ge=1)
    retention_metric: Literal["auto", "answers", "perplexity", "bleu", "accuracy", "macro_f1"] = "auto"
    min_retention: float = Field(default=0.9, gt=0.0, le=1.0)  # student quality / teacher quality
    enforce: bool = False  # true: the stage fails when retention < min_retention


# ==== end section: distill ====


# ==== section: prune (issue 5) — replace this placeholder block with the real model ====
class PruneParams(Section):
    source: Literal["teacher", "aligned", "student"] = "student"  # which model folder is pruned
    ratio: float = Field(default=0.2, gt=0.0, lt=1.0)  # share of MLP channels and attention heads removed
    heads: bool = False  # also remove attention heads (query heads within each KV group under GQA)
    criterion: Literal["magnitude", "taylor"] = "taylor"  # tp GroupTaylorImportance | GroupMagnitudeImportance
    calibration_batches: int = Field(default=4, ge=1)  # taylor: train batches whose gradients score channels
    round_to: int = Field(default=8, ge=1)  # MLP widths kept a multiple of this (fast kernels)
    magnitude_threshold: float | None = Field(default=0.01, ge=0.0)  # zero |w| < this in linear layers; null: off
    keep_layers: list[int] = Field(default_factory=list)  # layers excluded from magnitude zeroing (see README)
    recovery_steps: int = Field(default=60, ge=0)  # fine-tune steps after pruning (0: none)
    batch_size: int = Field(default=8, ge=1)
    lr: float = Field(default=0.0002, gt=0.0, le=1.0)
    max_seq_len: int = Field(default=256, ge=8)
    seed: int = 13
    eval_max_conversations: int = Field(default=40, ge=1)
    bleu_samples: int = Field(default=10, ge=0)
    max_new_tokens: int = Field(default=128, ge=1)
    latency_requests: int = Field(default=4, ge=1)


# ==== end section: prune ====


# ==== section: quantize (issue 5) — replace this placeholder block with the real model ====
class QuantizeParams(Section):
    source: Literal["teacher", "aligned", "student", "pruned"] = "pruned"  # which model folder is exported
    scheme: Literal["weight_only", "dynamic", "dynamic_per_channel"] = "weight_only"  # see README, Compression
    block_size: int = Field(default=32, ge=16, le=256)  # weight_only: input channels per scale (power of 2)
    symmetric: bool = True  # weight_only: no zero points (smaller file)
    # weight_only compute: 4 = int8 activations in MLAS's 8-bit kernels (fast, measured top-1 0.964 on
    # SmolLM2); 0 = float activations (top-1 0.983 but 8-bit weights are dequantized per call: ~10x slower)
    accuracy_level: Literal[0, 4] = 4
    keep_float: list[str] = Field(default_factory=list)  # MatMul node-name substrings left in float, e.g. [lm_head]
    eval_max_conversations: int = Field(default=30, ge=1)  # test conversations for agreement / BLEU
    max_new_tokens: int = Field(default=128, ge=1)  # greedy decoding for equality rate and BLEU
    max_seq_len: int = Field(default=256, ge=8)
    min_top1_agreement: float = Field(default=0.95, ge=0.0, le=1.0)  # gate: int8 vs float next-token argmax
    max_size_ratio: float = Field(default=0.3, gt=0.0, le=1.0)  # gate: int8 bytes / float bytes
    enforce: bool = False  # true: the stage fails when a gate is missed
    # ONNX Runtime execution providers, most preferred first, for the parity checks here and the ONNX
    # sessions of evaluate and serve; each must be in onnxruntime.get_available_providers()
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"], min_length=1)

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"must be a power of 2 in [16, 256] (16, 32, 64, 128, 256), got {v}")
        return v


# ==== end section: quantize ====


# ==== section: evaluate (issue 6) ====
class EvaluateGates(Section):
    max_gap: float = Field(default=0.1, ge=0.0)  # val loss - train loss at the end of training
    perplexity_band: tuple[float, float] = (5.0, 15.0)  # teacher test perplexity; outside = warning
    min_retention: float = Field(default=0.9, gt=0.0, le=1.0)  # each chain step keeps this share of its parent's answers
    min_int8_size_reduction: float = Field(default=0.7, ge=0.0, lt=1.0)  # 1 - int8 bytes / float bytes
    # the served variant's answers against the retrieval baseline on the same test samples
    min_bleu_vs_retrieval: float = Field(default=1.0, ge=0.0)  # served BLEU >= this x retrieval BLEU, per language
    min_slot_carry: float = Field(default=0.95, ge=0.0, le=1.0)
    max_degenerate_rate: float = Field(default=0.02, ge=0.0, le=1.0)
    max_wrong_lang: float = Field(default=0.01, ge=0.0, le=1.0)  # per language
    max_int8_accuracy_drop: float = Field(default=0.02, ge=0.0, le=1.0)  # classifier accuracy it may lose
    max_fallback_rate: float = Field(default=0.2, ge=0.0, le=1.0)  # served answers that are the fallback message
    # generalisation: the paraphrase set's on-intent rate of the served variant >= retrieval's + this, per language
    # (the project's bar, issue "A bot that understands")
    min_paraphrase_margin: float = Field(default=0.10, ge=-1.0, le=1.0)
    # mode collapse: top-answer share per language <= max(collapse_floor, collapse_factor x the references' share)
    collapse_floor: float = Field(default=0.05, ge=0.0, le=1.0)
    collapse_factor: float = Field(default=1.5, ge=1.0)  # the project's bar (issue "A bot that understands")
    # forgetting: the new served model against the promoted one (evaluate --previous), on the test split
    max_bleu_drop: float = Field(default=1.0, ge=0.0)  # BLEU points the served BLEU zh or en may lose
    max_slot_carry_drop: float = Field(default=0.01, ge=0.0, le=1.0)  # slot carry (0-1) the served model may lose

    @model_validator(mode="after")
    def _band(self) -> EvaluateGates:
        lo, hi = self.perplexity_band
        if not 0 < lo < hi:
            raise ValueError(f"perplexity_band must be [low, high] with 0 < low < high, got {list(self.perplexity_band)}")
        return self


class EvaluateParams(Section):
    variants: list[Literal["base", "teacher", "aligned", "student", "pruned", "int8"]] = Field(
        default_factory=lambda: ["base", "teacher", "student", "pruned", "int8"], min_length=1
    )
    max_samples_per_lang: int | None = Field(default=150, ge=1)  # test assistant turns per language (null: all)
    other_samples_per_lang: int | None = Field(default=None, ge=1)  # variants other than served/retrieval: first N of the same sample (null: all)
    # paraphrase questions per language that every variant and retrieval answer, taken a question of
    # each intent in turn in file order (evaluation.paraphrase.paraphrase_subset); null: all of them
    max_paraphrases_per_lang: int | None = Field(default=None, ge=1)
    max_new_tokens: int = Field(default=256, ge=1, le=1024)  # cap on answer length (the limit is 2 x the longest reference + 16)
    batch_size: int = Field(default=16, ge=1)  # prompts decoded together for BLEU/chrF (latency stays batch 1)
    max_ppl_conversations: int = Field(default=40, ge=1)  # test conversations scored for perplexity
    latency_runs: int = Field(default=5, ge=1)  # timed batch-1 generations per variant
    latency_new_tokens: int = Field(default=32, ge=1)
    confidence_threshold: float | None = Field(default=None, gt=0.0, lt=1.0)  # null: use serve.confidence_threshold
    seed: int = 0
    gates: EvaluateGates = Field(default_factory=EvaluateGates)
    fail_on_gate: bool = True  # a failed gate fails the build (warnings never do); false only records it


# ==== end section: evaluate ====


# ==== section: serve (issue 7) — replace this placeholder block with the real model ====
class Persona(Section):
    # seed guide: temperature 0.7-1.2 gives a persona its voice (low = precise, high = lively)
    temperature: float = Field(default=0.7, ge=0.7, le=1.2)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    system_prompt: str = ""  # prepended as a system message when the request has none


DEFAULT_PERSONAS: dict[str, Persona] = {
    "precise": Persona(temperature=0.7, top_p=0.9,
                       system_prompt="You are a precise customer-service assistant. Answer briefly and accurately."),
    "friendly": Persona(temperature=1.0, top_p=0.95, system_prompt="You are a warm, friendly customer-service assistant."),
    "lively": Persona(temperature=1.2, top_p=0.95,
                      system_prompt="You are an upbeat, chatty assistant who keeps answers light."),
}


class ServeUpstream(Section):
    # an OpenAI-compatible server (vLLM, llama.cpp server, Ollama, another chatforge) answering for a variant
    base_url: str = Field(min_length=1, pattern=r"^https?://")  # e.g. http://127.0.0.1:8001/v1
    model: str = Field(min_length=1)  # the upstream's model name
    api_key_env: str | None = None  # environment variable holding the upstream's API key (never the key itself)
    timeout_s: float = Field(default=120.0, gt=0.0)  # per request


class ServeVariant(Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")  # shown in metrics, the store and `ab report`
    model: str | None = Field(default=None, min_length=1)  # a model folder the pipeline built (causal_lm or classifier)
    upstream: ServeUpstream | None = None  # instead of `model`: an OpenAI-compatible server
    weight: float = Field(default=1.0, gt=0.0)  # share of users routed here (normalised over variants)
    backend: Literal["auto", "torch", "onnx", "onnx_int8"] = "auto"  # causal LM runtime; auto prefers int8 ONNX

    @model_validator(mode="after")
    def _one_source(self) -> ServeVariant:
        if (self.model is None) == (self.upstream is None):
            raise ValueError(f"variant {self.name!r} needs exactly one of `model` (a folder) or `upstream` (a server)")
        return self


class ServeBatch(Section):
    # cache misses that arrive together are decoded in one batch (continuous batching per step)
    max_batch_size: int = Field(default=8, ge=1, le=64)  # sequences decoded together per model
    max_wait_ms: float = Field(default=2.0, ge=0.0, le=1000.0)  # how long a lone request waits for company


class ServeCache(Section):
    ttl_s: int = Field(default=3600, ge=1)  # seconds a cached answer lives
    max_entries: int = Field(default=2048, ge=1)  # in-process LRU size (used when redis_url is null)


class ServeFilter(Section):
    # word-list files, one term per line, # comments
    lexicons: list[str] = Field(default_factory=lambda: ["lexicons/sensitive/zh.txt", "lexicons/sensitive/en.txt"])
    mode: Literal["block", "mask"] = "block"  # block: replace the whole message; mask: star the term
    blocked_message: dict[Literal["zh", "en"], str] = Field(
        default_factory=lambda: {
            "zh": "抱歉，这个话题我无法回答。",
            "en": "Sorry, I can't help with that.",
        }
    )

    @model_validator(mode="after")
    def _both_languages(self) -> ServeFilter:
        if set(self.blocked_message) != {"zh", "en"}:
            raise ValueError(f"blocked_message needs both 'zh' and 'en', got {sorted(self.blocked_message)}")
        return self


class ServeLimits(Section):
    max_messages: int = Field(default=32, ge=1)  # messages per request
    max_chars: int = Field(default=8000, ge=1)  # characters over all messages of a request
    max_tokens: int = Field(default=512, ge=1)  # the largest max_tokens a request may ask for
    default_max_tokens: int = Field(default=128, ge=1)  # used when the request does not say
    # checked while the request is read, before the body is parsed: larger bodies get 413, larger
    # header blocks 431 (OpenAI error shape); an unauthenticated request is refused before its body
    max_body_bytes: int = Field(default=262_144, ge=1024)  # bytes of one request body
    max_header_bytes: int = Field(default=16_384, ge=1024)  # bytes of all request headers together

    @model_validator(mode="after")
    def _default_within(self) -> ServeLimits:
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) must not exceed max_tokens ({self.max_tokens})"
            )
        return self


class ServeRateLimit(Section):
    # per API key, shared by every worker and host through redis_url; in-process without Redis
    requests_per_minute: float = Field(default=120.0, gt=0.0)  # sustained rate per API key
    burst: int = Field(default=20, ge=1)  # requests a key may make at once before the rate applies


class ServePrivacy(Section):
    # what the conversation store keeps: masked with the clean stage's PII rules, for a limited time
    mask_pii: bool = True  # phone, email, ID-card and bank-card numbers -> <PHONE> <EMAIL> <ID> <CARD> before storing
    pii_kinds: list[Literal["phone", "email", "id_number", "card"]] = Field(
        default_factory=lambda: ["phone", "email", "id_number", "card"], min_length=1
    )
    retention_days: float | None = Field(default=30.0, gt=0.0)  # conversations older than this are deleted; null keeps them


class ServeHybrid(Section):
    # retrieval in the loop (chatforge.runtime.hybrid): an answer below confidence_threshold is replaced
    # by the train exchange, among the top_k nearest, that the model itself scores highest
    enabled: bool = True  # false: below the threshold the fallback message is shown, as before
    top_k: int = Field(default=8, ge=1, le=64)  # candidates reranked by the model
    min_similarity: float = Field(default=0.2, ge=0.0, le=1.0)  # relevance (Relevance) a candidate needs; none: fallback
    # a confident answer is kept only when it resembles (character TF-IDF cosine >= this) one of the top_k past
    # answers; else the reranked past answer replaces it. 0 disables the check (and keeps streams live)
    min_agreement: float = Field(default=0.5, ge=0.0, le=1.0)
    # relevance of a past exchange = TF-IDF cosine + intent_weight x P(its intent | the user turn) (a logistic
    # regression on the exchanges' intents; 0: off) + encoder_weight x sentence-embedding cosine for encoder_langs
    intent_weight: float = Field(default=0.5, ge=0.0, le=10.0)
    encoder: str | None = "minilm-l6"  # minilm-l6 (pip, English) | a local encoder folder | a hub id | null: off
    encoder_langs: list[Literal["zh", "en"]] = Field(default_factory=lambda: ["en"])
    encoder_weight: float = Field(default=2.0, ge=0.0, le=10.0)
    # candidates are ranked by relevance + rerank_weight x the model's mean log-probability of their tokens
    rerank_weight: float = Field(default=1.0, ge=0.0, le=100.0)


class ServeParams(Section):
    # seed guide: show an answer only when the model is more than 0.7 confident, else the fallback
    confidence_threshold: float = Field(default=0.7, ge=0.0, le=1.0)
    # confidence = geometric-mean probability of the first N answer tokens (null: all of them); a
    # stream is decided after N tokens, so plain and streamed requests get the same decision
    confidence_tokens: int | None = Field(default=4, ge=1)
    fallback: dict[Literal["zh", "en"], str] = Field(
        default_factory=lambda: {
            "zh": "抱歉，我不太确定您的意思，能换个说法或联系人工客服吗？",
            "en": "Sorry, I'm not sure I understood. Could you rephrase, or ask for a human agent?",
        }
    )
    hybrid: ServeHybrid = Field(default_factory=ServeHybrid)
    # decoding when neither the request nor a persona sets it: 0 = greedy; sampled replies are seeded
    # per conversation (chatforge.runtime.decode.conversation_seed with `seed`) unless the request
    # sends a seed, so a conversation always gets the same reply and evaluate measures what serve shows
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    personas: dict[str, Persona] = Field(default_factory=lambda: dict(DEFAULT_PERSONAS))
    variants: list[ServeVariant] = Field(min_length=1)
    redis_url: str | None = None  # e.g. redis://localhost:6379/0; null: in-process LRU cache
    database_url: str = "sqlite:///.cache/serve/chatforge.db"  # any SQLAlchemy URL (postgresql+psycopg://...)
    ab_salt: str = "chatforge-ab-v1"  # part of the user hash; changing it reshuffles users between variants
    cache: ServeCache = Field(default_factory=ServeCache)
    filter: ServeFilter = Field(default_factory=ServeFilter)
    limits: ServeLimits = Field(default_factory=ServeLimits)
    rate_limit: ServeRateLimit = Field(default_factory=ServeRateLimit)
    privacy: ServePrivacy = Field(default_factory=ServePrivacy)
    batch: ServeBatch = Field(default_factory=ServeBatch)

    @model_validator(mode="after")
    def _consistent(self) -> ServeParams:
        names = [v.name for v in self.variants]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"variant names must be unique; repeated: {dupes}")
        if set(self.fallback) != {"zh", "en"}:
            raise ValueError(f"fallback needs both 'zh' and 'en' messages, got {sorted(self.fallback)}")
        bad = [p for p in self.personas if not p or ":" in p]
        if bad:
            raise ValueError(f"persona names must be non-empty and contain no ':' (got {bad})")
        return self


# ==== end section: serve ====


SECTIONS: dict[str, type[Section]] = {
    "ingest": IngestParams,
    "clean": CleanParams,
    "split": SplitParams,
    "balance": BalanceParams,
    "model": ModelParams,
    "translator": TranslatorParams,
    "augment": AugmentParams,
    "train": TrainParams,
    "kto": KTOParams,
    "distill": DistillParams,
    "prune": PruneParams,
    "quantize": QuantizeParams,
    "evaluate": EvaluateParams,
    "serve": ServeParams,
}

S = TypeVar("S", bound=Section)


def _describe(error: dict[str, Any], section: str) -> str:
    loc = ".".join(str(p) for p in (section, *error["loc"]))
    value = error.get("input")
    shown = repr(value) if not isinstance(value, dict) else "{...}"
    if len(shown) > 80:  # never echo unbounded input
        shown = shown[:77] + "..."
    msg = error["msg"]
    if error["type"] not in ("extra_forbidden", "missing") and not isinstance(value, (dict, list)):
        key = ".".join(str(p) for p in (section, *error["loc"]) if not isinstance(p, int))
        if error["type"].split("_")[0] in ("int", "float", "bool", "greater", "less", "finite", "decimal"):
            msg += f". On the command line write it bare: dvc exp run -S {key}=<value>"
        else:
            msg += f". On the command line, quote text so YAML keeps it as written: dvc exp run -S '{key}=\"<text>\"'"
    if error["type"] == "extra_forbidden":
        return f"{loc}: unknown key (value {shown}). Remove it or fix its spelling."
    if error["type"] == "missing":
        return f"{loc}: required key is missing. Add it to params.yaml."
    return f"{loc} = {shown}: {msg}."


def _known_keys(model: type[BaseModel]) -> str:
    return ", ".join(model.model_fields)


def validate_section(name: str, raw: Any, model: type[S], *, path: Path = DEFAULT_PARAMS_PATH) -> S:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: section '{name}' must be a mapping of keys, got {type(raw).__name__}.")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e, name) for e in exc.errors()]
        hint = f"Allowed keys in '{name}': {_known_keys(model)}." if any("unknown key" in ln for ln in lines) else ""
        raise ParamsError(f"{path}: invalid params:\n  " + "\n  ".join(lines) + (f"\n  {hint}" if hint else "")) from None


def read_params_file(path: Path = DEFAULT_PARAMS_PATH) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: params file not found. Run from the project root or pass its path.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections ({', '.join(SECTIONS)}).")
    return data


# one overload per section: `load_section("split")` is typed SplitParams, no isinstance check at the caller
@overload
def load_section(name: Literal["ingest"], *, path: Path = ...) -> IngestParams: ...
@overload
def load_section(name: Literal["clean"], *, path: Path = ...) -> CleanParams: ...
@overload
def load_section(name: Literal["split"], *, path: Path = ...) -> SplitParams: ...
@overload
def load_section(name: Literal["balance"], *, path: Path = ...) -> BalanceParams: ...
@overload
def load_section(name: Literal["model"], *, path: Path = ...) -> ModelParams: ...
@overload
def load_section(name: Literal["translator"], *, path: Path = ...) -> TranslatorParams: ...
@overload
def load_section(name: Literal["augment"], *, path: Path = ...) -> AugmentParams: ...
@overload
def load_section(name: Literal["train"], *, path: Path = ...) -> TrainParams: ...
@overload
def load_section(name: Literal["kto"], *, path: Path = ...) -> KTOParams: ...
@overload
def load_section(name: Literal["distill"], *, path: Path = ...) -> DistillParams: ...
@overload
def load_section(name: Literal["prune"], *, path: Path = ...) -> PruneParams: ...
@overload
def load_section(name: Literal["quantize"], *, path: Path = ...) -> QuantizeParams: ...
@overload
def load_section(name: Literal["evaluate"], *, path: Path = ...) -> EvaluateParams: ...
@overload
def load_section(name: Literal["serve"], *, path: Path = ...) -> ServeParams: ...
@overload
def load_section(name: str, *, path: Path = ...) -> Section: ...


def load_section(name: str, *, path: Path = DEFAULT_PARAMS_PATH) -> Section:
    """Validate one section of params.yaml (what a stage calls before any heavy work) and return its
    typed model (SplitParams for "split" ...). Raises ParamsError naming the key, the value and what
    is allowed; a stage script turns it into exit code 2 (chatforge.stage.bad_input)."""
    data = read_params_file(path)
    if name not in SECTIONS:
        raise ParamsError(f"unknown params section '{name}'; known: {', '.join(SECTIONS)}")
    return validate_section(name, data.get(name), SECTIONS[name], path=path)


def load_all(path: Path = DEFAULT_PARAMS_PATH) -> dict[str, Section]:
    """Validate every section; collects every error so one run of `params check` shows them all."""
    data = read_params_file(path)
    unknown = [k for k in data if k not in SECTIONS]
    problems: list[str] = [
        f"{k}: unknown section. Known sections: {', '.join(SECTIONS)}." for k in unknown
    ]
    out: dict[str, Section] = {}
    for name, model in SECTIONS.items():
        if name not in data and not _has_defaults(model):
            problems.append(f"{name}: section missing. Add it to params.yaml.")
            continue
        try:
            out[name] = validate_section(name, data.get(name), model, path=path)
        except ParamsError as exc:
            problems.extend(str(exc).splitlines()[1:])
    if problems:
        raise ParamsError(f"{path}: invalid params:\n  " + "\n  ".join(p.strip() for p in problems))
    return out


def _has_defaults(model: type[BaseModel]) -> bool:
    return all(not f.is_required() for f in model.model_fields.values())


__all__ = [
    "SECTIONS",
    "BalanceParams",
    "CleanParams",
    "IngestParams",
    "KTOParams",
    "ParamsError",
    "Section",
    "Source",
    "SourceOptions",
    "SplitParams",
    "load_all",
    "load_section",
    "validate_section",
]
