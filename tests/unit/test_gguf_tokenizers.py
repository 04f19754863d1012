"""GGUF tokenizers rebuilt from metadata against transformers' own conversion of the same
metadata (the reference HF uses for GGUF files), on a mixed corpus: code, CJK, emoji, whitespace
runs, digits, markup, special tokens. BPE with three pre-tokenizers (SmolLM2's real vocabulary)
and SentencePiece BPE (a synthetic llama-style vocabulary with byte fallback)."""
import gguf
import pytest
from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

from novamlx_worker.text.tokenizer import from_gguf_metadata
from protocol.naming import default_model_path

CORPUS = [
    "def f(x):\n    return x**2  # square\n\n\tprint('hi')", "class A:\r\n    pass\r\n",
    "日本語のテキストと中文字符，标点。", "한국어 텍스트", "emoji 😀🎉👍🏽 family 👨‍👩‍👧 flag 🇫🇷",
    "   multiple    spaces\n\n\n\nnewlines\t\ttabs  ", " leading space", "Ünïcödé façade naïve coöperate",
    "1234567890 3.14159 -42 1e10 2024-12-01", "<script>alert('x')</script> &amp; <b>bold</b>",
    "a" * 60 + " " + "ab" * 25, "\u00a0nbsp\u200bzero width\r\nCRLF", "don't I'll we're they've",
    "camelCaseWord getHTTPResponse XMLHttpRequest iPhone McDonald's",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
]


def reference(meta: dict):
    grouped = {group: {name: meta[f"tokenizer.{key}"] for key, name in renames.items() if f"tokenizer.{key}" in meta}
               for group, renames in GGUF_TOKENIZER_MAPPING.items()}
    return convert_gguf_tokenizer(meta["general.architecture"], grouped["tokenizer"])[0]


def assert_same(meta: dict, corpus=CORPUS):
    ours, ref = from_gguf_metadata(meta), reference(meta)
    for text in corpus:
        assert ours.encode(text, add_special=False) == ref.encode(text, add_special_tokens=False).ids, repr(text)
        ids = ours.encode(text, add_special=False)
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=False), repr(text)


@pytest.fixture(scope="module")
def smollm_meta():
    reader = gguf.GGUFReader(default_model_path())
    return {name: field.contents() for name, field in reader.fields.items()}


@pytest.mark.parametrize("pre", ["smollm", "llama-bpe", "qwen2", "tekken", "gpt-4o", "llama4", "deepseek-r1-qwen"])
def test_bpe_vocabulary_with_each_pre_tokenizer(smollm_meta, pre):
    assert_same({**smollm_meta, "tokenizer.ggml.pre": pre})


def sentencepiece_meta() -> dict:
    """A llama-style SentencePiece vocabulary: control tokens, 256 byte tokens, then pieces whose
    scores rank their merges (longer pieces later, as SentencePiece trains them)."""
    words = ["the", "quick", "brown", "fox", "jump", "over", "lazy", "dog", "def", "return", "print", "hello",
             "world", "class", "pass", "space", "new", "line", "tab", "don", "we", "re", "they", "ve"]
    pieces = set()
    for w in words:
        for i in range(1, len(w) + 1):
            pieces.update({w[:i], "▁" + w[:i], w[i - 1:]})
    pieces |= {"▁", "▁▁", "▁▁▁▁"} | set("abcdefghijklmnopqrstuvwxyz'")
    ordered = sorted(pieces, key=lambda p: (len(p), p))
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)] + ordered
    scores = [0.0] * 259 + [-float(i) for i in range(len(ordered))]
    types = [2, 3, 3] + [6] * 256 + [1] * len(ordered)
    return {"general.architecture": "llama", "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types, "tokenizer.ggml.bos_token_id": 1,
            "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0}


def test_sentencepiece_vocabulary():
    assert_same(sentencepiece_meta(), CORPUS[:-1] + ["the quick brown fox jumps over the lazy dog", "  two  spaces",
                                                     "thequickbrown", "<s>hello</s>"])
    tok = from_gguf_metadata(sentencepiece_meta())
    assert tok.encode("hello")[0] == 1  # llama's SentencePiece files add BOS
    assert tok.decode(tok.encode("héllo 😀", add_special=False)) == "héllo 😀"  # bytes fall back and come back


def test_case_splitting_pre_tokenizers_differ_from_llama3s(smollm_meta):
    """tekken and gpt-4o split at case changes: the corpus line with camelCase tells them apart
    (so the parametrized test above checks the right split, not a lucky one)."""
    text = CORPUS[-2]
    ids = {pre: reference({**smollm_meta, "tokenizer.ggml.pre": pre}).encode(text, add_special_tokens=False).ids
           for pre in ("llama-bpe", "tekken", "gpt-4o")}
    assert ids["tekken"] != ids["llama-bpe"] and ids["gpt-4o"] != ids["llama-bpe"]


def gemma_meta() -> dict:
    """A Gemma-style SentencePiece vocabulary: <pad> <eos> <bos> <unk>, bytes, pieces, and
    whitespace runs stored as real spaces (as Gemma GGUFs have them), no space prefix."""
    m = sentencepiece_meta()
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>"] + [t for t in m["tokenizer.ggml.tokens"][3:] if t not in ("▁▁", "▁▁▁▁")]
    tokens += ["  ", "    ", "\n\n"]
    types = [3, 3, 3, 2] + [6] * 256 + [1] * (len(tokens) - 260)
    return {**m, "general.architecture": "gemma3", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": [0.0] * len(tokens), "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1, "tokenizer.ggml.unknown_token_id": 3,
            "tokenizer.ggml.padding_token_id": 0, "tokenizer.ggml.add_space_prefix": False}


EXTRA = ["the quick brown fox jumps over the lazy dog", "  two  spaces", " leading", "a\n\nb", "thequickbrown"]


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_gemma_sentencepiece_vocabulary(arch):
    """No metaspace prepended, spaces as metaspaces, whitespace runs respelled, merges in file order."""
    assert_same({**gemma_meta(), "general.architecture": arch}, CORPUS[:-1] + EXTRA)
    tok = from_gguf_metadata(gemma_meta())
    assert tok.tok.id_to_token(tok.encode("the", add_special=False)[0]) == "the"  # no "▁the": nothing prepended


def test_phi3_sentencepiece_vocabulary():
    """Phi-3 prepends its metaspace in the normalizer: a leading space gives one more."""
    assert_same({**sentencepiece_meta(), "general.architecture": "phi3"}, CORPUS[:-1] + EXTRA)


def test_special_tokens_stay_whole(smollm_meta):
    tok = from_gguf_metadata(smollm_meta)
    ids = tok.encode("<|im_start|>user<|im_end|>", add_special=False)
    assert ids[0] == 1 and ids[-1] == 2 and len(ids) == 3
