"""Entity replacement from gazetteers: find cities, products, names, dates... and swap them consistently.

Matching is one Aho-Corasick pass (pyahocorasick) per language over every gazetteer entry, keeping the
leftmost-longest matches that sit on word boundaries: for Chinese the boundaries jieba segmentation
gives (so 北京 inside 北京大学 is not an entity unless `match_inside_words`), for English the ends of
words (so "York" inside "Yorkshire" or "New York" is not matched on its own).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path


class GazetteerError(ValueError):
    """A gazetteer that cannot be used; the message names the file and what to fix."""


@dataclass(frozen=True)
class Match:
    start: int
    end: int
    text: str
    kind: str
    key: str  # the normalised surface (lower-cased English unless case-sensitive): one entity, one key


def read_gazetteers(folder: Path | str, *, langs: Iterable[str], kinds: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """`<folder>/<lang>/<kind>.txt`, one entity per line (# comments, blank lines ignored) -> {lang: {kind: entities}}."""
    folder = Path(folder)
    out: dict[str, dict[str, list[str]]] = {}
    for lang in langs:
        out[lang] = {}
        for kind in kinds:
            path = folder / lang / f"{kind}.txt"
            if not path.is_file():
                raise GazetteerError(
                    f"{path}: gazetteer file not found for kind {kind!r} ({lang}). Create it with one entity per "
                    f"line, or remove {kind!r} from augment.entity_swap.kinds."
                )
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
            entities = list(dict.fromkeys(ln for ln in lines if ln and not ln.startswith("#")))
            if len(entities) < 2:
                raise GazetteerError(
                    f"{path}: gazetteer has {len(entities)} entit{'y' if len(entities) == 1 else 'ies'}; at least 2 "
                    "are needed so an entity can be replaced by a different one. Add entries, one per line."
                )
            out[lang][kind] = entities
    return out


class EntityMatcher:
    """Longest, boundary-respecting gazetteer matches in text of one language."""

    def __init__(self, gazetteer: dict[str, list[str]], *, lang: str, match_inside_words: bool = False,
                 case_sensitive: bool = False) -> None:
        import ahocorasick

        self.lang = lang
        self.gazetteer = gazetteer
        self.match_inside_words = match_inside_words
        self.fold = lang == "en" and not case_sensitive
        self.automaton = ahocorasick.Automaton()
        for kind, entities in gazetteer.items():
            for entity in entities:
                key = self._norm(entity)
                # an entry listed under two kinds keeps the first: one surface, one kind
                if key not in self.automaton:
                    self.automaton.add_word(key, (key, kind))
        self.automaton.make_automaton()

    def _norm(self, text: str) -> str:
        # folding must keep offsets: fall back to exact matching when lower() changes the length
        if self.fold:
            low = text.lower()
            return low if len(low) == len(text) else text
        return text

    @cached_property
    def _jieba(self):
        import jieba

        tok = jieba.Tokenizer()
        tok.initialize()
        # entities become dictionary words, so jieba keeps e.g. a rare person name whole; longer common
        # words that contain them (北京大学) still win because they are in jieba's own dictionary too
        for entities in self.gazetteer.values():
            for entity in entities:
                tok.add_word(entity)
        return tok

    def _boundaries(self, text: str) -> set[int]:
        if self.lang == "zh":
            cuts, pos = {0}, 0
            for word in self._jieba.lcut(text, HMM=True):
                pos += len(word)
                cuts.add(pos)
            return cuts
        return set()

    def find(self, text: str) -> list[Match]:
        haystack = self._norm(text)
        cuts = self._boundaries(text) if self.lang == "zh" and not self.match_inside_words else None
        candidates: list[Match] = []
        for end_idx, (key, kind) in self.automaton.iter(haystack):
            start, end = end_idx - len(key) + 1, end_idx + 1
            if not self.match_inside_words:
                if cuts is not None and (start not in cuts or end not in cuts):
                    continue
                if cuts is None and self.lang == "en" and not _on_word_edges(text, start, end):
                    continue
            candidates.append(Match(start, end, text[start:end], kind, key))
        # leftmost-longest, non-overlapping
        candidates.sort(key=lambda m: (m.start, -(m.end - m.start)))
        chosen: list[Match] = []
        for m in candidates:
            if not chosen or m.start >= chosen[-1].end:
                chosen.append(m)
        return chosen


def _on_word_edges(text: str, start: int, end: int) -> bool:
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    return not (before.isalnum() or before == "_") and not (after.isalnum() or after == "_")


def replace_matches(text: str, matches: Sequence[Match], mapping: dict[str, str]) -> str:
    parts, pos = [], 0
    for m in matches:
        if m.key in mapping:
            parts += [text[pos : m.start], mapping[m.key]]
            pos = m.end
    return "".join(parts) + text[pos:]


def plan_swaps(
    found: Sequence[Match], gazetteer: dict[str, list[str]], *, variants: int, rng: random.Random, fold: bool
) -> list[dict[str, str]]:
    """Up to `variants` distinct surface -> replacement maps for the entities of one conversation.

    One map covers every turn, so an entity asked about in the question is the same new entity in the
    answer; two different entities never get the same replacement.
    """
    surfaces: dict[str, Match] = {}
    for m in found:
        surfaces.setdefault(m.key, m)
    plans: list[dict[str, str]] = []
    seen: set[tuple[tuple[str, str], ...]] = set()
    for _ in range(variants * 4):  # a few extra draws in case two come out the same
        if len(plans) == variants:
            break
        mapping: dict[str, str] = {}
        used: set[str] = set()
        taken = set(surfaces)
        for surface, m in sorted(surfaces.items()):
            options = [e for e in gazetteer[m.kind] if (e.lower() if fold else e) not in taken | used]
            if options:
                choice = rng.choice(options)
                mapping[surface] = choice
                used.add(choice.lower() if fold else choice)
        key = tuple(sorted(mapping.items()))
        if mapping and key not in seen:
            seen.add(key)
            plans.append(mapping)
    return plans
