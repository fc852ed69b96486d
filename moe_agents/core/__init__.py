"""The parts behind ``Pipeline``, one job each.

- ``roster``: the experts, their limiters, who routing may choose, registry events.
- ``admission``: concurrent requests, the waiting queue and the request deadline.
- ``routing``: the router's choice among the active experts, within the session's budget.
- ``execution``: asking the chosen experts, falling back, merging their answers.
- ``observers``: what learns from results and feedback (trust and scorers, statistics, budgets);
  ``conversation``: memory, which also gives each expert its context.
- ``validation``: the cross-reference checks shared by ``Pipeline`` and the YAML builder.
- ``stream``: ``AnswerStream``.
"""

from .admission import Admission as Admission
from .conversation import Conversation as Conversation
from .execution import Executor as Executor
from .execution import RunState as RunState
from .observers import Observer as Observer
from .roster import Member as Member
from .roster import Roster as Roster
from .stream import AnswerStream as AnswerStream
from .validation import check_references as check_references

__all__ = [
    "Admission",
    "AnswerStream",
    "Conversation",
    "Executor",
    "Member",
    "Observer",
    "Roster",
    "RunState",
    "check_references",
]
