"""Training batches from tokenised conversations (chatforge.runtime.conversation).

Padding waste is avoided by packing: conversations are placed first-fit-decreasing into rows of
`max_seq_len` tokens, with position ids restarting at 0 for each conversation. transformers 5 reads
restarting position ids (with no attention mask and no cache) as packed sequences and builds a
block-diagonal causal mask for sdpa/eager attention (flash-attention uses them as varlen
boundaries), so no conversation attends to its neighbour. Length-grouped batching (sort by length
inside shuffled windows, pad per batch) is the alternative, for attention kernels that ignore
position ids.
"""

from __future__ import annotations

import random
from typing import Literal

import torch

from chatforge.runtime.conversation import IGNORE, Example


def pack(examples: list[Example], *, max_seq_len: int) -> list[list[Example]]:
    """First-fit-decreasing bins of at most max_seq_len tokens (deterministic: ties by input order)."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = len(examples[i].input_ids)
        for b, room in enumerate(free):
            if n <= room:
                bins[b].append(i)
                free[b] -= n
                break
        else:
            bins.append([i])
            free.append(max_seq_len - n)
    return [[examples[i] for i in sorted(b)] for b in bins]


def length_groups(examples: list[Example], *, batch_size: int, seed: int) -> list[list[Example]]:
    """Batches of similar length: sort inside shuffled windows of 50 batches, then shuffle batches."""
    rng = random.Random(seed)
    idx = list(range(len(examples)))
    rng.shuffle(idx)
    window = batch_size * 50
    batches: list[list[Example]] = []
    for w in range(0, len(idx), window):
        chunk = sorted(idx[w : w + window], key=lambda i: len(examples[i].input_ids))
        batches += [[examples[i] for i in chunk[b : b + batch_size]] for b in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate_packed(rows: list[list[Example]], *, pad_id: int) -> dict[str, torch.Tensor]:
    """Each row concatenates its examples; position ids restart per example. The tail filler gets
    its own restarting positions (a separate 'sequence') and no labels."""
    width = max(sum(len(e.input_ids) for e in row) for row in rows)
    ids, labels, pos = [], [], []
    for row in rows:
        r_ids = [t for e in row for t in e.input_ids]
        r_lab = [t for e in row for t in e.labels]
        r_pos = [p for e in row for p in range(len(e.input_ids))]
        fill = width - len(r_ids)
        ids.append(r_ids + [pad_id] * fill)
        labels.append(r_lab + [IGNORE] * fill)
        pos.append(r_pos + list(range(fill)))
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "position_ids": torch.tensor(pos, dtype=torch.long),
        "num_tokens": torch.tensor(sum(len(e.input_ids) for row in rows for e in row)),  # non-padding
    }


def collate_padded(batch: list[Example], *, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch with an attention mask (length-grouped batching, evaluation)."""
    width = max(len(e.input_ids) for e in batch)
    ids = [e.input_ids + [pad_id] * (width - len(e.input_ids)) for e in batch]
    labels = [e.labels + [IGNORE] * (width - len(e.labels)) for e in batch]
    mask = [[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in batch]
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "attention_mask": torch.tensor(mask, dtype=torch.long),
        "num_tokens": torch.tensor(sum(len(e.input_ids) for e in batch)),  # non-padding
    }


def epoch_batches(
    examples: list[Example],
    *,
    batching: Literal["pack", "length_group"],
    batch_size: int,
    max_seq_len: int,
    seed: int,
    epoch: int,
    pad_id: int,
    packed_rows: list[list[Example]] | None = None,
) -> list[dict[str, torch.Tensor]]:
    """The micro-batches of one epoch, a pure function of (data, seed, epoch): what makes resume exact."""
    if batching == "pack":
        rows = list(packed_rows if packed_rows is not None else pack(examples, max_seq_len=max_seq_len))
        random.Random(seed * 1_000_003 + epoch).shuffle(rows)
        return [collate_packed(rows[i : i + batch_size], pad_id=pad_id) for i in range(0, len(rows), batch_size)]
    groups = length_groups(examples, batch_size=batch_size, seed=seed * 1_000_003 + epoch)
    return [collate_padded(g, pad_id=pad_id) for g in groups]
