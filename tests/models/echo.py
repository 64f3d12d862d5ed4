"""Scripted model for tests: echoes the call's kind, agent, iteration and last message."""

import json

LATENCY_S = 0.0
COST_PER_TOKEN = (0.0, 0.0)


def respond(messages: list[dict], info: dict) -> str:
    """Reply with a JSON summary of what the model was asked."""
    return json.dumps(
        {
            "kind": info.get("kind"),
            "agent_id": info.get("agent_id"),
            "iteration": info.get("iteration"),
            "last": messages[-1]["content"] if messages else None,
        }
    )
