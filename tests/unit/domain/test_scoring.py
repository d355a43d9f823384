from __future__ import annotations

from claude_cluster.domain.scoring import AgentView, matches, pick, score, waiting_for


def agent(
    id: str,
    specialties: list[str],
    *,
    active: int = 0,
    capacity: int = 3,
    completed: int = 0,
    failed: int = 0,
    avg: float = 0.0,
    caps: list[str] | None = None,
) -> AgentView:
    return AgentView(id, specialties, caps or [], active, capacity, completed, failed, avg)


def test_score_is_the_seed_formula() -> None:
    a = agent("a", ["backend"], active=1, capacity=2, completed=3, failed=1, avg=120 * 60)
    # +10 (backend) −5·0.5 +2·0.75 −|120−60|/60
    assert score(a, ["backend"], 60) == 10 - 2.5 + 1.5 - 1.0


def test_candidates_must_match_and_have_room() -> None:
    backend = agent("backend", ["backend"])
    full = agent("full", ["backend"], active=3)
    frontend = agent("frontend", ["frontend"])
    assert [a.id for a in pick([backend, full, frontend], ["backend"], 60)] == ["backend"]
    assert pick([frontend], ["backend"], 60) == []
    assert [a.id for a in pick([frontend], ["backend"], 60, require_match=False)] == ["frontend"]


def test_no_requirement_and_general_match_everyone() -> None:
    a = agent("a", ["frontend"])
    assert matches(a, [])
    assert matches(a, ["general"])
    assert matches(agent("g", ["general"]), ["backend"])
    assert matches(agent("c", [], caps=["backend"]), ["backend"])


def test_ties_go_to_the_less_loaded_agent() -> None:
    busy = agent("a", ["backend"], active=2)
    idle = agent("b", ["backend"])
    assert [a.id for a in pick([busy, idle], ["backend"], 60)] == ["b", "a"]


def test_preferences_raise_the_score_but_restrict_nothing() -> None:
    tester = agent("tester", ["testing"])
    backend = agent("backend", ["backend"])
    best = pick([backend, tester], ["general"], 60, preferences=["testing"])
    assert [a.id for a in best] == ["tester", "backend"]
    assert [a.id for a in pick([backend], ["general"], 60, preferences=["testing"])] == ["backend"]


def test_waiting_for_names_what_no_agent_has() -> None:
    backend = agent("backend", ["backend"], active=3)  # busy agents still count
    assert waiting_for([backend], ["backend"]) is None
    assert waiting_for([backend], ["general"]) is None
    assert waiting_for([backend], ["testing"]) == "waiting for an agent with: testing"
    assert waiting_for([], ["general"]) == "waiting for an agent: none is online and ready"


def test_a_task_that_needs_a_runner_goes_only_to_agents_that_offer_it() -> None:
    from claude_cluster.domain import scoring as sc

    def view(agent_id: str, runners: list[str] | None) -> sc.AgentView:
        return sc.AgentView(agent_id, ["backend"], [], 0, 2, 0, 0, 0.0, runners=runners)

    agents = [view("old", None), view("cmd", ["command"]), view("both", ["claude", "command"])]
    assert [a.id for a in sc.pick(agents, [], 60, runner="claude")] == ["both"]
    assert {a.id for a in sc.pick(agents, [], 60)} == {"old", "cmd", "both"}
    # a manual assignment overrides the requirements, never the runner
    assert [a.id for a in sc.pick(agents[:2], [], 60, require_match=False, runner="claude")] == []
    assert sc.waiting_for(agents[:2], [], "claude") == "waiting for an agent with: runner claude"
    assert sc.waiting_for(agents, ["testing"], "claude") == (
        "waiting for an agent with: testing, runner claude"
    )
    assert sc.waiting_for(agents, [], "claude") is None
