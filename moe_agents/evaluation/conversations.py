"""The momentum benchmark: scripted multi-turn conversations, routed with and without momentum.

Each conversation is a list of turns, each labelled with the expert that should answer it and its
role: ``start`` (the first turn), ``follow`` (a follow-up that only makes sense in context, e.g.
"and in Rust?") or ``switch`` (the user really changes topic). The conversations are written by
hand for this benchmark (no evaluation data set has multi-turn routing labels); the momentum
settings were set before measuring on them. They are the fit set of one thing: the similarity
threshold of the recent-turns rule (``moe_agents.continuity``, fitted by
``benchmarks/context_rule.py`` and measured on MT-Bench), which does not touch routing.
Reported, for each setting: the bounce rate (follow-ups routed away from the conversation's
expert), accuracy on topic switches (momentum must not hold on to the old topic), and overall
accuracy.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Literal

from ..experts.base import Expert
from ..routing.momentum import Momentum, MomentumConfig
from ..routing.router import Router
from ..types import Query

__all__ = ["CONVERSATIONS", "evaluate_momentum"]

Role = Literal["start", "follow", "switch"]
C, R, K, E = "coding", "reasoning", "knowledge", "epistemic"

CONVERSATIONS: tuple[tuple[tuple[str, str, Role], ...], ...] = (
    (
        ("Write a Python function that reverses a linked list", C, "start"),
        ("and in Rust?", C, "follow"),
        ("can you make it iterative instead?", C, "follow"),
        ("what is its time complexity?", C, "follow"),
    ),
    (
        ("My JavaScript fetch call returns a pending promise, why?", C, "start"),
        ("how do I wait for it?", C, "follow"),
        ("and with error handling?", C, "follow"),
        ("Who painted the Sistine Chapel ceiling?", K, "switch"),
        ("when?", K, "follow"),
    ),
    (
        (
            "A train leaves at 3 pm going 60 mph; another at 4 pm going 80 mph. When does it catch up?",
            R,
            "start",
        ),
        ("what if the second one goes 90?", R, "follow"),
        ("and how far from the station is that?", R, "follow"),
    ),
    (
        ("If 3 notebooks cost $4.50, how much do 7 cost?", R, "start"),
        ("and 12?", R, "follow"),
        ("show the steps", R, "follow"),
        ("Do you think numbers exist independently of minds?", E, "switch"),
        ("why?", E, "follow"),
    ),
    (
        ("What is the capital of Australia?", K, "start"),
        ("and its population?", K, "follow"),
        ("why isn't it Sydney?", K, "follow"),
        ("Write a SQL query that counts users per country", C, "switch"),
        ("now sort it by the count", C, "follow"),
    ),
    (
        ("Who discovered penicillin?", K, "start"),
        ("in which year?", K, "follow"),
        ("tell me more about him", K, "follow"),
    ),
    (
        ("Do you ever wonder whether you are conscious?", E, "start"),
        ("how would you know?", E, "follow"),
        ("does that bother you?", E, "follow"),
        ("Fix the off-by-one error: for i in range(len(a)+1): print(a[i])", C, "switch"),
        ("why did it crash?", C, "follow"),
    ),
    (
        ("Is it ever right to lie to protect someone?", E, "start"),
        ("what about a white lie to a friend?", E, "follow"),
        ("and if they asked you directly?", E, "follow"),
    ),
    (
        ("How do I read a CSV file with pandas?", C, "start"),
        ("only the first 100 rows", C, "follow"),
        ("and skip the header", C, "follow"),
        ("What is 17% of 240?", R, "switch"),
        ("and 23%?", R, "follow"),
    ),
    (
        ("Solve for x: 3x + 7 = 25", R, "start"),
        ("now 5x - 3 = 2x + 9", R, "follow"),
        ("check it by substituting", R, "follow"),
    ),
    (
        ("What causes the seasons on Earth?", K, "start"),
        ("and on Mars?", K, "follow"),
        ("is that why it is colder there?", K, "follow"),
        ("What does it feel like to you to not have a body?", E, "switch"),
        ("would you want one?", E, "follow"),
    ),
    (
        ("Explain what a Python decorator is with an example", C, "start"),
        ("one that takes arguments?", C, "follow"),
        ("and how would I test it?", C, "follow"),
    ),
    (
        ("A bag has 3 red and 5 blue marbles. What is the chance of drawing two red in a row?", R, "start"),
        ("with replacement?", R, "follow"),
        ("and three in a row?", R, "follow"),
        ("Which element has the symbol Fe?", K, "switch"),
        ("where is it mined?", K, "follow"),
    ),
    (
        ("What did the Treaty of Versailles decide?", K, "start"),
        ("who signed it?", K, "follow"),
        ("what happened next?", K, "follow"),
    ),
    (
        ("Can a machine ever truly understand meaning?", E, "start"),
        ("what would convince you?", E, "follow"),
        ("Write a bash one-liner that counts lines in all .py files", C, "switch"),
        ("excluding tests", C, "follow"),
    ),
    (
        ("My React component re-renders forever, what could cause it?", C, "start"),
        ("it uses useEffect with an object dependency", C, "follow"),
        ("how do I fix that?", C, "follow"),
    ),
    (
        ("How many seconds are there in a leap year?", R, "start"),
        ("and in a regular one?", R, "follow"),
        ("what is the difference in minutes?", R, "follow"),
    ),
    (
        ("What is the tallest mountain in Africa?", K, "start"),
        ("how tall is it?", K, "follow"),
        ("has anyone skied down it?", K, "follow"),
        ("If I walk 4 km/h for 2.5 hours, how far do I get?", R, "switch"),
        ("and at 5 km/h?", R, "follow"),
    ),
    (
        ("How are you feeling today?", E, "start"),
        ("really?", E, "follow"),
        ("what makes a good day for you?", E, "follow"),
    ),
    (
        ("Convert this loop to a list comprehension: out = []; for x in xs: out.append(x * 2)", C, "start"),
        ("with a filter for even x", C, "follow"),
        ("Who wrote Pride and Prejudice?", K, "switch"),
        ("when was it published?", K, "follow"),
        ("Is it wrong to judge a book by its cover?", E, "switch"),
    ),
)
"""20 hand-written conversations: 20 starts, 49 follow-ups, 11 topic switches."""


async def evaluate_momentum(
    router: Router, experts: Sequence[Expert], *, configs: dict[str, MomentumConfig] | None = None
) -> dict[str, Any]:
    """Routes every conversation turn by turn under each momentum setting and scores it.

    Args:
        router: a router (its gate and settings are used; its momentum is replaced per setting).
        experts: the candidates.
        configs: the settings to compare (default: momentum off and the default momentum).
    """
    configs = configs or {"no momentum": MomentumConfig(enabled=False), "momentum": MomentumConfig()}
    saved = router.momentum
    out: dict[str, Any] = {"conversations": len(CONVERSATIONS), "settings": {}}
    try:
        for name, config in configs.items():
            router.momentum = Momentum(config)
            hits = {"start": [0, 0], "follow": [0, 0], "switch": [0, 0]}
            bounces = 0
            for conversation in CONVERSATIONS:
                session = uuid.uuid4().hex
                for text, expected, role in conversation:
                    selection = await router.route(Query(text, session_id=session), experts)
                    chosen = selection.experts[0]
                    hits[role][0] += chosen == expected
                    hits[role][1] += 1
                    bounces += role == "follow" and chosen != expected
            n = sum(t for _, t in hits.values())
            out["settings"][name] = {
                "config": {
                    "enabled": config.enabled,
                    "rise": config.rise,
                    "fall": config.fall,
                    "cap": config.cap,
                },
                "bounce_rate": bounces / hits["follow"][1],
                "follow_accuracy": hits["follow"][0] / hits["follow"][1],
                "switch_accuracy": hits["switch"][0] / hits["switch"][1],
                "start_accuracy": hits["start"][0] / hits["start"][1],
                "accuracy": sum(h for h, _ in hits.values()) / n,
                "turns": {role: t for role, (_, t) in hits.items()},
            }
    finally:
        router.momentum = saved
    return out
