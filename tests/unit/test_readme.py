"""The README's promises that can drift: its commands and its settings table."""

from pathlib import Path

from config.settings import variables

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_first_screen_has_the_two_commands() -> None:
    first_screen = "\n".join(README.splitlines()[:25])
    assert "make demo" in first_screen and "make test" in first_screen


def test_every_setting_is_documented() -> None:
    for env, default, description in variables():
        row = f"| `{env}` | {f'`{default}`' if default else '—'} | {description} |"
        assert row in README, f"README's configuration table is out of date for {env}"
