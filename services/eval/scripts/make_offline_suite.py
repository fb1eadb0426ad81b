"""Generate the built-in offline evaluation suite (deterministic; never downloads anything).

    python services/eval/scripts/make_offline_suite.py          # rewrites src/halo_eval/tasks/data/*.jsonl

Four tasks, 100 items each, from a fixed seed: the same bytes on every machine (a test checks it):

* ``halo_arith_mc``    multiple choice — "12 + 7 =" with four candidate sums (one right).
* ``halo_arith_gen``   generation, exact match — "Q: 12 + 7 = ?\\nA:" -> "19".
* ``halo_compare_mc``  multiple choice — which of two numbers is larger (choices " yes" / " no").
* ``halo_code_output`` code, exact match — a 2-4 line Python program; the answer is what it prints.
  The expected output is computed by running the program here (in-process ``exec`` of code this
  script wrote itself), so the gold labels cannot drift from Python's semantics.

And one task outside the ``halo_offline`` group, for the demo's before/after:

* ``halo_animals_mc``  multiple choice, chat — "What sound does a cow make?" answered "A cow says moo."
  among three other animals' sounds (the 20 animals and two phrasings the demo's SFT data teaches).
"""

from __future__ import annotations

import contextlib
import io
import json
import random
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "src" / "halo_eval" / "tasks" / "data"
SEED = 20261124
ITEMS = 100


def arith_mc(rng: random.Random) -> list[dict]:
    rows = []
    for i in range(ITEMS):
        a, b = rng.randint(0, 49), rng.randint(0, 49)
        right = a + b
        wrong = set()
        while len(wrong) < 3:
            w = right + rng.choice([-10, -2, -1, 1, 2, 10])
            if w >= 0 and w != right:
                wrong.add(w)
        choices = [str(x) for x in sorted(wrong | {right})]
        rng.shuffle(choices)
        rows.append({"id": f"arith_mc_{i}", "question": f"{a} + {b}", "choices": choices,
                     "gold": choices.index(str(right))})
    return rows


def arith_gen(rng: random.Random) -> list[dict]:
    rows = []
    for i in range(ITEMS):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        op = rng.choice(["+", "-"])
        answer = a + b if op == "+" else a - b
        rows.append({"id": f"arith_gen_{i}", "question": f"{a} {op} {b}", "answer": str(answer)})
    return rows


def compare_mc(rng: random.Random) -> list[dict]:
    rows = []
    for i in range(ITEMS):
        a, b = rng.sample(range(1000), 2)
        rows.append({"id": f"compare_{i}", "question": f"Is {a} larger than {b}?", "choices": [" yes", " no"],
                     "gold": 0 if a > b else 1})
    return rows


def _program(rng: random.Random) -> str:
    x, y = rng.randint(1, 9), rng.randint(1, 9)
    kind = rng.randrange(5)
    if kind == 0:
        return f"x = {x}\ny = {y}\nprint(x * y)"
    if kind == 1:
        return f"s = 'halo'\nprint(s[{x % 4}] * {y % 3 + 1})"
    if kind == 2:
        return f"xs = [{x}, {y}, {x + y}]\nprint(sum(xs) - max(xs))"
    if kind == 3:
        return f"n = 0\nfor i in range({x}):\n    n += {y}\nprint(n)"
    return f"d = {{'a': {x}, 'b': {y}}}\nprint(len(d) + d['b'])"


def code_output(rng: random.Random) -> list[dict]:
    rows = []
    for i in range(ITEMS):
        program = _program(rng)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(program, {})  # our own generated program (see the module docstring)
        rows.append({"id": f"code_{i}", "program": program, "answer": out.getvalue().strip()})
    return rows


ANIMALS = [("cow", "moo"), ("dog", "woof"), ("cat", "meow"), ("duck", "quack"), ("sheep", "baa"), ("pig", "oink"),
           ("horse", "neigh"), ("lion", "roar"), ("owl", "hoot"), ("frog", "ribbit"), ("bee", "buzz"),
           ("snake", "hiss"), ("mouse", "squeak"), ("goat", "bleat"), ("crow", "caw"), ("donkey", "hee-haw"),
           ("rooster", "cock-a-doodle-doo"), ("wolf", "howl"), ("turkey", "gobble"), ("chick", "cheep")]


def animals_mc(rng: random.Random) -> list[dict]:
    rows = []
    for i, (animal, sound) in enumerate(ANIMALS):
        for j, question in enumerate((f"What sound does a {animal} make?", f"What does a {animal} say?")):
            others = rng.sample([s for a, s in ANIMALS if a != animal], 3)
            choices = [f"A {animal} says {s}." for s in [sound, *others]]
            rng.shuffle(choices)
            rows.append({"id": f"animals_mc_{2 * i + j}", "question": question, "choices": choices,
                         "gold": choices.index(f"A {animal} says {sound}.")})
    return rows


TASKS = {"arith_mc": arith_mc, "arith_gen": arith_gen, "compare_mc": compare_mc, "code_output": code_output,
         "animals_mc": animals_mc}


def build(out_dir: Path = DATA) -> dict[str, Path]:
    """Write every task's JSONL under ``out_dir``; returns name -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for n, (name, make) in enumerate(TASKS.items()):
        rows = make(random.Random(SEED + n))
        path = out_dir / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")
        paths[name] = path
    return paths


if __name__ == "__main__":
    for name, path in build().items():
        print(f"{name}: {path}")
