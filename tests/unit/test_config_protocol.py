"""Settings precedence and the pipe's codec."""
import msgspec
import pytest

from novamlx_gateway.config import load_config
from protocol import codec
from protocol import messages as m


def test_precedence_file_env_flags(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('port = 7000\nhost = "0.0.0.0"\napi_keys = ["a", "b"]\nrequest_timeout = 10\n')
    cfg = load_config(["--config", str(f)], environ={})
    assert (cfg.port, cfg.host, cfg.api_keys, cfg.request_timeout) == (7000, "0.0.0.0", ["a", "b"], 10.0)
    cfg = load_config(["--config", str(f)], environ={"NOVAMLX_PORT": "7100", "NOVAMLX_API_KEYS": "x,y"})
    assert (cfg.port, cfg.api_keys) == (7100, ["x", "y"])
    cfg = load_config(["--config", str(f), "--port", "7200", "--api-key", "z"], environ={"NOVAMLX_PORT": "7100"})
    assert (cfg.port, cfg.api_keys, cfg.admin_port) == (7200, ["z"], 6591)


def test_defaults_follow_the_spec():
    cfg = load_config([], environ={})
    assert (cfg.host, cfg.port, cfg.admin_port, cfg.max_concurrent_requests, cfg.request_timeout,
            cfg.max_request_size_mb) == ("127.0.0.1", 6590, 6591, 16, 300.0, 100.0)


def test_unknown_setting_in_file_is_an_error(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("prot = 1\n")
    with pytest.raises(SystemExit):
        load_config(["--config", str(f)], environ={})


@pytest.mark.parametrize("argv", [["--speculative-ngram", "-3"], ["--speculative-ngram", "100000"],
                                  ["--num-draft-tokens", "0"], ["--speculative-ngram-min-match", "0"],
                                  ["--speculative-ngram-max-match", "33"]])
def test_draft_lengths_out_of_range_stop_start_up(argv):
    with pytest.raises(SystemExit, match="between"):
        load_config(argv, environ={})
    with pytest.raises(SystemExit, match="between"):
        load_config([], environ={"NOVAMLX_" + argv[0][2:].replace("-", "_").upper(): argv[1]})
    assert load_config(["--speculative-ngram", "8", "--num-draft-tokens", "64"], environ={}).speculative_ngram == 8


def test_ngram_match_lengths_are_read_and_checked(tmp_path):
    cfg = load_config([], environ={"NOVAMLX_SPECULATIVE_NGRAM_MAX_MATCH": "8"})
    assert (cfg.speculative_ngram_min_match, cfg.speculative_ngram_max_match) == (2, 8)
    f = tmp_path / "c.toml"
    f.write_text("speculative-ngram-min-match = 3\nspeculative-ngram-max-match = 6\n")
    cfg = load_config(["--config", str(f)], environ={})
    assert (cfg.speculative_ngram_min_match, cfg.speculative_ngram_max_match) == (3, 6)
    with pytest.raises(SystemExit, match="must not exceed"):
        load_config(["--speculative-ngram-min-match", "5", "--speculative-ngram-max-match", "3"], environ={})


def test_codec_round_trip_and_rejects_junk():
    cmd = m.Generate("r1", "m", m.Sampling(temperature=0.5, stop=["x"]), messages=[m.ChatMessage("user", "hi")])
    line = codec.encode(cmd)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert codec.decode_command(line) == cmd
    ev = m.Step([m.Delta("r1", "a"), m.Delta("r2", "b")])
    assert codec.decode_event(codec.encode(ev)) == ev
    with pytest.raises(msgspec.DecodeError):
        codec.decode_command(b'{"type": "generate", "id": 3}')
    with pytest.raises(msgspec.DecodeError):
        codec.decode_event(b'{"type": "nonsense"}')


def test_ascii_lines_survive_a_relay_that_cuts_utf8():
    from protocol import codec
    from protocol import messages as m

    msg = m.Step([m.Delta("r1", text="Grüße 東京 ✓")])
    line = codec.encode_ascii(msg)
    assert line.isascii() and line.endswith(b"\n")
    assert codec.decode_event(line) == codec.decode_event(codec.encode(msg))
