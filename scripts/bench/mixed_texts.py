#!/usr/bin/env python3
"""Writes texts of mixed lengths for `infergate bench --texts`: a third are
short queries (3-10 words), the rest passages of 10-80 words, as embedding
traffic that mixes search queries with documents. Deterministic (seed 4).

    python3 scripts/bench/mixed_texts.py > docs/bench/mixed-lengths.txt
"""
import random

WORDS = """account address after annual answer app because before billing
business cancel card change charge city customer data delivery device
discount document email error export feature file first free help hours
invoice language last limit login message mobile month network number
offline order password payment phone plan policy price privacy product
profile refund region report request reset return review screen search
security server service settings shipping size storage subscription
support team ticket time trial update upload user version warranty week
when where which why with without year""".split()

rng = random.Random(4)
for i in range(1000):
    n = rng.randint(3, 10) if rng.random() < 1 / 3 else rng.randint(10, 80)
    words = [rng.choice(WORDS) for _ in range(n)]
    print(" ".join(words).capitalize() + f" (#{i}).")
