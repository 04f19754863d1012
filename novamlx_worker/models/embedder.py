"""Embedding and reranking models: the encoder families mlx-embeddings implements.

Inputs are tokenized (after the prompt the folder names for the input type), sorted by length
and run in pad-and-stack batches with attention masks. BERT, XLM-RoBERTa (BGE-M3) and ModernBERT
give token states that are pooled here as the folder's sentence-transformers config says (CLS,
mean, max or last token), then L2-normalised; other families mlx-embeddings loads pool inside
the model. A family nothing here implements is still listed, and refuses requests with a 400
that names it. A folder whose config names a `...ForSequenceClassification` architecture is a
cross-encoder: it scores (query, document) pairs with its classification head; any other model
reranks by cosine similarity.
"""
from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .embed_recipe import Recipe, pool, read_recipe

BATCH = 64
TOKEN_STATE_FAMILIES = ("bert", "xlm_roberta", "modernbert")  # pooled here, by the folder's recipe


class EmbedError(Exception):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass
class Embedder:
    id: str
    path: str
    model: nn.Module
    tokenizer: object  # a transformers tokenizer
    max_len: int
    dims: int
    cross_encoder: bool
    classifier: nn.Linear | None = None
    aliases: list[str] = field(default_factory=list)
    vocab_size: int = 0  # token ids are checked against it: an id past the table reads out of bounds
    created: int = field(default_factory=lambda: int(time.time()))
    family: str = "bert"
    recipe: Recipe = field(default_factory=Recipe)
    refusal: str = ""  # a family nothing here implements: every request gets this message

    @property
    def kind(self) -> str:
        return "rerank" if self.cross_encoder else "embedding"

    def _ids(self, texts: list[str] | None, tokens: list[list[int]] | None, truncate: bool,
             first: int = 0) -> list[list[int]]:
        """Checked token ids of a slice of the inputs; `first` is the slice's index in the request."""
        if tokens is None:
            tokens = [self.tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
        out = []
        for i, ids in enumerate(tokens, first):
            if not ids:
                raise EmbedError(f"input[{i}] is empty.", "input")
            bad = next((t for t in ids if not 0 <= t < (self.vocab_size or 2**31)), None)
            if bad is not None:
                raise EmbedError(f"input[{i}] has token id {bad}, outside this model's vocabulary "
                                 f"(0 to {self.vocab_size - 1}).", "input")
            if len(ids) > self.max_len:
                if not truncate:
                    raise EmbedError(f"input[{i}] has {len(ids)} tokens, more than this model's maximum of "
                                     f"{self.max_len}. Shorten it or send truncate=true.", "input")
                ids = ids[: self.max_len - 1] + ids[-1:]  # keep the closing [SEP]
            out.append(list(ids))
        return out

    @staticmethod
    def _stack(batch: list[list[int]], token_types: list[list[int]] | None = None):
        n = max(len(x) for x in batch)
        ids = np.zeros((len(batch), n), dtype=np.int32)
        mask = np.zeros((len(batch), n), dtype=np.int32)
        types = np.zeros((len(batch), n), dtype=np.int32)
        for i, x in enumerate(batch):
            ids[i, : len(x)] = x
            mask[i, : len(x)] = 1
            if token_types is not None:
                types[i, : len(x)] = token_types[i]
        return mx.array(ids), mx.array(mask), mx.array(types)

    def _forward(self, batch: list[list[int]], token_types: list[list[int]] | None = None):
        ids, mask, types = self._stack(batch, token_types)
        return self.model(ids, token_type_ids=types, attention_mask=mask)

    def _vectors(self, batch: list[list[int]]) -> mx.array:
        """[B, dims] unit vectors for a batch of token ids."""
        if self.family not in TOKEN_STATE_FAMILIES:
            return self._forward(batch).text_embeds.astype(mx.float32)
        ids, mask, types = self._stack(batch)
        if self.family == "modernbert":  # the inner encoder: the wrapper pools by its own classifier setting
            out = self.model.model(ids, attention_mask=mask)
            hidden = out["last_hidden_state"] if isinstance(out, dict) else out[0]
        else:
            hidden = self.model(ids, token_type_ids=types, attention_mask=mask).last_hidden_state
        return pool(hidden, mask, self.recipe.pooling)

    def _prompt(self, input_type: str | None) -> str:
        try:
            return self.recipe.prompt(input_type)
        except KeyError:
            names = ", ".join(sorted(self.recipe.prompts)) or "none"
            raise EmbedError(f"Model `{self.id}` has no prompt named {input_type!r} (its prompts: {names}).",
                             "input_type") from None

    # The work comes as generators that yield after each batch: the engine thread runs one
    # piece between two decode steps, so a 20,000-document rerank never stalls the streams
    # (or the watchdog), and an abandoned request stops at the next piece.
    def embed_steps(self, texts: list[str] | None, tokens: list[list[int]] | None, truncate: bool = False,
                    input_type: str | None = None, prompt: str | None = None):
        """Yields between batches; returns (vectors [n, dims] float32, tokens used). Texts get the
        prompt of `input_type` (or `prompt` itself); token ids are taken as they are."""
        if self.refusal:
            raise EmbedError(self.refusal, "model")
        if texts is not None:
            prefix = self._prompt(input_type) if prompt is None else prompt
            texts = [prefix + t for t in texts] if prefix else texts
        inputs = texts if tokens is None else tokens
        ids: list[list[int]] = []
        for start in range(0, len(inputs), BATCH):
            piece = inputs[start: start + BATCH]
            ids += self._ids(piece if tokens is None else None, piece if tokens is not None else None, truncate, start)
            yield
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = np.zeros((len(ids), self.dims), dtype=np.float32)
        for start in range(0, len(order), BATCH):
            chunk = order[start: start + BATCH]
            out[chunk] = np.array(self._vectors([ids[i] for i in chunk]))
            yield
        return out, sum(len(x) for x in ids)

    def rerank_steps(self, query: str, documents: list[str]):
        """Yields between batches; returns (one relevance score per document, tokens used, method)."""
        if not self.cross_encoder:  # each side with its own prompt, when the model names them (a refusal: embed_steps says it)
            q, q_used = yield from self.embed_steps([query], None, True, prompt=self.recipe.first_prompt("query"))
            docs, used = yield from self.embed_steps(documents, None, True, prompt=self.recipe.first_prompt(
                "document", "passage", "corpus"))
            return (docs @ q[0]).tolist(), used + q_used, "bi-encoder"
        scores, used = [], 0
        for start in range(0, len(documents), BATCH):
            enc = [self.tokenizer(query, d, truncation="only_second", max_length=self.max_len)
                   for d in documents[start: start + BATCH]]
            pooled = self._forward([e["input_ids"] for e in enc], [e.get("token_type_ids") or [0] * len(e["input_ids"])
                                                                   for e in enc]).pooler_output
            logits = self.classifier(pooled).astype(mx.float32)
            scores += np.array(logits[:, 0] if logits.shape[-1] == 1 else logits[:, -1]).tolist()
            used += sum(len(e["input_ids"]) for e in enc)
            yield
        return scores, used, "cross-encoder"


def _cross_encoder(path: str, config: dict):
    """A BERT-family `...ForSequenceClassification` folder: the encoder (its weights under
    `bert.` / `roberta.`), mlx-embeddings' model class for it, and the classification head."""
    from mlx_embeddings.utils import _get_classes
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    weights = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        weights.update(load_file(str(f)))
    w = weights.get("classifier.weight")
    if w is None:
        raise ValueError(f"{path}: a sequence-classification model without classifier weights")
    model_class, args_class = _get_classes(config)[:2]
    model = model_class(args_class.from_dict(config))
    prefixes = ("bert.", "roberta.", "model.")
    encoder = {next((k[len(p):] for p in prefixes if k.startswith(p)), k): mx.array(v)
               for k, v in weights.items() if not k.startswith("classifier.") and "position_ids" not in k}
    model.load_weights(list(encoder.items()), strict=True)
    model.eval()  # no dropout
    head = nn.Linear(w.shape[1], w.shape[0])
    head.weight = mx.array(w)
    head.bias = mx.array(weights.get("classifier.bias", np.zeros(w.shape[0], np.float32)))
    return model, AutoTokenizer.from_pretrained(path), head


def family_of(config: dict) -> str:
    return str(config.get("model_type", "")).replace("-", "_").lower()


def supported(family: str) -> bool:
    return bool(family) and importlib.util.find_spec(f"mlx_embeddings.models.{family}") is not None


def load_embedder(path: str, model_id: str | None = None, aliases: list[str] | None = None) -> Embedder:
    config = json.loads((Path(path) / "config.json").read_text())
    name = model_id or Path(path).name
    family = family_of(config)
    if not supported(family):
        return Embedder(name, str(path), None, None, 0, int(config.get("hidden_size") or config.get("n_embd") or 0),
                        False, aliases=aliases or [], family=family, refusal=(
                            f"Model `{name}` is a {family or 'unknown'!r} embedding model, a family this server "
                            f"cannot run (it runs {', '.join(TOKEN_STATE_FAMILIES)} and the other families "
                            "mlx-embeddings implements)."))
    cross = any(a.endswith("ForSequenceClassification") for a in config.get("architectures", []))
    classifier = None
    if cross:
        model, hf, classifier = _cross_encoder(path, config)
    else:
        from mlx_embeddings.utils import load

        model, wrapper = load(path)
        hf = getattr(wrapper, "_tokenizer", wrapper)
    mx.eval(model.parameters())
    window = int(config.get("max_position_embeddings", 512))
    if family == "xlm_roberta":  # positions start after the padding index: 514 positions hold 512 tokens
        window -= int(config.get("pad_token_id", 1)) + 1
    return Embedder(name, str(path), model, hf, window,
                    int(config["hidden_size"]), cross, classifier, aliases or [], vocab_size=int(config.get("vocab_size", 0)),
                    family=family, recipe=read_recipe(path))
