"""The KV state of prompt beginnings shared by many requests, computed once per loaded model.

Task prompts start the same way every time: the chat scaffolding, a system turn, the task's
instruction; only the document differs. The cache keeps the keys and values of such a fixed
beginning and copies them into the next session whose prompt starts with the same tokens, so
only the rest is prefilled. What is fixed is found from the prompt itself: `fixed_part(...)`
renders the same messages with an empty document, and the token prefix the two share is the
part worth keeping (a token merging across the boundary is simply not shared).

Entries are keyed by their exact token ids; a prompt reuses the longest entry it starts with.
The cache is bounded (MAX_ENTRIES, least recently used out) and thread-safe (several server
sessions share one). Engines whose sessions cannot copy their cache (snapshot / restore) are
run without it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

# Distinct prompt beginnings kept per model (a task prompt, each rewrite style, a server's
# system prompts); each costs its positions' KV bytes.
MAX_ENTRIES = 16
# Shorter shared beginnings are not worth a copy.
MIN_TOKENS = 8


def common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class PrefixCache:
    def __init__(self, max_entries: int = MAX_ENTRIES, min_tokens: int = MIN_TOKENS):
        self.max_entries, self.min_tokens = max_entries, min_tokens
        self._entries: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def supported(session) -> bool:
        return hasattr(session, "snapshot") and hasattr(session, "restore")

    def restore(self, session, prompt: list[int]) -> int:
        """Copy the longest cached beginning of `prompt` into `session`; tokens reused (at
        most len(prompt) - 1: the last token is always run, for its logits)."""
        if not self.supported(session):
            return 0
        with self._lock:
            best, key = 0, None
            for k in self._entries:
                if len(k) > best and len(k) < len(prompt) and tuple(prompt[:len(k)]) == k:
                    best, key = len(k), k
            if key is None:
                self.misses += 1
                return 0
            self._entries.move_to_end(key)
            snap = self._entries[key]
            self.hits += 1
        session.restore(snap)
        return best

    def remember(self, session, prompt: list[int], n: int) -> None:
        """After `prompt` was prefilled in `session`: keep its first n tokens (its fixed part)
        if they are not cached yet."""
        if n < self.min_tokens or not self.supported(session) or n >= len(prompt):
            return
        key = tuple(prompt[:n])
        with self._lock:
            if key in self._entries:
                return
        snap = session.snapshot(n)
        with self._lock:
            self._entries[key] = snap
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
