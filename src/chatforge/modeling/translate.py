"""Translators behind back-translation: a seq2seq translation model or a causal LM prompted to translate.

Both load from a local folder or a hub id (the hub only when the user configured one and is online)
and translate in batches. `CachedTranslator` puts a persistent cache in front of either one, keyed by
(translator fingerprint, direction, source text): rerunning augment with a larger ratio then sends only
new text to the model.

The cache is a SQLite file in a folder outside DVC's outputs (`.cache/translations/` by default,
git-ignored). DVC deletes a stage's outputs before it reruns the stage, so a cache kept there would be
lost exactly when it is needed; and it is not part of what the stage produces (with greedy decoding the
same text always gets the same translation), so it must not change a stage's hash either. SQLite rather
than a parquet/JSONL file because new entries are appended in place, lookups are indexed, and a crash
mid-run cannot corrupt what was stored before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from chatforge.params import BackTranslationParams

log = logging.getLogger(__name__)

Lang = Literal["zh", "en"]
LANG_NAMES: dict[str, str] = {"zh": "Chinese (Simplified)", "en": "English"}

# language codes used by the multilingual seq2seq families, by tokenizer class name prefix
_LANG_CODES: dict[str, dict[str, str]] = {
    "Nllb": {"zh": "zho_Hans", "en": "eng_Latn"},
    "M2M100": {"zh": "zh", "en": "en"},
    "MBart": {"zh": "zh_CN", "en": "en_XX"},
}
# files whose bytes decide what a model folder translates to (the fingerprint)
_FINGERPRINT_GLOBS = ("*.safetensors", "*.bin", "config.json", "generation_config.json", "tokenizer*", "*.model",
                      "vocab*", "*.spm", "special_tokens_map.json", "chat_template*")


class TranslatorLoadError(RuntimeError):
    """A translator that cannot be loaded; the message says what to configure."""


class Translator(Protocol):
    fingerprint: str  # changes whenever the translations could change (weights, tokenizer, decoding)
    texts_translated: int  # texts sent to the model so far (a cache in front keeps this down)

    def translate(self, texts: Sequence[str], *, src: Lang, tgt: Lang) -> list[str]: ...


@dataclass(frozen=True)
class DecodeOptions:
    batch_size: int = 32
    num_beams: int = 1
    max_new_tokens: int = 96
    no_repeat_ngram_size: int = 3  # small models loop ("until until until"); 0 allows repeats


def fingerprint_folder(folder: Path, *, extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    files = sorted({p for g in _FINGERPRINT_GLOBS for p in folder.glob(g) if p.is_file()})
    for p in files:
        h.update(p.name.encode())
        with p.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()[:24]


def _batches(texts: Sequence[str], size: int) -> list[list[int]]:
    # sort by length so a batch pads little; results go back by index, so order does not matter
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    return [order[i : i + size] for i in range(0, len(order), size)]


class Seq2SeqTranslator:
    """MarianMT (one direction, or multilingual with `>>xx<<` target tags), NLLB, M2M100 or mBART-50."""

    def __init__(self, model, tokenizer, *, fingerprint: str, options: DecodeOptions = DecodeOptions()) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.options = options
        self.fingerprint = fingerprint
        self.texts_translated = 0
        self.generate_calls = 0
        vocab = tokenizer.get_vocab()
        self._tags = {lang: f">>{lang}<<" for lang in LANG_NAMES if f">>{lang}<<" in vocab}
        cls = type(tokenizer).__name__
        self._codes = next((codes for prefix, codes in _LANG_CODES.items() if cls.startswith(prefix)), None)

    def _prepare(self, texts: list[str], src: Lang, tgt: Lang) -> tuple[list[str], dict]:
        if self._tags:
            if tgt not in self._tags:
                raise TranslatorLoadError(f"this translator has no target tag >>{tgt}<<; it cannot translate into {tgt}")
            return [f"{self._tags[tgt]} {t}" for t in texts], {}
        if self._codes:
            self.tokenizer.src_lang = self._codes[src]
            return texts, {"forced_bos_token_id": self.tokenizer.convert_tokens_to_ids(self._codes[tgt])}
        return texts, {}  # a one-direction model (e.g. opus-mt-zh-en): the user picked the direction

    def translate(self, texts: Sequence[str], *, src: Lang, tgt: Lang) -> list[str]:
        import torch

        out: list[str] = [""] * len(texts)
        for idx in _batches(texts, self.options.batch_size):
            inputs, extra = self._prepare([texts[i] for i in idx], src, tgt)
            enc = self.tokenizer(inputs, return_tensors="pt", padding=True, truncation=True, max_length=512).to(self.model.device)
            with torch.inference_mode():
                ids = self.model.generate(
                    **enc, num_beams=self.options.num_beams, max_new_tokens=self.options.max_new_tokens,
                    no_repeat_ngram_size=self.options.no_repeat_ngram_size, do_sample=False, **extra,
                )
            self.generate_calls += 1
            self.texts_translated += len(idx)
            for i, text in zip(idx, self.tokenizer.batch_decode(ids.cpu(), skip_special_tokens=True), strict=True):
                out[i] = text.strip()
        return out


def translation_prompt(text: str, *, src: Lang, tgt: Lang) -> list[dict[str, str]]:
    return [
        {
            "role": "user",
            "content": f"Translate the following {LANG_NAMES[src]} text into {LANG_NAMES[tgt]}. "
            f"Reply with the translation only.\n\n{text}",
        }
    ]


class CausalLMTranslator:
    """An instruction-tuned causal LM asked, through its chat template, to translate (greedy)."""

    def __init__(self, model, tokenizer, *, fingerprint: str, options: DecodeOptions = DecodeOptions()) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise TranslatorLoadError(
                "this causal LM has no chat template, so it cannot be prompted to translate; "
                "use an instruction-tuned model or a seq2seq translation model"
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"  # generation continues from the right end of every row
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.options = options
        self.fingerprint = fingerprint
        self.texts_translated = 0
        self.generate_calls = 0

    def translate(self, texts: Sequence[str], *, src: Lang, tgt: Lang) -> list[str]:
        import torch

        out: list[str] = [""] * len(texts)
        for idx in _batches(texts, self.options.batch_size):
            prompts = [
                self.tokenizer.apply_chat_template(
                    translation_prompt(texts[i], src=src, tgt=tgt), tokenize=False, add_generation_prompt=True
                )
                for i in idx
            ]
            enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
            with torch.inference_mode():
                ids = self.model.generate(
                    **enc, num_beams=self.options.num_beams, max_new_tokens=self.options.max_new_tokens,
                    no_repeat_ngram_size=self.options.no_repeat_ngram_size, do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            self.generate_calls += 1
            self.texts_translated += len(idx)
            new = ids[:, enc["input_ids"].shape[1] :].cpu()
            for i, text in zip(idx, self.tokenizer.batch_decode(new, skip_special_tokens=True), strict=True):
                # models often add a second paragraph of commentary: the translation is the first line
                lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
                out[i] = lines[0] if lines else ""
        return out


class TranslationCache:
    """Persistent (fingerprint, direction, source) -> translation store in one SQLite file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS translations (fingerprint TEXT, direction TEXT, source TEXT, "
            "target TEXT, PRIMARY KEY (fingerprint, direction, source))"
        )
        self._db.commit()

    def get_many(self, fingerprint: str, direction: str, texts: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        unique = list(dict.fromkeys(texts))
        for i in range(0, len(unique), 500):  # SQLite caps the number of bound parameters
            chunk = unique[i : i + 500]
            rows = self._db.execute(
                f"SELECT source, target FROM translations WHERE fingerprint = ? AND direction = ? "
                f"AND source IN ({','.join('?' * len(chunk))})",
                (fingerprint, direction, *chunk),
            )
            found.update(rows.fetchall())
        return found

    def put_many(self, fingerprint: str, direction: str, pairs: dict[str, str]) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO translations VALUES (?, ?, ?, ?)",
            [(fingerprint, direction, s, t) for s, t in pairs.items()],
        )
        self._db.commit()

    def close(self) -> None:
        self._db.close()


class CachedTranslator:
    """A translator with a cache in front: only texts the cache lacks reach the model."""

    def __init__(self, inner: Translator, cache: TranslationCache) -> None:
        self.inner = inner
        self.cache = cache
        self.fingerprint = inner.fingerprint
        self.hits = 0
        self.misses = 0

    @property
    def texts_translated(self) -> int:
        return self.inner.texts_translated

    def translate(self, texts: Sequence[str], *, src: Lang, tgt: Lang) -> list[str]:
        direction = f"{src}-{tgt}"
        known = self.cache.get_many(self.fingerprint, direction, texts)
        todo = [t for t in dict.fromkeys(texts) if t not in known]
        self.hits += len(texts) - sum(1 for t in texts if t in todo)
        self.misses += len(todo)
        if todo:
            fresh = dict(zip(todo, self.inner.translate(todo, src=src, tgt=tgt), strict=True))
            self.cache.put_many(self.fingerprint, direction, fresh)
            known.update(fresh)
        return [known[t] for t in texts]


def _resolve(source: str | Path) -> tuple[Path | None, str]:
    path = Path(source)
    if path.is_dir():
        return path, str(path)
    if path.exists():
        raise TranslatorLoadError(f"{source}: a file, not a model folder; point at the folder holding config.json")
    if str(source).startswith((".", "/", "~")) or str(source).count("/") > 1:
        raise TranslatorLoadError(
            f"{source}: translator folder not found. Build the default with `dvc repro translator`, or point "
            "at a folder holding config.json, weights and tokenizer files."
        )
    return None, str(source)


def load_translator(
    source: str | Path,
    *,
    kind: Literal["auto", "seq2seq", "causal_lm"] = "auto",
    options: DecodeOptions = DecodeOptions(),
    trust_remote_code: bool = False,
) -> Seq2SeqTranslator | CausalLMTranslator:
    """Load a translator from a local model folder or a hub id (`kind` auto: encoder-decoder -> seq2seq)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    folder, name = _resolve(source)
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        if kind == "auto":
            kind = "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal_lm"
        auto = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
        model = auto.from_pretrained(name, trust_remote_code=trust_remote_code)
        from chatforge.runtime.device import place

        place(model)  # the accelerator when there is one
    except (OSError, ValueError) as exc:
        where = "local folder" if folder else "hub id (needs network access; HF_HUB_OFFLINE must be unset)"
        raise TranslatorLoadError(
            f"cannot load translator {name!r} as a {where}: {exc}. Set augment.back_translation.translator to a "
            "folder with config.json, model weights and tokenizer files, or null to use the one the "
            "`translator` stage builds."
        ) from None
    if folder is None:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(name))
    extra = json.dumps({"kind": kind, **options.__dict__, "max_len": 512}, sort_keys=True)
    fingerprint = fingerprint_folder(folder, extra=extra)
    cls = Seq2SeqTranslator if kind == "seq2seq" else CausalLMTranslator
    log.info("translator %s (%s, fingerprint %s)", name, kind, fingerprint)
    return cls(model, tokenizer, fingerprint=fingerprint, options=options)


def back_translator(bt: BackTranslationParams, *, built: Path, cache: Path) -> Translator | None:
    """The translator augment's back-translation uses (None when it is off or its ratio is 0):
    augment.back_translation.translator when set, else the folder the translator stage `built`;
    behind a content-hash cache in `cache`/translations.sqlite when bt.cache. Raises
    TranslatorLoadError saying what to configure."""
    if not (bt.enabled and bt.ratio > 0):
        return None
    options = DecodeOptions(batch_size=bt.batch_size, num_beams=bt.num_beams, max_new_tokens=bt.max_new_tokens,
                            no_repeat_ngram_size=bt.no_repeat_ngram_size)
    translator: Translator = load_translator(bt.translator or built, kind=bt.kind, options=options,
                                             trust_remote_code=bt.trust_remote_code)
    if bt.cache:
        translator = CachedTranslator(translator, TranslationCache(cache / "translations.sqlite"))
    return translator
