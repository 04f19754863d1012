"""Stop strings and incremental detokenization (pure functions, no model)."""
from novamlx_worker.text.detok import IncrementalDecoder
from novamlx_worker.text.stops import StopMatcher


def feed_all(matcher, pieces):
    out, hit = "", None
    for p in pieces:
        text, hit = matcher.feed(p)
        out += text
        if hit:
            break
    return out + ("" if hit else matcher.flush()), hit


def test_stop_spanning_pieces():
    assert feed_all(StopMatcher(["END"]), ["abc E", "N", "D more"]) == ("abc ", "END")


def test_stop_holds_back_only_possible_prefixes():
    m = StopMatcher(["###"])
    assert m.feed("ab#") == ("ab", None)
    assert m.feed("x") == ("#x", None)


def test_earliest_stop_wins_and_no_stop_passes_through():
    assert feed_all(StopMatcher(["cd", "b"]), ["abcd"]) == ("a", "b")
    assert feed_all(StopMatcher([]), ["abc", "def"]) == ("abcdef", None)
    assert feed_all(StopMatcher(["zz"]), ["z"]) == ("z", None)


def test_decoder_never_splits_utf8():
    from novamlx_worker.text.tokenizer import from_gguf_metadata
    from tests.fixtures.tiny_models import gguf_metadata

    tok = from_gguf_metadata(gguf_metadata())
    text = "naïve café — 日本語 🙂 done"
    ids = tok.encode(text)
    dec = IncrementalDecoder(tok.decode)
    pieces = [dec.add(t) for t in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + dec.flush() == text
