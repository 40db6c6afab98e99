"""Active <-> passive rewrites: Chinese 把 <-> 被 and simple English clauses, only where the rule is sure.

A rewrite that turns a good sentence into a bad one teaches the model bad language, so each rule accepts
only a narrow, well-understood shape and leaves everything else exactly as it was:

- Chinese (jieba part-of-speech tags): `[time] A [adv] 把 B V...` <-> `[time] B [adv] 被 A V...`, where
  A and B are short noun phrases, the verb phrase shows a result (了, a complement) and the verb is not
  one of perception or feeling (把 needs a verb that does something to B).
- English: `S V-ed O.` <-> `O was/were V-en by S.`, `S will V O.` <-> `O will be V-en by S.` and
  `S has/have V-en O.` <-> `O has/have been V-en by S.`, for verbs in a table (irregular forms
  included) and subject/object noun phrases of a few words.
"""

from __future__ import annotations

import re
from functools import cache

# ----------------------------------------------------------------------------------------- Chinese
_ZH_ADVERBS = {"已经", "刚", "刚刚", "又", "也", "都", "终于", "不小心", "早就", "已", "没", "没有"}
_ZH_NOUNISH = ("n", "r", "m", "q", "uj", "a", "b", "f")  # tag prefixes allowed inside a noun phrase
_ZH_NOT_DISPOSAL = {"看见", "看到", "听见", "听到", "发现", "知道", "认出", "喜欢", "爱", "感动", "吸引", "认为",
                    "选为", "称为", "叫做", "骗", "打", "批评", "表扬"}
_ZH_GENERIC_AGENTS = {"人", "别人", "有人", "他人"}  # "被人偷了" has no real agent to put in front of 把
_ZH_RESULT = {"了", "完", "好", "掉", "走", "坏", "碎", "丢", "上", "下", "开", "干净", "到", "光", "错"}
_ZH_CLAUSE = re.compile(r"([^，,。！!？?；;]+)([，,。！!？?；;]*)")


@cache
def _posseg():
    import jieba.posseg

    return jieba.posseg.POSTokenizer(_jieba_tokenizer())


@cache
def _jieba_tokenizer():
    import jieba

    tok = jieba.Tokenizer()
    tok.initialize()
    # words jieba's dictionary splits badly around 把/被; fixed so the tags below come out right
    for word in ("不小心", "快递员", "小偷"):
        tok.add_word(word)
    return tok


def _noun_phrase(tokens: list[tuple[str, str]], *, max_len: int = 3) -> bool:
    return (
        0 < len(tokens) <= max_len
        and all(flag.startswith(_ZH_NOUNISH) for _, flag in tokens)
        and tokens[-1][1].startswith(("n", "r"))
    )


def _verb_phrase(tokens: list[tuple[str, str]]) -> bool:
    if not tokens or not tokens[0][1].startswith("v") or tokens[0][0] in _ZH_NOT_DISPOSAL:
        return False
    if any(flag.startswith("p") or word in ("把", "被") for word, flag in tokens):
        return False
    text = "".join(w for w, _ in tokens)
    return any(r in text[1:] or (len(tokens) > 1 and tokens[1][0] == r) for r in _ZH_RESULT)


def _rewrite_zh_clause(clause: str) -> str | None:
    tokens = [(w.word, w.flag) for w in _posseg().lcut(clause)]
    markers = [i for i, (w, _) in enumerate(tokens) if w in ("把", "被")]
    if len(markers) != 1 or any(w in ("把", "被") and i not in markers for i, (w, _) in enumerate(tokens)):
        return None
    k = markers[0]
    head = tokens[:k]
    lead = [head.pop(0)] if head and head[0][1] == "t" else []  # a leading time word stays in front
    adverbs: list[tuple[str, str]] = []
    while head and head[-1][0] in _ZH_ADVERBS:
        adverbs.insert(0, head.pop())
    if not _noun_phrase(head):
        return None
    rest = tokens[k + 1 :]
    split = next((i for i, (_, flag) in enumerate(rest) if flag.startswith("v")), None)
    if split is None or not _noun_phrase(rest[:split]) or not _verb_phrase(rest[split:]):
        return None
    first, second, verb = head, rest[:split], rest[split:]
    if tokens[k][0] == "被" and "".join(w for w, _ in second) in _ZH_GENERIC_AGENTS:
        return None
    marker = "被" if tokens[k][0] == "把" else "把"
    out = lead + second + adverbs + [(marker, "p")] + first + verb
    return "".join(w for w, _ in out)


def rewrite_voice_zh(text: str) -> str | None:
    """The text with each confident 把/被 clause flipped, or None when no clause qualifies."""
    changed = False
    parts: list[str] = []
    for m in _ZH_CLAUSE.finditer(text):
        clause, punct = m.group(1), m.group(2)
        new = _rewrite_zh_clause(clause) if ("把" in clause or "被" in clause) else None
        changed |= new is not None and new != clause
        parts.append((new or clause) + punct)
    result = "".join(parts)
    return result if changed and len(result) == len(text) else None


# ----------------------------------------------------------------------------------------- English
# base: (past, past participle). Only verbs listed here are rewritten.
_VERBS: dict[str, tuple[str, str]] = {
    "book": ("booked", "booked"), "order": ("ordered", "ordered"), "cancel": ("cancelled", "cancelled"),
    "deliver": ("delivered", "delivered"), "check": ("checked", "checked"), "fix": ("fixed", "fixed"),
    "change": ("changed", "changed"), "confirm": ("confirmed", "confirmed"), "cook": ("cooked", "cooked"),
    "clean": ("cleaned", "cleaned"), "open": ("opened", "opened"), "close": ("closed", "closed"),
    "finish": ("finished", "finished"), "repair": ("repaired", "repaired"), "review": ("reviewed", "reviewed"),
    "approve": ("approved", "approved"), "reject": ("rejected", "rejected"), "update": ("updated", "updated"),
    "paint": ("painted", "painted"), "watch": ("watched", "watched"), "call": ("called", "called"),
    "answer": ("answered", "answered"), "ship": ("shipped", "shipped"), "return": ("returned", "returned"),
    "refund": ("refunded", "refunded"), "reserve": ("reserved", "reserved"), "use": ("used", "used"),
    "sign": ("signed", "signed"), "delete": ("deleted", "deleted"), "plan": ("planned", "planned"),
    "buy": ("bought", "bought"), "send": ("sent", "sent"), "take": ("took", "taken"), "make": ("made", "made"),
    "write": ("wrote", "written"), "give": ("gave", "given"), "find": ("found", "found"),
    "break": ("broke", "broken"), "sell": ("sold", "sold"), "pay": ("paid", "paid"), "lose": ("lost", "lost"),
    "eat": ("ate", "eaten"), "drink": ("drank", "drunk"), "see": ("saw", "seen"), "steal": ("stole", "stolen"),
    "build": ("built", "built"), "choose": ("chose", "chosen"), "drive": ("drove", "driven"),
    "forget": ("forgot", "forgotten"), "hide": ("hid", "hidden"), "keep": ("kept", "kept"),
    "read": ("read", "read"), "sing": ("sang", "sung"), "spend": ("spent", "spent"), "teach": ("taught", "taught"),
    "throw": ("threw", "thrown"), "win": ("won", "won"), "catch": ("caught", "caught"),
    "bring": ("brought", "brought"), "hold": ("held", "held"), "cut": ("cut", "cut"), "tell": ("told", "told"),
    "wear": ("wore", "worn"), "draw": ("drew", "drawn"), "feed": ("fed", "fed"), "lend": ("lent", "lent"),
    "grow": ("grew", "grown"), "shake": ("shook", "shaken"), "wake": ("woke", "woken"),
}
_PAST = {past: base for base, (past, _) in _VERBS.items()}
_PARTICIPLE = {pp: base for base, (_, pp) in _VERBS.items()}

_SUBJ_TO_OBJ = {"I": "me", "he": "him", "she": "her", "we": "us", "they": "them", "you": "you", "it": "it"}
_OBJ_TO_SUBJ = {v: k for k, v in _SUBJ_TO_OBJ.items()}
_DETS = ("the", "a", "an", "my", "your", "his", "her", "our", "their", "this", "that", "these", "those")
# a pronoun, a determiner phrase of up to four words, or a capitalised name of one or two words
_NP = (rf"(?:(?:{'|'.join(_DETS)}) (?:[a-z]+ ){{0,2}}[a-z]+|I|you|he|she|it|we|they|me|him|her|us|them"
       r"|[A-Z][a-z]+(?: [A-Z][a-z]+)?)")
_END = r"(?P<end>[.!]?)"
# case-sensitive on purpose: a capital marks a name; a sentence-initial capital is undone first
_ACTIVE = [
    ("past", re.compile(rf"^(?P<s>{_NP}) (?P<v>[a-z]+) (?P<o>{_NP}){_END}$")),
    ("will", re.compile(rf"^(?P<s>{_NP}) will (?P<v>[a-z]+) (?P<o>{_NP}){_END}$")),
    ("perfect", re.compile(rf"^(?P<s>{_NP}) (?:has|have) (?P<v>[a-z]+) (?P<o>{_NP}){_END}$")),
]
_PASSIVE = [
    ("past", re.compile(rf"^(?P<o>{_NP}) (?:was|were) (?P<v>[a-z]+) by (?P<s>{_NP}){_END}$")),
    ("will", re.compile(rf"^(?P<o>{_NP}) will be (?P<v>[a-z]+) by (?P<s>{_NP}){_END}$")),
    ("perfect", re.compile(rf"^(?P<o>{_NP}) (?:has|have) been (?P<v>[a-z]+) by (?P<s>{_NP}){_END}$")),
]
_SENTENCE = re.compile(r"[^.!?]+[.!?]?\s*")
_INITIAL = {w.capitalize() for w in (*_DETS, "he", "she", "it", "we", "they", "you", "him", "me", "us", "them")}
# words that end a noun phrase: a phrase containing one was split in the wrong place
_NOT_IN_NP = {"has", "have", "had", "was", "were", "will", "be", "been", "is", "are", "am", "by", "not", "did",
              "do", "does", "yesterday", "today", "tomorrow", "tonight", "now", "again", "already", "too", "also",
              "here", "there", "later", "soon", "on", "in", "at", "to", "for", "with", "from", "and", "or", "but"}


def _plain_np(np: str) -> bool:
    return not any(w in _NOT_IN_NP or w in _PAST or w in _PARTICIPLE for w in np.split()[1:])


def _plural(np: str) -> bool:
    words = np.lower().split()
    if len(words) == 1 and words[0] in ("we", "they", "you", "us", "them"):
        return True
    if words[0] in ("these", "those"):
        return True
    if words[0] in ("a", "an", "this", "that") or len(words) == 1 or np[0].isupper():
        return False
    return words[-1].endswith("s") and not words[-1].endswith(("ss", "us", "is"))


def _aux(subject: str, form: str) -> str:
    if form == "past":
        return "were" if _plural(subject) else "was"
    if form == "perfect":
        return "have" if _plural(subject) or subject == "I" else "has"
    return "will"


def _to_object(np: str) -> str | None:
    if np in _OBJ_TO_SUBJ and np not in ("you", "it"):
        return None  # an object pronoun where a subject belongs: not a sentence we understand
    return _SUBJ_TO_OBJ.get(np, np)


def _to_subject(np: str) -> str | None:
    if np in _SUBJ_TO_OBJ and np not in ("you", "it"):
        return None  # a subject pronoun where an object belongs
    return _OBJ_TO_SUBJ.get(np, np)


def _rewrite_en_sentence(sentence: str) -> str | None:
    first = sentence.split(" ", 1)[0]
    if first in _INITIAL:
        sentence = first.lower() + sentence[len(first) :]
    for form, pattern in _ACTIVE:
        m = pattern.match(sentence)
        if not m:
            continue
        verb = m["v"]
        base = {"past": _PAST.get(verb), "will": verb if verb in _VERBS else None,
                "perfect": _PARTICIPLE.get(verb)}[form]
        agent, patient = _to_object(m["s"]), _to_subject(m["o"])
        if base is None or agent is None or patient is None or not (_plain_np(m["s"]) and _plain_np(m["o"])):
            continue
        aux = {"past": _aux(patient, "past"), "will": "will be", "perfect": f"{_aux(patient, 'perfect')} been"}[form]
        return _capital(f"{patient} {aux} {_VERBS[base][1]} by {agent}{m['end']}")
    for form, pattern in _PASSIVE:
        m = pattern.match(sentence)
        if not m:
            continue
        base = _PARTICIPLE.get(m["v"])
        agent, patient = _to_subject(m["s"]), _to_object(m["o"])
        if base is None or agent is None or patient is None or not (_plain_np(m["s"]) and _plain_np(m["o"])):
            continue
        verb = {"past": _VERBS[base][0], "will": f"will {base}",
                "perfect": f"{_aux(agent, 'perfect')} {_VERBS[base][1]}"}[form]
        return _capital(f"{agent} {verb} {patient}{m['end']}")
    return None


def _capital(text: str) -> str:
    return text[0].upper() + text[1:]


def rewrite_voice_en(text: str) -> str | None:
    """The text with each confident sentence flipped between active and passive, or None."""
    changed = False
    parts: list[str] = []
    for m in _SENTENCE.finditer(text):
        chunk = m.group(0)
        body, tail = chunk.rstrip(), chunk[len(chunk.rstrip()) :]
        new = _rewrite_en_sentence(body)
        changed |= new is not None
        parts.append((new or body) + tail)
    result = "".join(parts)
    return result if changed and result != text else None


def rewrite_voice(text: str, *, lang: str) -> str | None:
    """Active <-> passive for `lang` ('zh' or 'en'); None when no rule is confident."""
    return rewrite_voice_zh(text) if lang == "zh" else rewrite_voice_en(text)
