"""The aider runner against a fake ``aider`` printing the documented text shapes.

Aider is not installed here; the fake prints what ``aider --message`` prints (see the CLI
reference notes, section B.2), including its habit of exiting 0 after an LLM failure.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from claude_cluster.domain.states import ErrorCategory
from claude_cluster.runners.aider import AiderRunner, AiderState, aider_events, parse_token_count
from claude_cluster.runners.base import EventKind
from tests.unit.runners.helpers import Recorder, make_script, make_spec


def fake_aider(
    tmp_path: Path, output: list[str], exit_code: int = 0, stderr: str = ""
) -> AiderRunner:
    """An aider that records its argv, prints ``output`` lines and exits."""
    script = make_script(
        tmp_path,
        "aider",
        f"""
        import json, sys
        with open({str(tmp_path / "argv.json")!r}, "w") as f:
            json.dump(sys.argv[1:], f)
        for line in json.loads({json.dumps(output)!r}):
            print(line, flush=True)
        sys.stderr.write({stderr!r})
        sys.exit({exit_code})
        """,
    )
    return AiderRunner(cli_path=str(script), kill_grace=1.0)


async def test_usage_and_cost_are_scraped(tmp_path: Path) -> None:
    output = [
        "Aider v0.86.1",
        "Main model: anthropic/claude-sonnet-4-5 with diff edit format",
        "Tokens: 2.1k sent, 1.5k cache hit, 150 received. Cost: $0.0080 message, $0.0240 session.",
        "Applied edit to calc.py",
        "Tokens: 12k sent, 1.2k cache write, 3.4k cache hit, 250 received.",
        "Cost: $0.0500 message, $0.0740 session.",
    ]
    events = Recorder()
    outcome = await fake_aider(tmp_path, output).run(make_spec(tmp_path, prompt="-x fix"), events)

    assert outcome.succeeded, outcome.message
    assert outcome.cost_usd == pytest.approx(0.074)
    assert (outcome.input_tokens, outcome.output_tokens) == (14_100, 400)
    assert (outcome.cache_read_tokens, outcome.cache_creation_tokens) == (4_900, 1_200)
    assert outcome.num_turns == 2
    assert outcome.message == "Applied edit to calc.py"
    assert len(events.of(EventKind.USAGE)) == 3
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv[:3] == ["--yes-always", "--no-auto-commits", "--no-stream"]
    assert argv[-1] == "--message=-x fix"  # one token: the prompt cannot pass for an option


@pytest.mark.parametrize(
    ("lines", "category"),
    [
        (
            [
                'litellm.AuthenticationError: AnthropicException - {"type":"error","error":'
                '{"type":"authentication_error","message":"invalid x-api-key"}}',
                "The API provider is not able to authenticate you. Check your API key.",
            ],
            ErrorCategory.AUTH_ERROR,
        ),
        (
            [
                "litellm.RateLimitError: AnthropicException - rate limited",
                "Retrying in 0.2 seconds...",
                "litellm.RateLimitError: AnthropicException - rate limited",
                "The API provider has rate limited you. Try again later or check your quotas.",
            ],
            ErrorCategory.RATE_LIMITED,
        ),
        (
            ["litellm.InternalServerError: AnthropicException - Overloaded"],
            ErrorCategory.OVERLOADED,
        ),
        (["The API provider's servers are down or overloaded."], ErrorCategory.OVERLOADED),
        (["litellm.NotFoundError: model claude-nope not found"], ErrorCategory.EXECUTION_ERROR),
    ],
)
async def test_failures_despite_exit_zero(
    tmp_path: Path, lines: list[str], category: ErrorCategory
) -> None:
    events = Recorder()
    outcome = await fake_aider(tmp_path, lines).run(make_spec(tmp_path), events)
    assert outcome.exit_code == 0
    assert outcome.error_category is category
    assert outcome.message in lines
    assert events.of(EventKind.API_ERROR)


async def test_an_error_retried_away_is_a_success(tmp_path: Path) -> None:
    output = [
        "litellm.RateLimitError: AnthropicException - rate limited",
        "Retrying in 0.2 seconds...",
        "Tokens: 900 sent, 80 received. Cost: $0.0010 message, $0.0010 session.",
    ]
    events = Recorder()
    outcome = await fake_aider(tmp_path, output).run(make_spec(tmp_path), events)
    assert outcome.succeeded, outcome.message
    assert events.of(EventKind.API_RETRY)[0].data["retry_delay_ms"] == pytest.approx(200)


async def test_a_startup_error_exits_non_zero(tmp_path: Path) -> None:
    runner = fake_aider(tmp_path, [], exit_code=1, stderr="Error: not a git repository\n")
    outcome = await runner.run(make_spec(tmp_path), Recorder())
    assert outcome.error_category is ErrorCategory.EXECUTION_ERROR
    assert "not a git repository" in outcome.message


def test_the_litellm_line_names_the_error_over_the_explanation() -> None:
    state = AiderState()
    aider_events("litellm.AuthenticationError: bad key", state)
    aider_events("The API provider is not able to authenticate you. Check your API key.", state)
    assert state.error == "litellm.AuthenticationError: bad key"


@pytest.mark.parametrize(
    ("text", "suffix", "count"),
    [("150", "", 150), ("2.1", "k", 2100), ("12", "k", 12_000), ("1.2", "M", 1_200_000)],
)
def test_token_counts(text: str, suffix: str, count: int) -> None:
    assert parse_token_count(text, suffix) == count
