"""Per-sequence samplers and logits processors.

Each sequence carries its own sampler (with its own RNG key when it has a seed) and
its own penalty processor, so requests with different settings share one batched
forward. Greedy sequences share one sampler so the batch samples in one call.
"""
from __future__ import annotations

import mlx.core as mx
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

from protocol.messages import Sampling

GREEDY_TEMPERATURE = 1e-5


def make_sampler(s: Sampling):
    """None means greedy: the batch's shared argmax sampler."""
    if s.temperature <= GREEDY_TEMPERATURE:
        return None
    inv_temp = 1.0 / s.temperature
    # Any 64-bit seed the APIs allow, negative ones too, as the unsigned key MLX takes.
    state = [mx.random.key(s.seed % 2**64)] if s.seed is not None else None

    def shaped(logprobs: mx.array) -> mx.array:
        """The logits sampling draws from: top-k, top-p and min-p cuts, then temperature."""
        x = logprobs
        if 0 < s.top_k < x.shape[-1]:  # k at or past the vocabulary keeps every token: nothing to cut
            x = apply_top_k(x, s.top_k)
        if 0.0 < s.top_p < 1.0:
            x = apply_top_p(x, s.top_p)
        if s.min_p > 0.0:
            x = apply_min_p(x, s.min_p)
        return x * inv_temp

    def key():
        if state is None:
            return None
        state[0], k = mx.random.split(state[0])
        return k

    def sample(logprobs: mx.array) -> mx.array:
        return mx.random.categorical(shaped(logprobs), key=key())

    # Unseeded samplers with the same settings are interchangeable: a batch samples all their
    # rows in one call. A seeded one keeps its own key stream, so it samples its row alone.
    sample.group = None if state is not None else (s.temperature, s.top_k, s.top_p, s.min_p)
    # For speculative decoding: the distribution a token is drawn from, and uniforms from the
    # same key stream (a seeded request stays reproducible).
    sample.probs = lambda logprobs: mx.softmax(shaped(logprobs).astype(mx.float32), axis=-1)
    sample.uniform = lambda n: mx.random.uniform(shape=(n,), key=key())
    sample.categorical = lambda logits: mx.random.categorical(logits, key=key())
    return sample


def log_probs(logits: mx.array) -> mx.array:
    """Logits normalized to log-probabilities over the last axis."""
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


class Since:
    """The tokens generated since a processor's first call. A processor's context starts with
    prompt tokens (all of them on the batch path, only the last on the solo path), so the
    first call marks where generation begins."""

    def __init__(self):
        self.base: int | None = None

    def __call__(self, context: mx.array) -> mx.array:
        if self.base is None:
            self.base = context.size
        return context[self.base:]


def make_penalties(s: Sampling, prompt: list[int], prior: list[int] | None = None):
    """OpenAI frequency/presence penalties count generated tokens; the repetition
    penalty (HF/vLLM style) covers prompt and output. `prior` holds tokens generated
    before a preemption, now part of the re-inserted prompt. Returns a list of processors."""
    procs = []
    before = mx.array(prior or [], dtype=mx.int32)
    if s.frequency_penalty or s.presence_penalty:
        freq, pres = s.frequency_penalty, s.presence_penalty
        since = Since()

        def openai_penalties(context: mx.array, logits: mx.array) -> mx.array:
            generated = mx.concatenate([before, since(context).astype(mx.int32)])
            if generated.size == 0:
                return logits
            counts = mx.zeros((logits.shape[-1],), logits.dtype).at[generated].add(1)
            return logits - (freq * counts + pres * (counts > 0).astype(logits.dtype))[None]

        openai_penalties.drafts = True  # a function of the context alone: draft positions may call it
        procs.append(openai_penalties)
    if s.repetition_penalty and s.repetition_penalty != 1.0:
        penalty = s.repetition_penalty
        prompt_ids = mx.array(sorted(set(prompt) | set(prior or [])), dtype=mx.int32)
        since_r = Since()

        def repetition(context: mx.array, logits: mx.array) -> mx.array:
            ids = mx.concatenate([prompt_ids, since_r(context).astype(mx.int32)])
            selected = logits[:, ids]
            selected = mx.where(selected < 0, selected * penalty, selected / penalty)
            logits[:, ids] = selected
            return logits

        repetition.drafts = True
        procs.append(repetition)
    return procs


def token_logprobs(rows: list[mx.array], tokens: list[int], top_n: list[int]):
    """Logprob of each chosen token and the top-n alternatives, one sync for all rows."""
    if not rows:
        return []
    lp = mx.stack(rows)
    chosen = mx.take_along_axis(lp, mx.array(tokens)[:, None], axis=-1)[:, 0]
    k = max(top_n)
    top_ids = top_vals = None
    if k > 0:
        top_ids = mx.argsort(-lp, axis=-1)[:, :k] if k > 20 else mx.argpartition(-lp, kth=k - 1, axis=-1)[:, :k]
        top_vals = mx.take_along_axis(lp, top_ids, axis=-1)
        mx.eval(chosen, top_ids, top_vals)
    else:
        mx.eval(chosen)
    out = []
    for i, n in enumerate(top_n):
        alts = []
        if n > 0:
            pairs = sorted(zip(top_vals[i].tolist(), top_ids[i].tolist()), reverse=True)[:n]
            alts = [(tid, val) for val, tid in pairs]
        out.append((chosen[i].item(), alts))
    return out


def force_tokens(script: list[int]):
    """A logits processor that makes generation follow `script` exactly (test-only scripts)."""
    since = Since()

    def force(context: mx.array, logits: mx.array) -> mx.array:
        i = min(since(context).size, len(script) - 1)
        return mx.where(mx.arange(logits.shape[-1]) == script[i], 0.0, -1e9)[None].astype(logits.dtype)
    force.drafts = True
    return force


def think_budget(budget: int, close_ids: list[int], still_thinking):
    """After `budget` generated tokens, if the answer is still in its thinking part, force the
    close tag's tokens (the reasoning stops, the answer begins)."""
    since = Since()
    forced = [0]

    def proc(context: mx.array, logits: mx.array) -> mx.array:
        n = since(context).size
        if n < budget or forced[0] >= len(close_ids) or not (forced[0] or still_thinking()):
            return logits
        tok = close_ids[forced[0]]
        forced[0] += 1
        return mx.where(mx.arange(logits.shape[-1]) == tok, 0.0, -1e9)[None].astype(logits.dtype)

    def draft_room(n: int) -> int | None:
        """How long a draft may be for a row that has generated n tokens: its positions (and the
        token after them) stay before the budget, since this processor counts what it forced and
        reads the answer's text state, which a rejected draft position must not touch; none while
        the close tag is being forced; any once it is done (or the answer had begun)."""
        if n < budget:
            return budget - n - 1
        if forced[0] >= len(close_ids) or (n > budget and not forced[0]):
            return None
        return 0

    proc.drafts, proc.draft_room = True, draft_room
    return proc


def step_logprobs(want: list) -> dict:
    """want: a step's (TokenOut, Sequence) pairs. For each output of a request that asks, per token
    (logprob, top alternatives), or None where its path gave no row; one sync for the whole step."""
    asked = [(o, i, row, seq.top_logprobs) for o, seq in want if seq.sampling.logprobs
             for i, row in enumerate(o.logprob_rows()) if row is not None]
    scored = token_logprobs([a[2] for a in asked], [a[0].tokens[a[1]] for a in asked], [a[3] for a in asked])
    out = {id(o): [None] * len(o.tokens) for o, seq in want if seq.sampling.logprobs}
    for (o, i, _, _), lp in zip(asked, scored):
        out[id(o)][i] = lp
    return out
