"""Augment the (balanced) train split: back-translation, entity swaps and active/passive rewrites.

Every added conversation is a copy of one original conversation with some turns rewritten; its id is
derived from the original (`<id>#bt1`, `<id>#es2`, `<id>#vs1`), its rows carry `origin_id` (the original
id) and `method`. Only conversations the input holds as originals are augmented (balance's oversampled
copies would only give duplicate variants), and the input is the train split, so nothing from val/test
can enter training this way.

Which conversations get a variant is decided by a seeded hash of (seed, method, id): raising a ratio
extends the same list, so with the translation cache a rerun only translates the new conversations.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from chatforge.data.entities import EntityMatcher, plan_swaps, read_gazetteers, replace_matches
from chatforge.data.lang import decide_lang, script_counts
from chatforge.data.schema import conform, sort_turns
from chatforge.data.voice import rewrite_voice
from chatforge.io import progress
from chatforge.params import AugmentParams

log = logging.getLogger(__name__)

METHODS = ("back_translation", "entity_swap", "voice_swap")
_SUFFIX = {"back_translation": "bt", "entity_swap": "es", "voice_swap": "vs"}
_SPACE_PUNCT = re.compile(r"[\s\W_]+", re.UNICODE)
BT_FILTERS = ("empty", "identical", "wrong_language", "length_ratio", "numbers", "entities", "low_similarity")
_DIGITS = re.compile(r"\d+|<[A-Z_]+>")  # digit runs and PII mask tags such as <PHONE>
TURN_PROBLEMS = ("empty", "too_long", "symbols_only", "mixed_language")
_BT_CHUNK = 64  # conversations translated per round; small enough not to overshoot the cap by much


@dataclass
class AugmentResult:
    turns: pl.DataFrame  # the input rows plus every added row, canonical order
    metrics: dict[str, int | float]
    examples: dict[str, list[dict[str, str | int]]] = field(default_factory=dict)


def detect_lang(text: str) -> str | None:
    """'zh', 'en', 'mixed' or None (no letters); for the mix, two CJK characters weigh about one English word."""
    cjk, words = script_counts(text)
    if cjk == 0 and words == 0:
        return None
    if cjk >= 2 and words >= 2:
        a, b = cjk / 2, float(words)
        if min(a, b) / max(a, b) >= 0.3:
            return "mixed"
    return decide_lang(cjk, words)  # the corpus-wide rule: one brand name in a Chinese sentence stays Chinese


def turn_problem(text: str | None, *, max_chars: int) -> str | None:
    """Why a turn must not be rewritten (empty, too_long, symbols_only, mixed_language), or None."""
    if text is None or not text.strip():
        return "empty"
    if len(text) > max_chars:
        return "too_long"
    lang = detect_lang(text)
    if lang is None:
        return "symbols_only"
    return "mixed_language" if lang == "mixed" else None


def _order(ids: list[str], *, seed: int, method: str) -> list[str]:
    key = {i: hashlib.sha256(f"{seed}:{method}:{i}".encode()).hexdigest() for i in ids}
    return sorted(ids, key=lambda i: (key[i], i))


@dataclass
class _Conversation:
    cid: str
    rows: list[dict]  # turn rows in order
    lang: str  # the language most of its turns are in


class _Budget:
    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def fits(self, rows: int) -> bool:
        return self.used + rows <= self.limit


def _variant_rows(conv: _Conversation, texts: dict[int, str], *, method: str, n: int) -> list[dict]:
    cid = f"{conv.cid}#{_SUFFIX[method]}{n}"
    return [
        {**r, "conversation_id": cid, "content": texts.get(r["turn"], r["content"]), "origin_id": conv.cid,
         "method": method}
        for r in conv.rows
    ]


def read_augment_gazetteers(folder: Path, params: AugmentParams) -> dict[str, dict[str, list[str]]] | None:
    """The gazetteers (lang -> kind -> entries) augment needs from `folder` (<lang>/<kind>.txt, the
    kinds of augment.entity_swap.kinds): for entity swaps, or for back-translation that keeps
    entities; None when neither is on. Raises GazetteerError naming the file and line."""
    bt, es = params.back_translation, params.entity_swap
    if not (es.enabled or (bt.enabled and bt.keep_entities)):
        return None
    return read_gazetteers(folder, langs=("zh", "en"), kinds=es.kinds)


def augment_turns(
    turns: pl.DataFrame,
    *,
    params: AugmentParams,
    translator=None,
    gazetteers: dict[str, dict[str, list[str]]] | None = None,
) -> AugmentResult:
    """Add augmented conversations to `turns` within the caps of `params` (see module docstring)."""
    turns = sort_turns(conform(turns))
    rows_in = turns.height
    metrics: Counter[str] = Counter({"rows_in": rows_in, "conversations_in": turns["conversation_id"].n_unique()})
    # every counter present even at zero, so `dvc metrics diff` always lines the same keys up
    for key in [*(f"rejected_back_translation_{r}" for r in BT_FILTERS), *(f"skipped_turns_{p}" for p in TURN_PROBLEMS),
                *(f"{k}_{m}" for m in METHODS for k in ("rows_added", "conversations_added"))]:
        metrics[key] += 0
    originals = turns.filter(pl.col("method").fill_null("original") == "original")
    convs: dict[str, _Conversation] = {}
    bad: dict[tuple[str, int], str] = {}
    for cid, group in originals.group_by("conversation_id", maintain_order=True):
        rows = group.to_dicts()
        for r in rows:
            problem = turn_problem(r["content"], max_chars=params.max_turn_chars)
            if problem:
                bad[(cid[0], r["turn"])] = problem
                metrics[f"skipped_turns_{problem}"] += 1
            if r["lang"] not in ("zh", "en"):
                r["lang"] = detect_lang(r["content"] or "") if detect_lang(r["content"] or "") in ("zh", "en") else "en"
        langs = Counter(r["lang"] for r in rows)
        convs[cid[0]] = _Conversation(cid[0], rows, langs.most_common(1)[0][0])

    overall = _Budget(int(params.max_ratio * rows_in))
    added: list[dict] = []
    examples: dict[str, list[dict[str, str | int]]] = {m: [] for m in METHODS}

    def accept(method: str, rows: list[dict], changes: list[dict], budget: _Budget) -> bool:
        if not (budget.fits(len(rows)) and overall.fits(len(rows))):
            return False
        budget.used += len(rows)
        overall.used += len(rows)
        added.extend(rows)
        metrics[f"rows_added_{method}"] += len(rows)
        metrics[f"conversations_added_{method}"] += 1
        room = params.examples_per_method - len(examples[method])
        examples[method].extend(changes[: max(room, 0)])
        return True

    ids = list(convs)
    for method in METHODS:
        cfg = getattr(params, method)
        if not cfg.enabled or cfg.ratio == 0:
            continue
        budget = _Budget(int(cfg.ratio * rows_in))
        order = _order(ids, seed=params.seed, method=method)
        if method == "back_translation":
            if translator is None:
                raise ValueError("back_translation is enabled but no translator was given; load one or disable it")
            matchers = _matchers(gazetteers, params.entity_swap) if gazetteers and cfg.keep_entities else {}
            _back_translate(order, convs, bad, cfg, translator, metrics, accept, budget, matchers)
        elif method == "entity_swap":
            if gazetteers is None:
                raise ValueError("entity_swap is enabled but no gazetteers were given; read them or disable it")
            _swap_entities(order, convs, bad, cfg, gazetteers, params.seed, accept, budget)
        else:
            _swap_voice(order, convs, bad, cfg, accept, budget)

    result = sort_turns(conform(pl.concat([turns, pl.DataFrame(added, schema=turns.schema)]) if added else turns))
    metrics["rows_added"] = len(added)
    metrics["rows_out"] = result.height
    metrics["augmented_ratio"] = round(len(added) / rows_in, 4) if rows_in else 0.0
    return AugmentResult(result, dict(sorted(metrics.items())), examples)


def _eligible(conv: _Conversation, bad: dict, roles: list[str], *, allow: tuple[str, ...] = ()) -> list[dict]:
    return [
        r for r in conv.rows
        if r["role"] in roles and bad.get((conv.cid, r["turn"]), None) in (None, *allow)
    ]


def _matchers(gazetteers: dict[str, dict[str, list[str]]], cfg) -> dict[str, EntityMatcher]:
    return {
        lang: EntityMatcher(g, lang=lang, match_inside_words=cfg.match_inside_words, case_sensitive=cfg.case_sensitive_en)
        for lang, g in gazetteers.items()
    }


def _back_translate(order, convs, bad, cfg, translator, metrics, accept, budget, matchers) -> None:
    rows_per_conv = max(1.0, sum(len(c.rows) for c in convs.values()) / max(len(convs), 1))
    start = 0
    while start < len(order) and budget.fits(1):
        # translate about as many conversations as the remaining budget can take (at least a few, since
        # some fail the filters): a small ratio then costs little, and raising it later reuses the cache
        size = min(_BT_CHUNK, max(4, math.ceil((budget.limit - budget.used) / rows_per_conv)))
        chunk = [convs[c] for c in order[start : start + size]]
        start += size
        log.info("back-translation: %d/%d conversations considered", min(start, len(order)), len(order))
        todo = [(c, r) for c in chunk for r in _eligible(c, bad, cfg.roles) if r["lang"] in cfg.pivot]
        results: dict[tuple[str, int], str] = {}
        for lang, pivot in sorted(cfg.pivot.items()):
            items = [(c, r) for c, r in todo if r["lang"] == lang]
            if not items:
                continue
            sources = [r["content"] for _, r in items]
            there = translator.translate(sources, src=lang, tgt=pivot)
            # an empty pivot is already a failure: no need to translate it back
            usable = [i for i, t in enumerate(there) if t.strip()]
            back_usable = translator.translate([there[i] for i in usable], src=pivot, tgt=lang) if usable else []
            back = [""] * len(there)
            for i, text in zip(usable, back_usable, strict=True):
                back[i] = text
            for (c, r), mid, out in zip(items, there, back, strict=True):
                reason = _bt_problem(r["content"], mid, out, lang=lang, pivot=pivot, cfg=cfg,
                                     matcher=matchers.get(lang))
                if reason:
                    metrics[f"rejected_back_translation_{reason}"] += 1
                else:
                    results[(c.cid, r["turn"])] = out
        for conv in chunk:
            texts = {t: out for (cid, t), out in results.items() if cid == conv.cid}
            if not texts:
                continue
            changes = [{"conversation_id": conv.cid, "turn": t, "before": next(r["content"] for r in conv.rows
                        if r["turn"] == t), "after": out} for t, out in sorted(texts.items())]
            rows = _variant_rows(conv, texts, method="back_translation", n=1)
            if not accept("back_translation", rows, changes, budget) and not budget.fits(1):
                break


def _bt_problem(source: str, pivot_text: str, out: str, *, lang: str, pivot: str, cfg,
                matcher: EntityMatcher | None = None) -> str | None:
    if not pivot_text.strip() or not out.strip():
        return "empty"
    if _fold(out) == _fold(source):
        return "identical"
    if detect_lang(pivot_text) != pivot or detect_lang(out) != lang:
        return "wrong_language"
    ratio = len(out) / max(len(source), 1)
    if not cfg.min_length_ratio <= ratio <= cfg.max_length_ratio:
        return "length_ratio"
    # a changed order number or price is a wrong fact, not a paraphrase
    if cfg.keep_numbers and sorted(_DIGITS.findall(out)) != sorted(_DIGITS.findall(source)):
        return "numbers"
    # a weak translator swaps rare names for frequent ones (东京 -> 北京): that is entity_swap's job, done right
    if matcher is not None and sorted(m.key for m in matcher.find(out)) != sorted(m.key for m in matcher.find(source)):
        return "entities"
    if cfg.min_similarity > 0:
        import sacrebleu

        if sacrebleu.sentence_chrf(out, [source]).score < cfg.min_similarity:
            return "low_similarity"
    return None


def _fold(text: str) -> str:
    return _SPACE_PUNCT.sub("", text).casefold()


def _swap_entities(order, convs, bad, cfg, gazetteers, seed, accept, budget) -> None:
    matchers = _matchers(gazetteers, cfg)
    for cid in progress(order, total=len(order), desc="entity swap"):
        if not budget.fits(1):
            break
        conv = convs[cid]
        matcher = matchers.get(conv.lang)
        if matcher is None:
            continue
        # mixed-language turns keep their entities too: a product name in Latin letters is still one entity
        turns = _eligible(conv, bad, ["system", "user", "assistant"], allow=("mixed_language",))
        found = {r["turn"]: matcher.find(r["content"]) for r in turns}
        all_found = [m for ms in found.values() for m in ms]
        if not all_found:
            continue
        rng = random.Random(f"{seed}:entity_swap:{cid}")
        plans = plan_swaps(all_found, matcher.gazetteer, variants=cfg.variants_per_conversation, rng=rng,
                           fold=matcher.fold)
        for n, mapping in enumerate(plans, 1):
            texts = {r["turn"]: replace_matches(r["content"], found[r["turn"]], mapping) for r in turns if found[r["turn"]]}
            changes = [{"conversation_id": cid, "turn": t, "before": r["content"], "after": texts[t]}
                       for r in turns if (t := r["turn"]) in texts]
            accept("entity_swap", _variant_rows(conv, texts, method="entity_swap", n=n), changes, budget)


def _swap_voice(order, convs, bad, cfg, accept: Callable, budget) -> None:
    for cid in progress(order, total=len(order), desc="voice swap"):
        if not budget.fits(1):
            break
        conv = convs[cid]
        texts: dict[int, str] = {}
        for r in _eligible(conv, bad, cfg.roles):
            lang = detect_lang(r["content"])
            new = rewrite_voice(r["content"], lang=lang) if lang in ("zh", "en") else None
            if new is not None:
                texts[r["turn"]] = new
        if texts:
            changes = [{"conversation_id": cid, "turn": r["turn"], "before": r["content"], "after": texts[r["turn"]]}
                       for r in conv.rows if r["turn"] in texts]
            accept("voice_swap", _variant_rows(conv, texts, method="voice_swap", n=1), changes, budget)
