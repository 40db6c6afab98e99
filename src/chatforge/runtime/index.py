"""The exchanges a chat model folder answers from when it is unsure (`retrieval.jsonl`).

Written by train from the train split's original conversations, copied down the chain with the
model (chatforge.runtime.folder.CARRIED_FILES), read by retrieval in the loop
(chatforge.runtime.hybrid) in evaluate and `chatforge serve`. One conversation per line:
`{"conversation_id", "lang", "intent", "messages"}`, sorted by id.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from chatforge.runtime.conversation import Conversation

INDEX_NAME = "retrieval.jsonl"


def write_index(folder: Path, convs: Sequence[Conversation]) -> int:
    """Write the exchanges a folder answers from (`retrieval.jsonl`, one conversation per line,
    sorted by id) into a folder being built; returns the number of conversations written."""
    lines = [json.dumps({"conversation_id": c.conversation_id, "lang": c.lang, "intent": c.intent,
                         "messages": c.messages}, ensure_ascii=False)
             for c in sorted(convs, key=lambda c: c.conversation_id)]
    (folder / INDEX_NAME).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)


def read_index(folder: Path) -> list[Conversation] | None:
    """The conversations of a folder's `retrieval.jsonl`; None when the folder has none."""
    path = Path(folder) / INDEX_NAME
    if not path.exists():
        return None
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            rec = json.loads(line)
            out.append(Conversation(rec["conversation_id"], rec["lang"], rec.get("intent"), rec["messages"]))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{n}: not a retrieval record ({type(exc).__name__}); rebuild the folder "
                             "with `dvc repro`") from None
    return out
