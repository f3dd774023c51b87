"""The console script turns a user's mistake into one line and exit status 2, not a trace."""

import sys

import pytest

from recsched import cli


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["recsched", *args])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    return int(exc.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize(
    "args,says",
    [
        (("bench", "nosuch", "--qps", "10"), "unknown model 'nosuch'; known models: rmc1"),
        (("capacity", "ncf", "--sla-ms", "5", "--classes", "hi:0.5:10,lo:0.6:1"), "shares sum"),
        (("bench", "ncf", "--qps", "10", "--sizes", "weird:[1]"), "unknown kind 'weird'"),
    ],
)
def test_a_users_mistake_is_one_line_and_status_2(monkeypatch, capsys, args, says):
    monkeypatch.delenv("RECSCHED_DEBUG", raising=False)
    code, err = run_main(monkeypatch, capsys, *args)
    assert code == 2
    assert err.startswith("error: ") and says in err
    assert "Traceback" not in err
    assert "weird:[1]" in err or "weird" not in args[-1], "brackets in a message are not markup"


def test_debug_shows_the_traceback(monkeypatch):
    monkeypatch.setenv("RECSCHED_DEBUG", "1")
    monkeypatch.setattr(sys, "argv", ["recsched", "bench", "nosuch", "--qps", "10"])
    with pytest.raises(ValueError, match="unknown model"):
        cli.main()


def test_usage_errors_keep_clicks_status(monkeypatch, capsys):
    """A missing argument is click's usage error (status 2 too), untouched."""
    code, err = run_main(monkeypatch, capsys, "bench")
    assert code == 2 and "Missing argument" in err
