"""The coding expert: writes, reviews and debugs code."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

from .base import LLMExpert, Signal

__all__ = ["CodingExpert", "code_blocks"]

_SYSTEM_PROMPT = """\
You are the coding expert in a team of AI specialists: a senior software engineer who writes, \
reviews and debugs code.

- If the request contains code, an error message or a stack trace, find the root cause before \
proposing a fix, and say in one or two sentences what was wrong and why the fix works.
- Give working code in fenced blocks tagged with the language (```python, ```sql, ...). Make it \
complete enough to run: include the imports and any helper you introduce. For a long file, show \
the changed functions in full rather than a diff.
- Write idiomatic code for the language and version in question; prefer the standard library; \
state any assumption about versions, dependencies or the environment.
- When reviewing, list concrete issues in order of severity (correctness, security, performance, \
readability), each pointing at the line or construct it concerns, with a suggested change.
- Mention the edge cases that matter and, when it helps, a short test that shows the behaviour.
- If the request is ambiguous, choose the most reasonable reading, say which, and go ahead.
- Never invent APIs, functions or flags: if you are not sure one exists, say so."""

_EXEMPLARS = (
    "Write a Python function that checks whether a string is a palindrome, ignoring case and punctuation.",
    "Why does this give me 'TypeError: unhashable type: list'? I'm using a list as a dict key.",
    "Can you review my pull request? The retry loop in fetch_all() sometimes never terminates.",
    "How do I reverse a linked list in place in C?",
    "My React component re-renders forever after I added a useEffect that calls setState. What's wrong?",
    "Write a SQL query that returns the top 3 customers by total order value in each country.",
    "Convert this callback-based Node.js code to async/await.",
    "What's the difference between a process and a thread, and when should I use multiprocessing in Python?",
    "Fix the off-by-one error in my binary search: it loops forever when the target is missing.",
    "I get 'error[E0502]: cannot borrow `v` as mutable because it is also borrowed as immutable' in Rust.",
    "Write a bash script that deletes log files older than 30 days in /var/log/myapp.",
    "Write a regex that matches ISO 8601 dates like 2024-03-15.",
    "Refactor this class so it follows the single responsibility principle.",
    "How do I mock an HTTP call in pytest without hitting the network?",
    "Explain the time complexity of quicksort in the average and worst case and how to avoid the worst case.",
    "Segmentation fault when I free a pointer twice in my C program, how do I find where it happens?",
    "Implement an LRU cache with O(1) get and put in Java.",
    "My Docker build can't find requirements.txt, here's my Dockerfile.",
    "How do I undo the last git commit but keep my changes?",
    "Write unit tests for a function that parses CSV lines with quoted fields.",
    "Traceback (most recent call last): File \"app.py\", line 12, in <module> KeyError: 'user_id'",
    "def chunk_list(items: list, size: int) -> list[list]:\n"
    "    '''Split items into consecutive chunks of length size; the last chunk may be shorter.\n"
    "    >>> chunk_list([1, 2, 3, 4, 5], 2)\n"
    "    [[1, 2], [3, 4], [5]]\n"
    "    '''\n",
    "def run_length_encode(text: str) -> str:\n"
    "    '''Compress each run of a repeated character into the character followed by the run length.\n"
    "    >>> run_length_encode('aaabccdddd')\n"
    "    'a3b1c2d4'\n"
    "    '''\n",
    "from typing import List\n"
    "\n"
    "\n"
    "def merge_intervals(intervals: List[List[int]]) -> List[List[int]]:\n"
    "    '''Take closed intervals [start, end] in any order, merge every pair that overlaps or touches,\n"
    "    and return the merged intervals sorted by their start.\n"
    "    '''\n",
    "Complete this function:\n"
    "def is_valid_ipv4(address: str) -> bool:\n"
    "    '''True if address is a dotted-quad IPv4 address such as '10.0.0.255': four decimal parts,\n"
    "    each between 0 and 255, with no leading zeros and nothing else in the string.\n"
    "    '''",
    "def camel_to_snake(name: str) -> str:\n"
    "    '''Turn a camelCase or PascalCase identifier into snake_case,\n"
    "    e.g. 'parseHttpResponse' -> 'parse_http_response'.'''\n",
    "def edit_distance(a: str, b: str) -> int:\n"
    "    '''Minimum number of single-character insertions, deletions and substitutions\n"
    "    that turn a into b. edit_distance('kitten', 'sitting') should be 3.\n"
    "    '''\n",
    "def top_k_words(text: str, k: int) -> list[tuple[str, int]]:\n"
    "    # count words case-insensitively and return the k most frequent as (word, count),\n"
    "    # ties broken alphabetically. fill in the body please\n",
    "Implement Dijkstra's shortest path in Python using heapq, graph given as an adjacency dict.",
    "Write a dynamic programming solution for coin change: fewest coins to make an amount, -1 if impossible.",
    "Write a Go HTTP server with a /health endpoint that answers with a small JSON status body.",
    "How do I build a small CLI with argparse that takes a --verbose flag and any number of file paths?",
    "why does my async function return a coroutine object instead of the actual value??",
    "ModuleNotFoundError: No module named 'numpy' even though pip install numpy said it succeeded",
    "java.lang.NullPointerException at com.example.OrderService.total(OrderService.java:42) - what is null "
    "here and how do I guard against it?",
    "IndexError: list index out of range inside my for loop. I think I'm mixing up len(arr) and len(arr) - 1",
    "TypeScript keeps saying 'Object is possibly undefined' on user.profile.city. What's the clean way to "
    "handle that?",
    "javascript: why does [1, 2, 10].sort() come back as [1, 10, 2]",
    "git push is rejected with 'Updates were rejected because the tip of your current branch is behind'. "
    "Should I pull, rebase or force push?",
    "my k8s pod is stuck in CrashLoopBackOff, how do I see the logs of the container that crashed",
    "Postgres: find users that share the same email and delete all but the oldest row for each email.",
    "awk one-liner to sum the third column of a whitespace-separated file and print the total",
    "find command to list every .py file changed in the last 2 days, skipping the .venv folder",
    "Regex to pull all #hashtags out of a tweet without matching the # in URL fragments",
    "What does `[x for row in grid for x in row if x]` do? I can't read nested comprehensions.",
    "This is O(n^2) and times out for n = 100000, how can I speed it up?\n"
    "for i in range(len(a)):\n"
    "    for j in range(i):\n"
    "        if a[j] > a[i]: count += 1",
    "Code review: is this counter thread-safe?\n"
    "class Counter:\n"
    "    def __init__(self): self.n = 0\n"
    "    def inc(self): self.n += 1",
    "My pandas groupby('region')['sales'].mean() gives NaN for a couple of regions, why?",
    "How do I set up a GitHub Actions workflow that runs pytest and ruff on every push and pull request?",
)

_LANGUAGES = (
    r"python|javascript|typescript|kotlin|c\+\+|c#|php|scala|haskell|elixir|erlang|clojure|matlab|fortran|"
    r"cobol|sql|postgres(?:ql)?|mysql|sqlite|bash|zsh|powershell|html|css|vue\.?js|django|flask|fastapi|"
    r"node\.?js|numpy|pandas|pytorch|tensorflow|dotnet|\.net|wasm|cuda|golang|jquery|json|yaml|xml"
)
# language names that are also everyday words (iron rusts, Taylor Swift, chemicals react)
_AMBIGUOUS_LANGUAGES = r"java|rust|ruby|swift|go|perl|lua|julia|react|rails|spring|scheme|shell|c"


class CodingExpert(LLMExpert):
    """Writes, reviews and debugs code in any language.

    Its answers carry ``metadata["code_blocks"]``: the fenced code blocks of the reply, each a dict
    ``{"language": str, "code": str}`` (language ``""`` when the fence names none).
    """

    kind: ClassVar[str] = "coding"
    default_system_prompt: ClassVar[str] = _SYSTEM_PROMPT
    default_exemplars: ClassVar[tuple[str, ...]] = _EXEMPLARS
    signals: ClassVar[tuple[Signal, ...]] = (
        Signal(r"```|^(?: {4}|\t)\S", 0.45, re.IGNORECASE | re.MULTILINE),  # fenced or indented code
        Signal(r"traceback \(most recent call last\)|stack ?trace|\bat [\w$.]+\([\w.]+:\d+\)", 0.45),
        Signal(
            r"\b\w+(?:Error|Exception)\b|\bsegfault|segmentation fault|null ?pointer|\bpanicked at\b", 0.35
        ),
        Signal(rf"(?<![\w+#.])(?:{_LANGUAGES})(?![\w+#])", 0.35),
        Signal(rf"\b(?:in|using|with) (?:{_AMBIGUOUS_LANGUAGES})\b(?! (?:of|and)\b)", 0.2),
        Signal(
            r"\b(?:code|coding|programming|script|bugs?|debug\w*|compil(?:e|er|es|ed|ing|ation)|"
            r"refactor\w*|syntax|apis?|endpoints?|repo(?:sitory)?|git(?:hub)?|docker\w*|kubernetes|"
            r"unit tests?|pytest|regex|regular expression|linter|stdout|stderr|npm|pip install|"
            r"off-by-one|infinite loop|binary search|quicksort|merge ?sort|hash table|dynamic programming|"
            r"time complexity|big-?o|useEffect|setState|component|multi-?threading|multiprocessing|"
            r"concurrency|async(?:io)?|await|mutex|race condition|deadlock|memory leak)\b",
            0.3,
        ),
        Signal(
            r"\b(?:def|fn|func|async def|console\.log|println!?|printf|public static|SELECT .+ FROM|"
            r"const \w+ =|let \w+ =|var \w+ =)\b|^\s*(?:import \w|from [\w.]+ import|#include)|=>|->|"
            r"\w\(\)|\w\[\d*\]|;\s*$",
            0.35,
            re.IGNORECASE | re.MULTILINE,
        ),
        Signal(
            r"\b(?:functions?|class|methods?|variables?|loops?|recursion|arrays?|linked list|hash ?map|"
            r"pointers?|struct|enum|interface|algorithms?|data structures?|programs?|threads?|process(?:es)?|"
            r"(?:average|worst|best)[- ]case|"
            r"library|framework|runtime|deploy\w*|server|database|query|terminal|command line)\b",
            0.15,
        ),
        Signal(
            r"\b(?:write|implement|fix|optimi[sz]e|review|port|convert)\b.{0,40}\b(?:function|script|"
            r"program|class|method|code|query|app|cli|test|regex|loop|search|sort)",
            0.2,
        ),
        # identifiers: camelCase, snake_case, file names with a code extension
        Signal(
            r"\b[a-z]+[A-Z][A-Za-z]+\b|\b[a-z]+_[a-z_]+\b|\b\w+\.(?:py|js|ts|tsx|jsx|rs|java|cpp|cc|h|go|rb|"
            r"sh|sql|yaml|yml|json|toml|ipynb)\b",
            0.2,
            0,
        ),
    )

    def answer_metadata(self, text: str) -> Mapping[str, Any]:
        """The reply's fenced code blocks, in ``metadata["code_blocks"]``."""
        return {"code_blocks": code_blocks(text)}


_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)^[ \t]*```", re.DOTALL | re.MULTILINE)


def code_blocks(text: str) -> list[dict[str, str]]:
    """The fenced code blocks of a markdown ``text``, in order, as ``{"language", "code"}`` dicts."""
    return [{"language": m[1].lower(), "code": m[2].rstrip("\n")} for m in _FENCE.finditer(text)]
