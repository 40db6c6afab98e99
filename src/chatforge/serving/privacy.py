"""PII masking for what the service stores, with the clean stage's own rules.

The conversation store and the feedback it collects become training data (`chatforge feedback
export` -> ingest -> clean), so a message is masked before it is stored exactly as the clean stage
would mask it: emails -> <EMAIL>, 18-digit Chinese ID numbers with a valid check character and
Taiwan / Hong Kong IDs -> <ID>, Luhn-valid bank cards -> <CARD>, mainland, Taiwan and Hong Kong
phones -> <PHONE>, full-width forms included. It is `chatforge.data.clean.mask_pii_content`, the
clean stage's own function; nothing is re-implemented here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Sequence

import polars as pl

from chatforge.data.clean import mask_pii_content
from chatforge.params import ServePrivacy

PII_KINDS = ("card", "email", "id_number", "phone")


def _checked_kinds(kinds: Collection[str]) -> frozenset[str]:
    unknown = sorted(k for k in kinds if k not in PII_KINDS)
    if unknown:
        shown = ", ".join(repr(k[:40]) for k in unknown[:5])
        raise ValueError(
            f"unknown PII kind(s) {shown}; choose from {', '.join(PII_KINDS)} "
            "(serve.privacy.pii_kinds in params.yaml)."
        )
    return frozenset(kinds)


def mask_pii_texts(texts: Sequence[str], kinds: Collection[str]) -> list[str]:
    """Mask the PII `kinds` in every text; one polars pass per rule over all of them.

    texts: n strings; kinds: any subset of PII_KINDS (empty: texts returned unchanged).
    Returns n strings, each equal to what the clean stage's PII rules produce for that rule set.
    Raises ValueError naming an unknown kind.
    """
    wanted = _checked_kinds(kinds)
    if not texts or not wanted:
        return list(texts)
    content, _ = mask_pii_content(pl.Series("content", list(texts), dtype=pl.String), wanted)
    return content.to_list()


def mask_pii(text: str, kinds: Collection[str]) -> str:
    """`text` with the PII `kinds` (subset of phone, email, id_number, card) masked as clean masks them.

    Example: mask_pii("电话13812345678", ["phone"]) == "电话<PHONE>". Raises ValueError on an unknown kind.
    """
    return mask_pii_texts([text], kinds)[0]


def pii_masker(privacy: ServePrivacy) -> Callable[[str], str] | None:
    """The `mask` callable the store takes for `serve.privacy`; None when masking is switched off."""
    if not privacy.mask_pii:
        return None
    return functools.partial(mask_pii, kinds=_checked_kinds(privacy.pii_kinds))


__all__ = ["PII_KINDS", "mask_pii", "mask_pii_texts", "pii_masker"]
