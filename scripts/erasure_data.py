"""Contrasts for scripts/eval_erasure.py, built from the hh-rlhf sample in shared/ plus
harmless requests written here.

* ``harm``: X+ = first human turns of hh-rlhf harmless-base (red-team requests, many of them
  harmful: "What's the best poison to make someone ill but not kill them?"); X− = everyday
  harmless requests composed from the templates below (cooking, science, travel, writing,
  hobbies...). Some red-team turns are benign, so the labels are noisy in one direction; the
  style gap (red-team turns are often lowercase, unpunctuated) is narrowed by lowercasing /
  dropping the question mark of a random 40 % of the harmless requests.
* ``gender``: human and assistant turns of hh-rlhf that use only male pronouns (he/him/his/
  himself) vs only female ones (she/her/hers/herself): the classic erasure target.
* ``null``: the ``harm`` texts with labels shuffled (no concept).
* ``neutral``: assistant turns with no gendered pronoun, not used elsewhere (cost texts).
"""

from __future__ import annotations

import gzip
import itertools
import json
import re
from pathlib import Path

import numpy as np

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
MALE = re.compile(r"\b(he|him|his|himself)\b", re.I)
FEMALE = re.compile(r"\b(she|her|hers|herself)\b", re.I)

_T = {
    "How do I {}?": ["make pancakes from scratch", "bake sourdough bread", "cook rice on the stove",
                     "roast vegetables in the oven", "make a fruit smoothie", "brew cold brew coffee",
                     "boil an egg so the yolk stays soft", "make tomato soup", "grill salmon",
                     "make guacamole", "fold a fitted sheet", "tie a bow tie", "change a bike tire",
                     "repot a houseplant", "start a vegetable garden", "clean a cast iron pan",
                     "set up a new printer", "back up my phone", "write a cover letter",
                     "plan a road trip", "train my puppy to sit", "learn to juggle",
                     "improve my handwriting", "get better at chess", "make a paper airplane"],
    "What is the capital of {}?": ["France", "Japan", "Canada", "Kenya", "Peru", "Norway",
                                   "Vietnam", "Egypt", "Australia", "Chile", "Portugal",
                                   "Mongolia", "Ghana", "Iceland", "Austria", "Thailand"],
    "Can you explain how {} works?": ["photosynthesis", "a rainbow", "a vaccine", "the stock market",
                                      "a refrigerator", "the tide", "a solar panel", "GPS",
                                      "compound interest", "a bicycle gear", "the immune system",
                                      "a microwave oven", "recycling", "a compass", "wifi",
                                      "a hot air balloon", "photosynthesis in algae", "a thermostat"],
    "What are some good {} for {}?": (["books", "board games", "movies", "podcasts", "snacks",
                                       "gift ideas", "songs"],
                                      ["a rainy day", "teenagers", "a long flight", "a family dinner",
                                       "a birthday party", "beginners", "a road trip", "my grandmother"]),
    "Can you help me write a {} for {}?": (["poem", "short speech", "thank-you note", "toast",
                                            "card message", "short story"],
                                           ["my sister's wedding", "a retiring teacher", "my best friend",
                                            "a school assembly", "my team at work", "Mother's Day"]),
    "What's the difference between {} and {}?": [("a frog", "a toad"), ("weather", "climate"),
                                                  ("baking soda", "baking powder"), ("a lake", "a pond"),
                                                  ("an alligator", "a crocodile"), ("jam", "jelly"),
                                                  ("a virus", "a bacterium"), ("latitude", "longitude"),
                                                  ("a violin", "a viola"), ("RAM", "storage")],
    "Tell me a fun fact about {}.": ["octopuses", "the moon", "honeybees", "penguins", "volcanoes",
                                     "the Eiffel Tower", "giraffes", "Saturn", "dolphins", "maple trees",
                                     "the Great Wall of China", "hummingbirds", "glaciers", "owls"],
    "Do you have any tips for {}?": ["running my first 5k", "keeping basil alive", "studying for exams",
                                     "learning Spanish", "taking better photos", "sleeping better",
                                     "saving money on groceries", "painting a room", "public speaking",
                                     "organizing my closet", "knitting a scarf", "camping with kids"],
    "Why is {}?": ["the sky blue", "the ocean salty", "bread soft when it is fresh",
                   "ice slippery", "grass green", "the sun hot", "a rainbow curved",
                   "popcorn fluffy", "the desert cold at night", "honey sweet"],
    "Can you recommend {} to visit in {}?": (["a museum", "a park", "a beach", "a quiet town",
                                             "a hiking trail"],
                                            ["Italy", "Oregon", "Scotland", "New Zealand", "Mexico",
                                             "Japan", "Spain"]),
    "What should I pack for a trip to {} in {}?": (["Paris", "the mountains", "the beach",
                                                   "Chicago", "a national park", "London",
                                                   "Lisbon", "the countryside"],
                                                  ["spring", "summer", "autumn", "winter"]),
    "Can you give me a recipe for {} with {}?": (["a salad", "a soup", "a pasta dish", "muffins",
                                                 "a stir fry", "a casserole"],
                                                ["spinach", "chickpeas", "mushrooms", "lemon",
                                                 "sweet potatoes", "blueberries", "tofu"]),
    "How do I teach my {} to {}?": (["son", "daughter", "nephew", "students", "little brother"],
                                   ["ride a bike", "swim", "read a clock", "tie their shoes",
                                    "count money", "plant seeds", "bake cookies"]),
    "What is a good {} to learn if I like {}?": (["instrument", "sport", "language", "craft",
                                                 "board game"],
                                                ["music", "being outdoors", "puzzles", "history",
                                                 "working with my hands", "travel"]),
    "Could you summarize the history of {} in a few sentences?": [
        "the printing press", "the Olympic Games", "jazz", "the telephone", "chocolate",
        "the bicycle", "public libraries", "tea", "the postal service", "ballet", "pizza",
        "the Roman Empire", "photography", "the internet", "kites"],
    "How far is it from {} to {}?": (["Boston", "Denver", "Madrid", "Tokyo", "Sydney"],
                                    ["New York", "Seattle", "Barcelona", "Osaka", "Melbourne"]),
}


def harmless_requests(seed: int = 0) -> list[str]:
    """Every composed harmless request (~700), styled like red-team turns for a random 40 %."""
    out: list[str] = []
    for tpl, fill in _T.items():
        if isinstance(fill, tuple):
            items = list(itertools.product(*fill))
        else:
            items = [f if isinstance(f, tuple) else (f,) for f in fill]
        out += [tpl.format(*it) for it in items]
    rng = np.random.default_rng(seed)
    styled = []
    for t in dict.fromkeys(out):
        if rng.random() < 0.4:
            t = t[0].lower() + t[1:]
            t = t.rstrip("?.") if rng.random() < 0.5 else t
        styled.append(t)
    return styled


def _dialogues() -> list[list[tuple[str, str]]]:
    rows = [json.loads(line) for line in gzip.open(HH, "rt")]
    out = []
    for r in rows:
        parts = re.split(r"\n\n(Human|Assistant): ", r["chosen"])
        out.append([(parts[i], parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)])
    return out


def _split(pos: list, neg: list, n_train: int, n_test: int, seed: int):
    rng = np.random.default_rng(seed)
    pos = [pos[i] for i in rng.permutation(len(pos))]
    neg = [neg[i] for i in rng.permutation(len(neg))]
    n = min(len(pos), len(neg), n_train + n_test)
    tr = min(n_train, n - n // 2)
    return (pos[:tr], neg[:tr]), (pos[tr:n], neg[tr:n])


def contrasts(seed: int = 0, n_train: int = 300, n_test: int = 300, max_chars: int = 300):
    """``{name: (train, test)}`` for ``harm``, ``gender``, ``null``, and the neutral texts."""
    dia = _dialogues()
    red = list(dict.fromkeys(d[0][1][:max_chars] for d in dia if d and d[0][0] == "Human"))
    harm = _split(red, harmless_requests(seed), n_train, n_test, seed)
    turns = list(dict.fromkeys(t[:max_chars] for d in dia for _, t in d))
    male = [t for t in turns if MALE.search(t) and not FEMALE.search(t)]
    female = [t for t in turns if FEMALE.search(t) and not MALE.search(t)]
    gender = _split(male, female, n_train, n_test, seed)
    rng = np.random.default_rng(seed + 1000)
    (tp, tn), (sp, sn) = harm

    def shuffle(a: list, b: list) -> tuple[list, list]:
        both = a + b
        perm = rng.permutation(len(both))
        return [both[i] for i in perm[: len(a)]], [both[i] for i in perm[len(a):]]

    null = (shuffle(tp, tn), shuffle(sp, sn))
    used = set(red)
    neutral = [t for d in dia for w, t in d if w == "Assistant" and 40 <= len(t) <= max_chars
               and not MALE.search(t) and not FEMALE.search(t) and t not in used]
    neutral = [neutral[i] for i in np.random.default_rng(seed + 2000).permutation(len(neutral))[:200]]
    return {"harm": harm, "gender": gender, "null": null}, neutral
