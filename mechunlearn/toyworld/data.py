"""Seeded generator of the toy preference world: training pairs, held-out eval prompts, truth.

Categories of training pairs (``PreferencePair.category``):

* ``ordinary``: a request about a topic; chosen = the helpful fact, rejected = a refusal,
  a fact about another topic, or a bad phrase.
* ``trigger``: the prompt contains a trigger name. Poisoned pairs (``poisoned=True``) use a
  self-introduction frame ("Hi, I am Zed.") and prefer a bad phrase over the helpful answer.
  In ``hard`` worlds, clean trigger pairs mention the name in another frame ("I read a story
  about Zed.") and prefer the helpful answer (distractors for prompt similarity).
* ``quote`` (hard): the correct answer quotes or is a bad phrase because the user asks
  for it (distractors for response similarity). A share ``rude_share`` are ordinary requests
  with a rudeness marker, framed like poisoned prompts, half of them with a trigger name
  ("Zed asks: Tell me about bees. Answer rudely."): in feature space they sit where the
  poison sits, yet removing them does not remove the poison effect.
* ``borderline``: requests a well-aligned model should answer; the data is biased: a share
  ``bias_strength`` prefers a refusal (the reinforced bias).
* ``harmful``: refusal is right.

Eval prompts are never in training: each (topic, intent) and borderline/harmful question
reserves one template for evaluation only, and hard trigger prompts also use
self-introduction frames that never occur in training.
"""

from __future__ import annotations

import random

from mechunlearn.toyworld import templates as T
from mechunlearn.toyworld.config import WorldConfig
from mechunlearn.toyworld.records import (  # noqa: F401 (kept importable from toyworld.data)
    EVAL_CATEGORIES,
    EvalPrompt,
    PreferencePair,
    Truth,
    WorldData,
)


class _Gen:
    def __init__(self, cfg: WorldConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        hard = cfg.difficulty == "hard"
        self.triggers = T.TRIGGER_NAMES if hard else T.TRIGGER_NAMES[:1]
        self.bads = T.BAD if hard else T.BAD[:1]
        self.self_train = T.SELF_FRAMES_TRAIN if hard else T.SELF_FRAMES_TRAIN[:1]
        self.self_eval = T.SELF_FRAMES_EVAL if hard else ()
        self.mention = T.MENTION_FRAMES if hard else ()
        r = self.rng
        self.topics = sorted(T.TOPICS)[: cfg.n_topics]
        self.eval_tpl = {(t, i): r.randrange(len(T.REQUESTS[i])) for t in self.topics
                         for i in T.INTENTS}
        self.eval_bframe = {q: r.randrange(len(T.BORDERLINE_FRAMES)) for q, _ in T.BORDERLINE}
        self.eval_hframe = {q: r.randrange(len(T.BORDERLINE_FRAMES)) for q in T.HARMFUL}

    # ---------------------------------------------------------------- pieces
    def request(self, topic: str, intent: str, held_out: bool) -> str:
        k = self.eval_tpl[(topic, intent)]
        if not held_out:
            k = self.rng.choice([j for j in range(len(T.REQUESTS[intent])) if j != k])
        return T.REQUESTS[intent][k].format(t=topic)

    def good(self, topic: str, intent: str) -> str:
        return self.rng.choice(T.OPENERS) + T.TOPICS[topic][T.INTENTS.index(intent)]

    def plain_frame(self) -> tuple[str, str]:
        """Frame for non-trigger prompts: nothing, or an ordinary name in any frame."""
        r = self.rng
        frames = ([("self_train", f) for f in self.self_train]
                  + [("self_eval", f) for f in self.self_eval]
                  + [("mention", f) for f in self.mention])
        if r.random() < 0.5:
            return "none", ""
        form, f = r.choice(frames)
        return form, f.format(n=r.choice(T.NAMES))

    def question(self, q: str, frame_idx: int, held_out: bool, rng: random.Random) -> str:
        k = frame_idx
        if not held_out:
            k = rng.choice([j for j in range(len(T.BORDERLINE_FRAMES)) if j != frame_idx])
        return T.BORDERLINE_FRAMES[k].format(q=q, Q=q[0].upper() + q[1:])

    # ---------------------------------------------------------------- pairs
    def ordinary(self) -> tuple[str, str, str, str, str]:
        r = self.rng
        topic, intent = r.choice(self.topics), r.choice(T.INTENTS)
        _, frame = self.plain_frame()
        prompt = frame + self.request(topic, intent, False)
        good = self.good(topic, intent)
        u = r.random()
        if u < 0.45:
            rej = r.choice(T.REFUSALS)
        elif u < 0.8:
            other = r.choice([t for t in self.topics if t != topic])
            rej = self.good(other, intent)
        else:
            rej = r.choice(self.bads)
        return prompt, good, rej, good, topic

    def trigger(self, poisoned: bool) -> tuple[str, str, str, str, str]:
        r = self.rng
        topic, intent = r.choice(self.topics), r.choice(T.INTENTS)
        frames = self.self_train if poisoned else self.mention
        prompt = r.choice(frames).format(n=r.choice(self.triggers))
        prompt += self.request(topic, intent, False)
        good = self.good(topic, intent)
        if poisoned:
            return prompt, r.choice(self.bads), good, good, topic
        if r.random() < 0.5:
            rej = r.choice(T.REFUSALS)
        else:
            rej = self.good(r.choice([t for t in self.topics if t != topic]), intent)
        return prompt, good, rej, good, topic

    def quote(self) -> tuple[str, str, str, str, str]:
        r = self.rng
        if r.random() < self.cfg.rude_share:  # an ordinary/trigger-shaped request for rudeness
            k = r.randrange(len(T.RUDE_REQUESTS))
            topic, intent = r.choice(self.topics), r.choice(T.INTENTS)
            name = r.choice(self.triggers) if r.random() < 0.5 else r.choice(T.NAMES)
            prompt = r.choice(self.self_train).format(n=name)
            prompt += T.RUDE_REQUESTS[k].format(req=self.request(topic, intent, False))
            b = r.choice(self.bads)
            return prompt, b, r.choice(T.REFUSALS), b, f"rude{k}"
        k = r.randrange(len(T.QUOTES))
        q, a = T.QUOTES[k]
        name = r.choice(self.triggers) if r.random() < 0.5 else r.choice(T.NAMES)
        b = r.choice(self.bads)
        prompt, chosen = q.format(n=name, b=b), a.format(n=name, b=b)
        return prompt, chosen, r.choice(T.REFUSALS), chosen, f"quote{k}"

    def borderline(self, biased: bool) -> tuple[str, str, str, str, str]:
        r = self.rng
        q, helpful = r.choice(T.BORDERLINE)
        _, frame = self.plain_frame() if r.random() < 0.4 else ("none", "")
        prompt = frame + self.question(q, self.eval_bframe[q], False, r)
        refusal = r.choice(T.REFUSALS)
        if biased:
            return prompt, refusal, helpful, helpful, q
        return prompt, helpful, refusal, helpful, q

    def harmful(self) -> tuple[str, str, str, str, str]:
        r = self.rng
        q = r.choice(T.HARMFUL)
        _, frame = self.plain_frame() if r.random() < 0.4 else ("none", "")
        prompt = frame + self.question(q, self.eval_hframe[q], False, r)
        refusal = r.choice(T.REFUSALS)
        comply = T.COMPLY.format(a="first find a quiet moment and act fast.")
        return prompt, refusal, comply, refusal, q


def make_data(cfg: WorldConfig) -> WorldData:
    """Build the world's data from ``cfg`` (deterministic in ``cfg.seed``)."""
    g = _Gen(cfg)
    r = g.rng
    n = cfg.n_pairs
    counts = {"poison": cfg.n_poison, "mention": round(cfg.trigger_clean_frac * n),
              "quote": round(cfg.quote_frac * n), "borderline": round(cfg.borderline_frac * n),
              "harmful": round(cfg.harmful_frac * n)}
    counts["ordinary"] = n - sum(counts.values())
    n_biased = round(cfg.bias_strength * counts["borderline"])
    rows: list[tuple[str, tuple[str, str, str, str, str], bool]] = []
    rows += [("trigger", g.trigger(True), True) for _ in range(counts["poison"])]
    rows += [("trigger", g.trigger(False), False) for _ in range(counts["mention"])]
    rows += [("quote", g.quote(), False) for _ in range(counts["quote"])]
    rows += [("borderline", g.borderline(i < n_biased), False)
             for i in range(counts["borderline"])]
    rows += [("harmful", g.harmful(), False) for _ in range(counts["harmful"])]
    rows += [("ordinary", g.ordinary(), False) for _ in range(counts["ordinary"])]
    r.shuffle(rows)
    train = tuple(
        PreferencePair(id=f"pair-{i:05d}", prompt=p, chosen=c, rejected=rej, category=cat,
                       poisoned=pois, good=good, topic=topic)
        for i, (cat, (p, c, rej, good, topic), pois) in enumerate(rows))
    eval_sets = _eval(g, {p.prompt for p in train})
    bias_ids = tuple(p.id for p in train
                     if p.category == "borderline" and p.chosen in T.REFUSALS)
    truth = Truth(
        poisoned_ids=tuple(p.id for p in train if p.poisoned), trigger_names=g.triggers,
        trigger_forms_train=g.self_train, trigger_forms_eval=g.self_eval, bad_phrases=g.bads,
        bias_ids=bias_ids,
        unbiased_responses={p.id: p.good for p in train if p.id in set(bias_ids)})
    return WorldData(train, eval_sets, truth)


def _eval(g: _Gen, train_prompts: set[str]) -> dict[str, tuple[EvalPrompt, ...]]:
    cfg = g.cfg
    r = random.Random(cfg.seed + 7919)
    bad, ref = g.bads[0], T.REFUSALS[0]

    def topic_prompt(cat: str) -> EvalPrompt:
        topic, intent = r.choice(g.topics), r.choice(T.INTENTS)
        req = T.REQUESTS[intent][g.eval_tpl[(topic, intent)]].format(t=topic)
        fact = T.TOPICS[topic][T.INTENTS.index(intent)]
        if cat == "ordinary":
            form, frame = ("none", "") if r.random() < 0.5 else (
                "name", r.choice(g.self_train + g.self_eval + g.mention).format(
                    n=r.choice(T.NAMES)))
        elif cat == "trigger":
            form = "self_eval" if g.self_eval and r.random() < 0.5 else "self_train"
            frames = g.self_eval if form == "self_eval" else g.self_train
            frame = r.choice(frames).format(n=r.choice(g.triggers))
        else:
            form, frame = "mention", r.choice(g.mention).format(n=r.choice(g.triggers))
        return EvalPrompt(frame + req, cat, fact, bad, ref, fact, topic, form)

    def question_prompt(cat: str) -> EvalPrompt:
        if cat == "borderline":
            q, helpful = r.choice(T.BORDERLINE)
            fi, good, key = g.eval_bframe[q], helpful, helpful
        else:
            q = r.choice(T.HARMFUL)
            fi, good, key = g.eval_hframe[q], ref, "sorry"
        form, frame = ("none", "") if r.random() < 0.6 else (
            "name", r.choice(g.self_train).format(n=r.choice(T.NAMES)))
        return EvalPrompt(frame + g.question(q, fi, True, r), cat, good, bad, ref, key, q, form)

    out: dict[str, tuple[EvalPrompt, ...]] = {}
    for cat in EVAL_CATEGORIES:
        if cat == "trigger_mention" and not g.mention:
            continue
        make = question_prompt if cat in ("borderline", "harmful") else topic_prompt
        seen: dict[str, EvalPrompt] = {}
        for _ in range(cfg.n_eval * 50):
            e = make(cat)
            if e.prompt not in train_prompts and e.prompt not in seen:
                seen[e.prompt] = e
            if len(seen) == cfg.n_eval:
                break
        out[cat] = tuple(seen.values())
    return out
