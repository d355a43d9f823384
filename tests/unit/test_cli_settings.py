"""A configuration error is printed as written, whatever brackets it holds."""

from __future__ import annotations

import pytest
import typer

from claude_cluster.cli.settings import refuse
from claude_cluster.errors import ConfigError


def test_an_error_with_markup_like_text_is_printed_verbatim(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(typer.Exit) as exited:
        refuse(ConfigError("DATABASE_URL 'sqlite:///x[/bold].db' is not writable"))
    assert exited.value.exit_code == 2
    said = capsys.readouterr().err
    assert "configuration error: DATABASE_URL 'sqlite:///x[/bold].db' is not writable" in said
