"""Conversation memory: recent turns, a verbatim log, and salience-scored memories per session.

Per session (``Query.session_id``) the store keeps:

* a **recent-turns buffer**: the last ``recent_turns`` turns, in memory (a bounded deque), rebuilt
  from the database the first time a session is used by this store;
* a **verbatim log** of every turn (table ``turns``: role ``user`` or ``assistant``, the text, the
  comma-joined names of the experts that answered, the result id);
* **memories** (table ``memories``): each exchange (a user turn with its answer) with its embedding
  and a salience in [0, 1], the weighted mean of four components, each in [0, 1]::

      novelty  = 1 - max cosine similarity to the session's earlier memories (1 for the first)
      surprise = 1 - the router's confidence in its choice for the exchange
      reward   = the feedback score, once given (0.5 until then; stored as NULL)
      conflict = 1 when the answering experts disagreed (or a degree in between)
      salience = (w_n * novelty + w_s * surprise + w_r * reward + w_c * conflict) / (w_n + w_s + w_r + w_c)

``recall`` ranks a session's memories by ``cosine similarity * (0.5 + 0.5 * salience)``, skipping
the exchanges still in the recent buffer (they are given verbatim anyway) and those less similar to
the query than ``similarity_threshold``. ``context_for`` packs the recent turns (or those the
caller chose, see ``moe_agents.continuity``), newest first, then the best memories into a token
budget.

The store is one SQLite file (WAL mode) behind one connection and a lock, like the trust store;
encoder calls happen outside the lock. Each exchange (two turns and a memory) is written in one
``BEGIN IMMEDIATE`` transaction. ``forget`` deletes a session for real: ``secure_delete`` zeroes the
freed pages, and the WAL is checkpointed and truncated around a ``VACUUM``, so the text is gone from
the file's bytes. The recent buffers assume one process writes a given session; other processes may
read the file.
"""

from .store import MemoryStore as MemoryStore
from .values import Memory as Memory
from .values import MemoryConfig as MemoryConfig
from .values import ProvidedContext as ProvidedContext
from .values import Turn as Turn
from .values import count_tokens as count_tokens

__all__ = [
    "Memory",
    "MemoryConfig",
    "MemoryStore",
    "ProvidedContext",
    "Turn",
    "count_tokens",
]
