"""Decoding: the one way chatforge runs a causal LM, torch or ONNX, for every stage, evaluate and serving.

Both backends expose the same two calls — `start(prompt_ids)` and `advance(token_id)`, each
returning the next-token logits while keeping a KV cache — and one decoding loop (below) does the
rest: greedy or seeded temperature/top-p sampling, max new tokens, eos and stop strings, per-token
log-probabilities and streamed text deltas. Keeping the sampling in numpy, outside the backends,
is what makes ONNX float greedy decoding equal torch greedy decoding token for token.

Scoring a given sequence is `Generator.logprobs(ids)` (perplexity, reranking retrieved answers);
an exported graph runs only through `OnnxCausalLM.forward`, so no other module feeds ONNX by hand.
`load_generator(folder)` opens a built folder (chatforge.runtime.folder) with the right backend.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from chatforge.metrics import answer_confidence
from chatforge.runtime.folder import load_torch, read_family
from chatforge.runtime.slots import SlotCodec, codec_for

Backend = Literal["auto", "torch", "onnx", "onnx_int8"]
ONNX_FLOAT_NAME = "model.onnx"
ONNX_INT8_NAME = "model.int8.onnx"


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 => greedy
    top_p: float = 1.0
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None
    top_logprobs: int = 0  # 0-20 most likely alternatives recorded per generated token (OpenAI top_logprobs)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens = {self.max_new_tokens}: must be >= 1")
        if not 0.0 <= self.temperature <= 100.0:
            raise ValueError(f"temperature = {self.temperature}: must be in [0, 100] (0 means greedy)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p = {self.top_p}: must be in (0, 1]")
        if any(not s for s in self.stop_strings):
            raise ValueError("stop_strings must not contain an empty string")
        if not 0 <= self.top_logprobs <= 20:
            raise ValueError(f"top_logprobs = {self.top_logprobs}: must be in [0, 20]")


def conversation_seed(messages: Sequence[Mapping[str, str]], salt: int = 0) -> int:
    """The sampling seed of a reply whose caller gives none: the first 8 bytes of the SHA-256 of
    the conversation so far (each message's role and content, in order) and `salt` (serve.seed),
    as an int in [0, 2**63). The same conversation always gets the same reply (reproducible,
    cacheable, what evaluate measures is what serve shows); two conversations that differ anywhere
    get independent draws, so a sampling temperature spreads answers over the closings, greetings
    and phrasings the model has learnt instead of repeating its single most likely one."""
    h = hashlib.sha256(str(int(salt)).encode())
    for m in messages:
        h.update(b"\x00" + str(m.get("role", "")).encode() + b"\x01" + str(m.get("content", "")).encode())
    return int.from_bytes(h.digest()[:8], "big") >> 1


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    # log-probability of each generated token under the model's own (temperature 1) distribution,
    # so confidence means the same thing whatever sampling settings produced the text
    token_logprobs: list[float]
    finish_reason: Literal["stop", "length"]
    # the text each token added to `text` (slot values filled in; "" for a token that only began a
    # multi-byte character, whose text the completing token carries): "".join(token_texts) == text
    token_texts: list[str] = field(default_factory=list)
    # per token, the config.top_logprobs most likely tokens (their text alone, log-probability at T = 1)
    top_logprobs: list[list[tuple[str, float]]] = field(default_factory=list)
    prompt_tokens: int = 0  # tokens of the prompt it answered (chat template applied)

    @property
    def confidence(self) -> float:
        """Geometric-mean token probability: exp(mean log p); 0.0 when nothing was generated."""
        return answer_confidence(self.token_logprobs)

    def confidence_over(self, first: int | None) -> float:
        """The same over the first `first` tokens only (None: all): chatforge.metrics.answer_confidence."""
        return answer_confidence(self.token_logprobs, first=first)


class Generator(Protocol):
    fingerprint: str
    family: str
    last: Generation | None

    def generate(self, messages: list[dict[str, str]], config: GenerationConfig) -> Generation: ...

    def stream(self, messages: list[dict[str, str]], config: GenerationConfig) -> Iterator[str]: ...

    def generate_many(self, conversations: list[list[dict[str, str]]], config: GenerationConfig, *,
                      batch_size: int = 8) -> list[Generation]: ...

    def logprobs(self, ids: list[int]) -> np.ndarray:
        """log p(ids[t] | ids[:t]) for t >= 1, natural log: [len(ids) - 1] (ids: a whole sequence,
        chat template applied, at least 2 tokens)."""
        ...


class _Session(Protocol):
    def start(self, prompt_ids: list[int]) -> np.ndarray: ...

    def advance(self, token_id: int) -> np.ndarray: ...


class _BatchSession(Protocol):
    """Several sequences decoded together: left-padded prompts, one KV cache, logits [B, vocab]."""

    def start(self, prompts: list[list[int]]) -> np.ndarray: ...

    def advance(self, token_ids: list[int]) -> np.ndarray: ...


@dataclass
class BatchRequest:
    """One sequence of a batch: its own sampling (config, seeded rng), stop strings and limit.

    on_token receives (token id, log-probability) of each generated token, then on_text the text
    deltas that became safe to show (a possible stop string or an unfinished character is held
    back), in order, from the decoding thread; cancelled() is polled after every step, and a
    cancelled sequence stops at once (finish_reason "stop")."""

    messages: list[dict[str, str]]
    config: GenerationConfig
    on_text: Any = None  # Callable[[str], None] | None
    cancelled: Any = None  # Callable[[], bool] | None
    on_token: Any = None  # Callable[[int, float], None] | None


# ------------------------------------------------------------------------------------ decoding
def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def choose_token(logits: np.ndarray, config: GenerationConfig, rng: np.random.Generator) -> tuple[int, float]:
    """Pick the next token from one row of logits; return it with its log-probability (T = 1)."""
    logits = np.asarray(logits, dtype=np.float64)
    logprobs = _log_softmax(logits)
    if config.temperature == 0.0:
        token = int(np.argmax(logits))
        return token, float(logprobs[token])
    probs = np.exp(_log_softmax(logits / config.temperature))
    if config.top_p < 1.0:
        # nucleus: the smallest set of most likely tokens whose mass reaches top_p (stable order so
        # ties break the same way on every run)
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, config.top_p) + 1)]
        mask = np.zeros_like(probs)
        mask[keep] = probs[keep]
        probs = mask / mask.sum()
    token = int(rng.choice(len(probs), p=probs))
    return token, float(logprobs[token])


def top_alternatives(logits: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k most likely token ids with their log-probabilities (T = 1), most likely first."""
    logprobs = _log_softmax(np.asarray(logits, dtype=np.float64))
    order = np.argsort(-logprobs, kind="stable")[:k]
    return [(int(i), float(logprobs[i])) for i in order]


def _held_back(text: str, stop_strings: tuple[str, ...]) -> int:
    """How many trailing characters could still become a stop string (or an unfinished UTF-8 char)."""
    hold = 0
    for stop in stop_strings:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                hold = max(hold, k)
                break
    if text.endswith("\ufffd"):  # a multi-byte character split across byte-level tokens
        hold = max(hold, 1)
    return hold


class _Reply:
    """One sequence being decoded: eos and stop strings end it; `text` is what the user sees
    (slot placeholders filled in from `slot_values`, an unfinished multi-byte character dropped)."""

    def __init__(self, tokenizer: Any, eos_ids: set[int], config: GenerationConfig,
                 slot_values: dict[str, str] | None = None, prompt_tokens: int = 0) -> None:
        self.tokenizer, self.eos_ids, self.config = tokenizer, eos_ids, config
        self.slot_values, self.prompt_tokens = slot_values, prompt_tokens
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self.pieces: list[str] = []
        self.top: list[list[tuple[str, float]]] = []
        self.text = ""
        self.finish: Literal["stop", "length"] = "length"
        self.done = False

    def _decode(self, ids: list[int], *, skip_special_tokens: bool = True) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        return SlotCodec.decode(text, self.slot_values) if self.slot_values is not None else text

    def push(self, token: int, logprob: float, top: list[tuple[int, float]] | None = None) -> bool:
        """Take one chosen token (and its top alternatives, when asked for); return True when
        this reply is finished."""
        if token in self.eos_ids:
            self.finish, self.done = "stop", True
            return True
        self.token_ids.append(token)
        self.logprobs.append(logprob)
        if top is not None:
            self.top.append([(self._decode([t], skip_special_tokens=False), lp) for t, lp in top])
        self.text = self._decode(self.token_ids)
        shown, stable = "".join(self.pieces), self.text.rstrip("\ufffd")
        self.pieces.append(stable[len(shown):] if stable.startswith(shown) else "")
        cut = min((i for i in (self.text.find(s) for s in self.config.stop_strings) if i >= 0), default=-1)
        if cut >= 0:
            self.text = self.text[:cut]
            self.finish, self.done = "stop", True
        return self.done

    def result(self) -> Generation:
        if self.finish == "length":  # the limit may have cut a character between its byte tokens
            self.text = self.text.rstrip("\ufffd")
        # a stop string cut the text: cut the tokens' pieces at the same place
        pieces, left = [], len(self.text)
        for piece in self.pieces:
            pieces.append(piece[:left])
            left -= len(pieces[-1])
        joined = "".join(pieces)
        if joined != self.text and pieces:  # a decode that rewrote earlier text (rare): keep the sum exact
            if self.text.startswith(joined):
                pieces[-1] += self.text[len(joined):]
            else:
                pieces = [self.text] + [""] * (len(pieces) - 1)
        return Generation(text=self.text, token_ids=self.token_ids, token_logprobs=self.logprobs,
                          finish_reason=self.finish, token_texts=pieces, top_logprobs=self.top,
                          prompt_tokens=self.prompt_tokens)


class _Decoder:
    """Shared by every backend: chat template in, `Generation` (or text deltas) out."""

    family = "causal_lm"

    def __init__(self, tokenizer: Any, eos_ids: set[int], fingerprint: str, context_tokens: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.fingerprint = fingerprint
        # the positions the model was built for (config.max_position_embeddings): prompt + answer
        # must fit, or attention memory grows with the square of the length (serving checks this)
        self.context_tokens = context_tokens
        self.last: Generation | None = None

    def _session(self) -> _Session:
        raise NotImplementedError

    def logprobs(self, ids: list[int]) -> np.ndarray:
        """log p(ids[t] | ids[:t]) for t >= 1, natural log: [len(ids) - 1] (each backend overrides it)."""
        raise NotImplementedError

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return self.encode_prompt(messages)[0]

    def encode_prompt(self, messages: list[dict[str, str]]) -> tuple[list[int], dict[str, str] | None]:
        """Token ids of the prompt (chat template, generation prompt added) and, for a model trained
        with slot placeholders, the placeholder -> value map its reply is decoded with."""
        if not messages:
            raise ValueError("messages is empty: pass at least one {'role': 'user', 'content': ...}")
        values = None
        if (codec := codec_for(self.tokenizer)) is not None:
            encoded = codec.encode(messages)
            messages, values = encoded.messages, encoded.values
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
            ids = ids["input_ids"]
        return [int(i) for i in ids], values

    def generate(self, messages: list[dict[str, str]], config: GenerationConfig) -> Generation:
        for _ in self.stream(messages, config):
            pass
        assert self.last is not None
        return self.last

    def generate_many(self, conversations: list[list[dict[str, str]]], config: GenerationConfig, *,
                      batch_size: int = 8) -> list[Generation]:
        """One Generation per conversation, equal to calling `generate` on each (backends that can
        decode several sequences at once override this; `batch_size` bounds how many)."""
        return [self.generate(messages, config) for messages in conversations]

    def _batch_session(self) -> _BatchSession | None:
        return None  # backends that can decode several sequences at once return one

    def generate_batch(self, requests: list[BatchRequest]) -> list[Generation]:
        """Decode several requests together, each with its own sampling, stop strings, limit,
        text callback and cancellation; one Generation per request, in order. With one request, or
        a backend without a batch session, the requests are decoded one after the other.

        Greedy rows give the tokens `generate` gives (left padding is masked), up to float
        rounding in the batched matrix products."""
        session = self._batch_session() if len(requests) > 1 else None
        if session is None:
            return [self._one(r) for r in requests]
        encoded = [self.encode_prompt(r.messages) for r in requests]
        rngs = [np.random.default_rng(r.config.seed) for r in requests]
        replies = [_Reply(self.tokenizer, self.eos_ids, r.config, values, len(p))
                   for r, (p, values) in zip(requests, encoded, strict=True)]
        emitted = [0] * len(requests)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids, default=0)
        logits = session.start([p for p, _ in encoded])
        steps = [0] * len(requests)
        while True:
            following = []
            for row, (req, reply) in enumerate(zip(requests, replies, strict=True)):
                if not reply.done and req.cancelled is not None and req.cancelled():
                    reply.finish, reply.done = "stop", True
                if not reply.done:
                    cfg = req.config
                    top = top_alternatives(logits[row], cfg.top_logprobs) if cfg.top_logprobs else None
                    token, logprob = choose_token(logits[row], cfg, rngs[row])
                    if not reply.push(token, logprob, top) and req.on_token is not None:
                        req.on_token(token, logprob)
                    steps[row] += 1
                    if steps[row] >= cfg.max_new_tokens:
                        reply.done = True  # finish stays "length" unless eos / a stop string ended it
                    if req.on_text is not None:
                        held = 0 if reply.done else _held_back(reply.text, cfg.stop_strings)
                        safe = len(reply.text.rstrip("\ufffd") if reply.done else reply.text) - held
                        if safe > emitted[row]:
                            req.on_text(reply.text[emitted[row]:safe])
                            emitted[row] = safe
                following.append(pad if reply.done or not reply.token_ids else reply.token_ids[-1])
            if all(r.done for r in replies):
                break
            logits = session.advance(following)
        return [r.result() for r in replies]

    def _one(self, request: BatchRequest) -> Generation:
        for delta in self.stream(request.messages, request.config, cancelled=request.cancelled,
                                 on_token=request.on_token):
            if request.on_text is not None:
                request.on_text(delta)
        assert self.last is not None
        return self.last

    def stream(self, messages: list[dict[str, str]], config: GenerationConfig, *,
               cancelled: Any = None, on_token: Any = None) -> Iterator[str]:
        """Yield text deltas as tokens arrive; afterwards `self.last` holds the whole Generation.
        `cancelled()`, when given, is polled after every token and stops decoding; `on_token(id,
        logprob)` is called for each generated token before its text is yielded."""
        prompt, values = self.encode_prompt(messages)
        rng = np.random.default_rng(config.seed)
        session = self._session()
        logits = session.start(prompt)
        reply = _Reply(self.tokenizer, self.eos_ids, config, values, len(prompt))
        emitted = 0
        for step in range(config.max_new_tokens):
            top = top_alternatives(logits, config.top_logprobs) if config.top_logprobs else None
            token, logprob = choose_token(logits, config, rng)
            if reply.push(token, logprob, top):
                break
            if on_token is not None:
                on_token(token, logprob)
            safe = len(reply.text) - _held_back(reply.text, config.stop_strings)
            if safe > emitted:
                yield reply.text[emitted:safe]
                emitted = safe
            if cancelled is not None and cancelled():
                reply.finish = "stop"
                break
            if step + 1 < config.max_new_tokens:
                logits = session.advance(reply.token_ids[-1])
        final = reply.result()
        if len(final.text) > emitted:
            yield final.text[emitted:]
        self.last = final


# --------------------------------------------------------------------------------------- torch
class _TorchSession:
    def __init__(self, model: Any) -> None:
        self.model = model
        self.past: Any = None

    def _forward(self, ids: list[int]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            # logits_to_keep=1: the prompt's other positions never need the vocabulary projection
            out = self.model(
                input_ids=torch.tensor([ids], dtype=torch.long, device=self.model.device), cache=self.past,
                use_cache=True, logits_to_keep=1,
            )
        self.past = out.cache
        return out.logits[0, -1].float().cpu().numpy()

    def start(self, prompt_ids: list[int]) -> np.ndarray:
        self.past = None
        return self._forward(prompt_ids)

    def advance(self, token_id: int) -> np.ndarray:
        return self._forward([token_id])


class _TorchBatchSession:
    def __init__(self, model: Any, pad: int) -> None:
        self.model, self.pad = model, pad
        self.cache: Any = None

    def _forward(self, ids: Any) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=self.positions, cache=self.cache,
                             use_cache=True, logits_to_keep=1)
        self.cache = out.cache
        return out.logits[:, -1].float().cpu().numpy()

    def start(self, prompts: list[list[int]]) -> np.ndarray:
        import torch

        width, device = max(len(p) for p in prompts), self.model.device
        ids = torch.tensor([[self.pad] * (width - len(p)) + p for p in prompts], dtype=torch.long, device=device)
        self.mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long, device=device)
        self.positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.cache = None
        return self._forward(ids)

    def advance(self, token_ids: list[int]) -> np.ndarray:
        import torch

        ones = torch.ones((len(token_ids), 1), dtype=torch.long, device=self.mask.device)
        self.mask = torch.cat([self.mask, ones], dim=1)
        self.positions = self.positions[:, -1:] + 1
        return self._forward(torch.tensor(token_ids, dtype=torch.long, device=self.mask.device)[:, None])


class TorchGenerator(_Decoder):
    def __init__(self, model: Any, tokenizer: Any, *, fingerprint: str) -> None:
        super().__init__(tokenizer, _eos_ids(model.config, tokenizer), fingerprint, context_length(model.config))
        self.model = model.eval()

    def logprobs(self, ids: list[int]) -> np.ndarray:
        """log p(ids[t] | ids[:t]) for t >= 1 (natural log, float32 softmax): [len(ids) - 1]; one forward."""
        import torch

        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([ids], dtype=torch.long, device=self.model.device)).logits[0].float().cpu()
        logp = torch.log_softmax(logits[:-1], dim=-1)
        return logp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0].numpy()

    def _session(self) -> _Session:
        return _TorchSession(self.model)

    def _batch_session(self) -> _BatchSession:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids, default=0)
        return _TorchBatchSession(self.model, pad)

    def generate_many(self, conversations: list[list[dict[str, str]]], config: GenerationConfig, *,
                      batch_size: int = 8) -> list[Generation]:
        """Greedy replies decoded `batch_size` at a time (left padding, one KV cache for the batch):
        the same tokens as one at a time, several times the throughput on a CPU. Sampling keeps the
        one-at-a-time path, so a seed gives the same text whichever call made it."""
        if config.temperature != 0.0 or batch_size <= 1:
            return super().generate_many(conversations, config, batch_size=batch_size)
        out: list[Generation] = []
        for i in range(0, len(conversations), batch_size):
            out += self._greedy_batch([self.encode_prompt(m) for m in conversations[i : i + batch_size]], config)
        return out

    def _greedy_batch(self, encoded: list[tuple[list[int], dict[str, str] | None]], config: GenerationConfig) -> list[Generation]:
        import torch

        prompts = [p for p, _ in encoded]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids, default=0)
        width = max(len(p) for p in prompts)
        device = self.model.device
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], dtype=torch.long, device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long, device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        replies = [_Reply(self.tokenizer, self.eos_ids, config, values, len(p)) for p, values in encoded]
        rng = np.random.default_rng(config.seed)  # unused by greedy choice; choose_token's signature
        cache = None
        with torch.inference_mode():
            for step in range(config.max_new_tokens):
                out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                                 use_cache=True, logits_to_keep=1)
                cache = out.cache
                logits = out.logits[:, -1].float().cpu().numpy()
                following = []
                for row, reply in enumerate(replies):
                    if not reply.done:
                        reply.push(*choose_token(logits[row], config, rng))
                    following.append(pad if reply.done else reply.token_ids[-1])  # a live row just took a token
                if all(r.done for r in replies) or step + 1 == config.max_new_tokens:
                    break
                # finished rows keep decoding pad tokens (cheaper than reshaping the cache); ignored
                ids = torch.tensor(following, dtype=torch.long, device=device)[:, None]
                mask = torch.cat([mask, torch.ones((len(prompts), 1), dtype=torch.long, device=device)], dim=1)
                positions = positions[:, -1:] + 1
        return [r.result() for r in replies]


# ---------------------------------------------------------------------------------------- onnx
@dataclass
class OnnxLayout:
    """What the exported graph expects (written by chatforge.compress.onnx_export)."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    past_names: list[str] = field(default_factory=list)  # past_key_values.{i}.key / .value, in order


class OnnxCausalLM:
    """An exported causal LM (chatforge.compress.onnx_export: inputs input_ids, attention_mask,
    position_ids and past_key_values.{i}.key/.value; outputs logits, then the present key/values) in
    an onnxruntime session on the execution `providers` (quantize.providers; None: CPU).

    `forward` is the one place chatforge runs such a graph: decoding sessions, teacher-forced
    logits (`logits`) and log-probabilities (`logprobs`) all go through it.

    Raises ValueError when the file is not such an export (the message says to re-export it)."""

    def __init__(self, model_path: Path, *, providers: Sequence[str] | None = None) -> None:
        import onnxruntime as ort

        from chatforge.runtime.device import onnx_session

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnx_session(model_path, providers=providers, options=options)  # quantize.providers (default CPU)
        names = [i.name for i in self.session.get_inputs()]
        past_names = [n for n in names if n.startswith("past_key_values.")]
        first = next((i for i in self.session.get_inputs() if i.name.startswith("past_key_values.")), None)
        missing = {"input_ids", "attention_mask", "position_ids"} - set(names)
        if missing or first is None:
            raise ValueError(
                f"{model_path}: not a chatforge ONNX export with past key/values (inputs {names}). "
                "Re-export it with `dvc repro quantize`."
            )
        self.dtype: np.dtype = np.dtype(np.float16 if "float16" in first.type else np.float32)
        self.layout = OnnxLayout(
            num_layers=len(past_names) // 2,
            num_kv_heads=int(first.shape[1]),
            head_dim=int(first.shape[3]),
            past_names=past_names,
        )

    def empty_past(self, batch: int = 1) -> list[np.ndarray]:
        """A KV cache holding nothing: one [batch, kv_heads, 0, head_dim] array per past input."""
        lay = self.layout
        return [np.zeros((batch, lay.num_kv_heads, 0, lay.head_dim), dtype=self.dtype)] * len(lay.past_names)

    def forward(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray,
                past: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One run of the graph: ids/positions [B, n] int64, mask [B, past + n] int64, `past` as
        `empty_past` or a previous call's present. Returns (logits [B, n, vocab], present)."""
        feeds: dict[str, np.ndarray] = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        feeds.update(zip(self.layout.past_names, past, strict=True))
        logits, *present = self.session.run(None, feeds)
        return logits, present

    def logits(self, ids: list[int]) -> np.ndarray:
        """Teacher-forced logits of one sequence, every position, empty cache: [len(ids), vocab] float32."""
        n = len(ids)
        logits, _ = self.forward(np.asarray([ids], dtype=np.int64), np.ones((1, n), dtype=np.int64),
                                 np.arange(n, dtype=np.int64)[None, :], self.empty_past())
        return logits[0]

    def logprobs(self, ids: list[int]) -> np.ndarray:
        """log p(ids[t] | ids[:t]) for t >= 1 (natural log, float64): [len(ids) - 1]."""
        logits = self.logits(ids).astype(np.float64)[:-1]
        logits -= logits.max(axis=-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        return logp[np.arange(len(ids) - 1), np.asarray(ids[1:])]


class _OnnxSession:
    def __init__(self, model: OnnxCausalLM) -> None:
        self.model = model
        self.past: list[np.ndarray] = []
        self.length = 0

    def _forward(self, ids: list[int]) -> np.ndarray:
        n = len(ids)
        logits, self.past = self.model.forward(
            np.asarray([ids], dtype=np.int64), np.ones((1, self.length + n), dtype=np.int64),
            np.arange(self.length, self.length + n, dtype=np.int64)[None, :], self.past,
        )
        self.length += n
        return logits[0, -1].astype(np.float32)

    def start(self, prompt_ids: list[int]) -> np.ndarray:
        self.past = self.model.empty_past()
        self.length = 0
        return self._forward(prompt_ids)

    def advance(self, token_id: int) -> np.ndarray:
        return self._forward([token_id])


class _OnnxBatchSession:
    def __init__(self, model: OnnxCausalLM, pad: int) -> None:
        self.model, self.pad = model, pad
        self.past: list[np.ndarray] = []

    def _forward(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        logits, self.past = self.model.forward(ids, self.mask, positions, self.past)
        return logits[:, -1].astype(np.float32)

    def start(self, prompts: list[list[int]]) -> np.ndarray:
        width = max(len(p) for p in prompts)
        ids = np.asarray([[self.pad] * (width - len(p)) + p for p in prompts], dtype=np.int64)
        self.mask = np.asarray([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=np.int64)
        positions = np.clip(self.mask.cumsum(-1) - 1, 0, None)
        self.last_position = positions[:, -1:]
        self.past = self.model.empty_past(len(prompts))
        return self._forward(ids, positions)

    def advance(self, token_ids: list[int]) -> np.ndarray:
        self.mask = np.concatenate([self.mask, np.ones((len(token_ids), 1), dtype=np.int64)], axis=1)
        self.last_position = self.last_position + 1
        return self._forward(np.asarray(token_ids, dtype=np.int64)[:, None], self.last_position)


class OnnxGenerator(_Decoder):
    def __init__(self, model_path: Path, tokenizer: Any, config: Any, *, fingerprint: str,
                 providers: Sequence[str] | None = None) -> None:
        super().__init__(tokenizer, _eos_ids(config, tokenizer), fingerprint, context_length(config))
        self.onnx = OnnxCausalLM(model_path, providers=providers)

    def logprobs(self, ids: list[int]) -> np.ndarray:
        """log p(ids[t] | ids[:t]) for t >= 1 (natural log, float64): [len(ids) - 1]; one pass, empty cache."""
        return self.onnx.logprobs(ids)

    def _session(self) -> _Session:
        return _OnnxSession(self.onnx)

    def _batch_session(self) -> _BatchSession:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids, default=0)
        return _OnnxBatchSession(self.onnx, pad)


# ------------------------------------------------------------------------------------- loading
def context_length(config: Any) -> int | None:
    """The model's context in tokens (max_position_embeddings, or GPT-2's n_positions); None when
    the config names none."""
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _eos_ids(config: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (config.eos_token_id, getattr(tokenizer, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(i) for i in source)
    return ids


def _fingerprint(path: Path, backend: str) -> str:
    """Content hash of the weights file + backend: equal fingerprints mean equal outputs (cache key)."""
    h = hashlib.sha256(backend.encode())
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return f"{backend}:{h.hexdigest()[:16]}"


def load_generator(folder: Path | str, *, backend: Backend = "auto", providers: Sequence[str] | None = None) -> Generator:
    """Open a causal-LM model folder for generation.

    backend "auto" prefers model.int8.onnx, then model.onnx, then the torch weights in the folder.
    ONNX runs on the execution `providers` (quantize.providers; None: CPU), torch weights on the
    accelerator when there is one (chatforge.runtime.device).
    """
    folder = Path(folder)
    family = read_family(folder, plain_ok=True)  # a user's plain transformers folder too
    if family != "causal_lm":
        raise ValueError(
            f"{folder}: a {family} model cannot generate text; load_generator takes causal_lm folders "
            "(classifier folders answer from responses.json, which serving handles itself)."
        )
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{folder}: the tokenizer has no chat template; generation builds prompts with it.")
    int8, fp32 = folder / ONNX_INT8_NAME, folder / ONNX_FLOAT_NAME
    if backend == "auto":
        backend = "onnx_int8" if int8.exists() else "onnx" if fp32.exists() else "torch"
    if backend in ("onnx", "onnx_int8"):
        path = int8 if backend == "onnx_int8" else fp32
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing for backend={backend!r}. Run `dvc repro quantize`.")
        config = AutoConfig.from_pretrained(folder)
        # outputs can differ between execution providers: a non-default list is part of the cache key
        chosen = backend if providers is None or list(providers) == ["CPUExecutionProvider"] else f"{backend}@{'+'.join(providers)}"
        return OnnxGenerator(path, tokenizer, config, fingerprint=_fingerprint(path, chosen), providers=providers)
    if backend != "torch":
        raise ValueError(f"backend = {backend!r}: use one of auto, torch, onnx, onnx_int8")
    weights = folder / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(
            f"{folder}: no model.safetensors for backend='torch' (ONNX-only folders need backend onnx/onnx_int8)."
        )
    from chatforge.runtime.device import place

    model = place(load_torch(folder, family=family, tokenizer=tokenizer)[0])
    where = "torch" if model.device.type == "cpu" else f"torch@{model.device.type}"  # the device is part of the cache key
    return TorchGenerator(model, tokenizer, fingerprint=_fingerprint(weights, where))


__all__ = [
    "Generation",
    "GenerationConfig",
    "Generator",
    "OnnxCausalLM",
    "OnnxGenerator",
    "TorchGenerator",
    "choose_token",
    "conversation_seed",
    "load_generator",
]
