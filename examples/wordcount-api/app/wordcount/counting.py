"""The service's one piece of logic, importable without FastAPI."""

import os
import re
from collections import Counter

WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")


def max_words() -> int:
    return int(os.environ.get("WORDCOUNT_MAX_WORDS", "10000"))


def count(text: str, top: int = 3) -> dict:
    words = [w.lower() for w in WORD.findall(text)]
    if len(words) > max_words():
        raise ValueError(f"{len(words)} words, more than WORDCOUNT_MAX_WORDS={max_words()}")
    return {"words": len(words), "top": Counter(words).most_common(top)}
