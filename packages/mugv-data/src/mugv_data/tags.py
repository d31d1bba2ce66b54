"""Entity tags from captions and balanced sampling weights from tag frequencies."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

DEFAULT_VOCABULARY: dict[str, list[str]] = {
    "person": [
        "person",
        "people",
        "man",
        "men",
        "woman",
        "women",
        "boy",
        "girl",
        "child",
        "children",
        "kid",
        "baby",
        "player",
        "rider",
        "driver",
        "crowd",
    ],
    "animal": [
        "animal",
        "dog",
        "cat",
        "bird",
        "horse",
        "cow",
        "sheep",
        "fish",
        "rabbit",
        "bunny",
        "squirrel",
        "insect",
        "butterfly",
        "deer",
        "bear",
        "lion",
        "elephant",
    ],
    "vehicle": [
        "car",
        "truck",
        "bus",
        "bike",
        "bicycle",
        "motorcycle",
        "train",
        "boat",
        "ship",
        "plane",
        "airplane",
        "vehicle",
        "cyclist",
    ],
    "building": ["building", "house", "city", "street", "road", "bridge", "tower", "room"],
    "nature": [
        "tree",
        "forest",
        "grass",
        "field",
        "flower",
        "mountain",
        "river",
        "lake",
        "sea",
        "ocean",
        "beach",
        "sky",
        "cloud",
        "snow",
        "meadow",
        "garden",
    ],
    "food": ["food", "meal", "fruit", "cake", "bread", "drink", "coffee", "kitchen"],
    "phone": ["phone", "telephone", "smartphone", "cellphone"],
    "sports": [
        "sport",
        "sports",
        "race",
        "racing",
        "football",
        "soccer",
        "basketball",
        "tennis",
        "running",
        "swimming",
        "cycling",
    ],
    "animation": ["animation", "animated", "cartoon", "3d render", "cgi"],
}


class Tagger:
    """Matches whole words (plural s/es allowed, case-insensitive) of a tag vocabulary."""

    def __init__(self, vocabulary: dict[str, list[str]] | None = None) -> None:
        vocab = vocabulary or DEFAULT_VOCABULARY
        if not vocab:
            raise ValueError("tags.vocabulary is empty")
        self._patterns: dict[str, re.Pattern] = {}
        for tag, words in vocab.items():
            if not words:
                raise ValueError(f"tags.vocabulary[{tag!r}] has no keywords")
            alt = "|".join(re.escape(w.lower()) for w in sorted(words, key=len, reverse=True))
            self._patterns[tag] = re.compile(rf"\b(?:{alt})(?:s|es)?\b", re.IGNORECASE)

    def __call__(self, caption: str) -> list[str]:
        """Sorted tags whose keywords occur in ``caption``."""
        return sorted(t for t, p in self._patterns.items() if p.search(caption or ""))


UNTAGGED = "_untagged"


def balanced_weights(tags_per_clip: list[list[str]], alpha: float) -> np.ndarray:
    """Per-clip sampling weights: mean over the clip's tags of count(tag)^-alpha, normalised
    to mean 1 (untagged clips form their own group). alpha=0 gives uniform weights."""
    if not tags_per_clip:
        return np.zeros(0)
    groups = [t if t else [UNTAGGED] for t in tags_per_clip]
    counts = Counter(t for g in groups for t in g)
    w = np.array([np.mean([counts[t] ** -alpha for t in g]) for g in groups], dtype=np.float64)
    return w * (len(w) / w.sum())
