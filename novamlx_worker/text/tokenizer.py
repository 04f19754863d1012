"""One tokenizer interface over Hugging Face tokenizers, whether from a model folder or
rebuilt from a GGUF file's metadata."""
from __future__ import annotations

from functools import lru_cache

import jinja2
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

# Names of control tokens that end a turn in common chat templates.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>", "<|end|>", "</s>", "<|eom_id|>")

# Control tokens that open a new turn: a model that emits one has finished its own turn
# (the spec's TurnStopProcessor), so they stop generation like EOS.
TURN_START = ("<|im_start|>", "<|start_header_id|>", "<start_of_turn>", "<|user|>")
# Special tokens that carry meaning for the parsers and stay in the decoded text.
SEMANTIC = {"<think>", "</think>", "<tool_call>", "</tool_call>", "<|tool_call|>", "<|/tool_call|>", "[TOOL_CALLS]",
            "<tool_response>", "</tool_response>"}

# GPT-2 style byte <-> unicode table used by byte-level BPE vocabularies.
def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_BYTE_DECODER = {c: b for b, c in _bytes_to_unicode().items()}

# Pre-tokenizer split patterns by GGUF `tokenizer.ggml.pre` (as llama.cpp names them).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Mistral's tekken and GPT-4o's o200k split words at case changes (camelCase -> camel, Case).
_CASED_WORDS = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+{suffix}"
                r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*{suffix}")
_TEKKEN_SPLIT = (_CASED_WORDS.replace("{suffix}", "")
                 + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O_SPLIT = (_CASED_WORDS.replace("{suffix}", r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?")
                + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.ggml.pre names llama.cpp writes, by the split their vocabulary was trained with
# (any other name: llama 3's).
_SPLITS = {"tekken": _TEKKEN_SPLIT, "gpt-4o": _GPT4O_SPLIT, "llama4": _GPT4O_SPLIT, "kanana2": _GPT4O_SPLIT,
           "minimax-m2": _GPT4O_SPLIT, "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT,
           "megrez": _QWEN2_SPLIT}
_GEMMA = ("gemma", "gemma2", "gemma3")


class TextTokenizer:
    """encode/decode/chat template/EOS ids/byte views of tokens."""

    def __init__(self, tok: Tokenizer, chat_template: str | None, bos: str | None, eos: str | None,
                 add_bos: bool = False, extra_eos: tuple[str, ...] = ()):
        self.tok = tok
        self.chat_template = chat_template
        self.bos_token = bos
        self.eos_token = eos
        self.add_bos = add_bos
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        vocab = tok.get_vocab(with_added_tokens=True)
        self.byte_level = any(k.startswith("Ġ") for k in list(vocab)[:5000]) or "Ġ" in "".join(list(vocab)[:2000])
        ids = {vocab[t] for t in (eos, *extra_eos) if t and t in vocab}
        self.eos_ids = sorted(ids)
        self.stop_ids = sorted(ids | {vocab[t] for t in TURN_START if t in vocab})
        added = tok.get_added_tokens_decoder()
        self.control_ids = {i for i, t in added.items() if t.special and t.content not in SEMANTIC}
        self.bos_id = vocab.get(bos) if bos else None
        self._template = None
        if chat_template:
            env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, undefined=jinja2.ChainableUndefined)
            env.globals["raise_exception"] = _raise_template_error
            self._template = env.from_string(chat_template)

    # ---- encoding ----
    def encode(self, text: str, add_special: bool = True) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False).ids
        if add_special and self.add_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    def decode_visible(self, ids: list[int]) -> str:
        """What a user may see: control tokens (<|im_end|>, <|eot_id|>, ...) removed."""
        return self.tok.decode([i for i in ids if i not in self.control_ids], skip_special_tokens=False)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            tools: list[dict] | None = None, **template_kwargs) -> str:
        if self._template is None:
            # A model with no template: plain role-prefixed transcript.
            text = "".join(f"{m['role']}: {m.get('content') or ''}\n" for m in messages)
            return text + ("assistant:" if add_generation_prompt else "")
        extra = {**template_kwargs, **({"tools": tools} if tools else {})}
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     bos_token=self.bos_token or "", eos_token=self.eos_token or "", **extra)

    def encode_chat(self, messages: list[dict], tools: list[dict] | None = None, **template_kwargs) -> list[int]:
        text = self.apply_chat_template(messages, tools=tools, **template_kwargs)
        # The template writes BOS itself when the model wants one.
        return self.encode(text, add_special=not (self.bos_token and text.startswith(self.bos_token)))

    # ---- token views for logprobs ----
    @lru_cache(maxsize=65536)
    def token_bytes(self, token_id: int) -> bytes:
        piece = self.tok.id_to_token(token_id)
        if piece is None:
            return b""
        if self.byte_level and all(c in _BYTE_DECODER for c in piece):
            return bytes(_BYTE_DECODER[c] for c in piece)
        if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
            return bytes([int(piece[3:5], 16)])
        return self.decode([token_id]).encode("utf-8")

    def token_text(self, token_id: int) -> str:
        return self.token_bytes(token_id).decode("utf-8", errors="replace")


def _raise_template_error(message: str):
    raise jinja2.TemplateError(message)


def from_hf(hf_tokenizer) -> TextTokenizer:
    """Wrap a transformers tokenizer (what mlx-lm's loader returns)."""
    backend = hf_tokenizer.backend_tokenizer
    template = getattr(hf_tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()))
    add_bos = bool(hf_tokenizer("a").input_ids[:1] == [hf_tokenizer.bos_token_id]) if hf_tokenizer.bos_token_id is not None else False
    return TextTokenizer(backend, template, hf_tokenizer.bos_token, hf_tokenizer.eos_token, add_bos, END_OF_TURN)


def from_gguf_metadata(meta: dict) -> TextTokenizer:
    kind = meta.get("tokenizer.ggml.model", "gpt2")
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    types = _as_list(meta.get("tokenizer.ggml.token_type"))
    pre = meta.get("tokenizer.ggml.pre", "default")
    if kind == "gpt2":
        merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
        vocab = {t: i for i, t in enumerate(tokens)}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        if pre in ("smollm", "default", "gpt2"):
            split = [pre_tokenizers.Digits(individual_digits=True)] if pre == "smollm" else []
            tok.pre_tokenizer = pre_tokenizers.Sequence(split + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
        else:
            pattern = _SPLITS.get(pre) or (_QWEN2_SPLIT if pre.startswith("qwen") else _LLAMA3_SPLIT)
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False), byte_level])
        tok.decoder = decoders.ByteLevel()
    elif kind == "llama":
        tok, tokens = _sentencepiece(meta, tokens)
    else:
        raise ValueError(f"unsupported GGUF tokenizer model {kind!r}")
    control = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty in (3, 4)]
    tok.add_special_tokens(control)

    def tok_name(key):
        v = meta.get(key)
        return tokens[int(_scalar(v))] if v is not None else None

    add_bos = bool(_scalar(meta.get("tokenizer.ggml.add_bos_token", kind == "llama")))
    return TextTokenizer(tok, meta.get("tokenizer.chat_template"), tok_name("tokenizer.ggml.bos_token_id"),
                         tok_name("tokenizer.ggml.eos_token_id"), add_bos, END_OF_TURN)


def _sentencepiece(meta: dict, tokens: list[str]) -> tuple[Tokenizer, list[str]]:
    """SentencePiece BPE rebuilt as its tokenizer.json has it: merges recovered from the vocabulary,
    bytes for what it lacks. Llama 2 / Mistral: a metaspace before the first word, merges ranked
    by score. Gemma: spaces become metaspaces with nothing prepended, whitespace-run tokens are
    stored as real spaces (respelled), and the merge order is the file's token order (its scores
    do not follow it). Phi-3: a metaspace prepended by the normalizer, so a leading space adds one."""
    arch = str(meta.get("general.architecture", "llama"))
    strip = decoders.Strip(" ", 1, 0)
    if arch in _GEMMA:
        tokens = ["▁" * len(t) if " " in t and not t.strip() else t for t in tokens]
        ranks = {t: -float(i) for i, t in enumerate(tokens)}
    else:
        ranks = dict(zip(tokens, _as_list(meta.get("tokenizer.ggml.scores")) or [0.0] * len(tokens)))
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=_merges_from_scores(vocab, ranks), byte_fallback=True, fuse_unk=True))
    if arch in _GEMMA:
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
        strip = None
    elif arch == "phi3":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
                                    + ([strip] if strip else []))
    return tok, tokens


def _merges_from_scores(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """Every split of a piece into two pieces of the vocabulary is a merge, ranked by the piece's
    score (best first; ties: shorter left part first), as SentencePiece's BPE merges them."""
    merges = []
    for piece, score in scores.items():
        pairs = [(piece[:i], piece[i:]) for i in range(1, len(piece)) if piece[:i] in vocab and piece[i:] in vocab]
        merges += [(a, b, score) for a, b in sorted(pairs, key=lambda p: (vocab[p[0]], vocab[p[1]]))]
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in merges]


def _scalar(v):
    return v.item() if hasattr(v, "item") else v


def _as_list(v):
    if v is None:
        return []
    return v.tolist() if hasattr(v, "tolist") else list(v)
