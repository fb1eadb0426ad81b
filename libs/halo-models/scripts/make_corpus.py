"""Regenerate ``src/halo_models/data/corpus.txt``, the text the tiny tokenizer is trained on.

Usage (from the repository root)::

    python libs/halo-models/scripts/make_corpus.py            # rewrite the shipped corpus
    python libs/halo-models/scripts/make_corpus.py --check    # exit 1 if the shipped file is stale

The corpus is generated, not hand-written, so that it is reproducible byte for byte: every choice
comes from ``random.Random(SEED)`` and the output is plain UTF-8 with ``\\n`` line endings. It mixes
English prose, Python and C code, JSON records, Markdown, arithmetic Q&A and chat-like dialogue,
because the tiny models built from it are used to test SFT/DPO/GRPO pipelines on all of those
kinds of text. Changing this script changes the tokenizer (and therefore every tiny model): bump
``KIT_VERSION`` in ``halo_models.tiny`` when you regenerate.

Size is kept under ~200 KB: BPE training time grows with the corpus, and the tiny kit must build a
tokenizer in well under a second.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

SEED = 20240611
OUT = Path(__file__).resolve().parents[1] / "src" / "halo_models" / "data" / "corpus.txt"

NAMES = [
    "Ada",
    "Grace",
    "Linus",
    "Alan",
    "Barbara",
    "Ken",
    "Dennis",
    "Margaret",
    "Edsger",
    "Frances",
    "Claude",
    "Hedy",
    "Tim",
    "Radia",
    "John",
    "Donald",
    "Katherine",
    "Guido",
    "Bjarne",
    "Sophie",
    "José",
    "Zoë",
]
NOUNS = [
    "model",
    "dataset",
    "tokenizer",
    "server",
    "garden",
    "river",
    "library",
    "teacher",
    "student",
    "engine",
    "kernel",
    "window",
    "bridge",
    "forest",
    "market",
    "network",
    "village",
    "compiler",
    "notebook",
    "question",
    "answer",
    "lesson",
    "checkpoint",
    "adapter",
    "gradient",
    "reward",
    "verifier",
    "message",
    "queue",
    "stream",
    "planet",
    "kitchen",
    "mountain",
    "city",
    "robot",
]
ADJECTIVES = [
    "small",
    "quick",
    "quiet",
    "bright",
    "careful",
    "noisy",
    "ancient",
    "modern",
    "simple",
    "tiny",
    "large",
    "strange",
    "useful",
    "broken",
    "stable",
    "fast",
    "slow",
    "warm",
    "cold",
    "green",
    "blue",
    "honest",
    "curious",
    "patient",
    "local",
    "remote",
]
VERBS = [
    "trains",
    "reads",
    "writes",
    "builds",
    "checks",
    "loads",
    "saves",
    "finds",
    "sends",
    "opens",
    "closes",
    "measures",
    "explains",
    "watches",
    "repairs",
    "follows",
    "learns",
    "teaches",
    "counts",
]
ADVERBS = [
    "slowly",
    "quickly",
    "carefully",
    "again",
    "every morning",
    "at night",
    "without help",
    "in silence",
    "by hand",
    "twice",
    "on Fridays",
    "before lunch",
]
PLACES = [
    "in the lab",
    "near the river",
    "at the station",
    "on the hill",
    "in the old library",
    "behind the market",
    "at home",
    "in the cloud",
    "on a laptop",
    "inside the container",
]
CONNECTIVES = [
    "Then",
    "Later",
    "Meanwhile",
    "Afterwards",
    "However",
    "Still",
    "Because of that",
    "In the end",
    "Surprisingly",
    "Of course",
]
TOPICS = [
    "finetuning",
    "evaluation",
    "tokenization",
    "gradient descent",
    "sorting",
    "recursion",
    "caching",
    "message queues",
    "unit tests",
    "numerical stability",
    "learning rates",
    "LoRA",
]
COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
CITIES = ["Paris", "Tokyo", "Lagos", "Lima", "Oslo", "Cairo", "Seoul", "Quito", "Perth", "Delhi", "São Paulo", "Zürich"]


def sentence(rng: random.Random) -> str:
    """One templated English sentence."""
    templates = [
        "The {adj} {noun} {verb} the {noun2} {adv}.",
        "{name} {verb} a {adj} {noun} {place}.",
        "{conn}, {name} {verb} the {noun} {adv}.",
        "Why does the {noun} {verb2} the {adj} {noun2}?",
        "A {adj} {noun} is better than a {adj2} {noun2}.",
        "{name} said that the {noun} was {adj} {place}.",
        "If the {noun} is {adj}, the {noun2} {verb} {adv}.",
        "There are {n} {noun}s {place}, and {m} of them are {adj}.",
        "{name} and {name2} talked about {topic} for {n} minutes.",
        "We learned that {topic} matters when the {noun} is {adj}.",
    ]
    return rng.choice(templates).format(
        adj=rng.choice(ADJECTIVES),
        adj2=rng.choice(ADJECTIVES),
        noun=rng.choice(NOUNS),
        noun2=rng.choice(NOUNS),
        verb=rng.choice(VERBS),
        verb2=rng.choice(VERBS).removesuffix("s"),
        adv=rng.choice(ADVERBS),
        name=rng.choice(NAMES),
        name2=rng.choice(NAMES),
        place=rng.choice(PLACES),
        conn=rng.choice(CONNECTIVES),
        topic=rng.choice(TOPICS),
        n=rng.randint(2, 99),
        m=rng.randint(1, 9),
    )


def paragraph(rng: random.Random) -> str:
    return " ".join(sentence(rng) for _ in range(rng.randint(3, 6)))


def python_snippet(rng: random.Random) -> str:
    noun, noun2 = rng.choice(NOUNS), rng.choice(NOUNS)
    n = rng.randint(2, 12)
    snippets = [
        f'def count_{noun}s(items: list[str]) -> int:\n    """Count how many items mention a {noun}."""\n'
        f'    total = 0\n    for item in items:\n        if "{noun}" in item:\n            total += 1\n'
        f"    return total\n",
        f"class {noun.capitalize()}:\n    def __init__(self, size: int = {n}) -> None:\n"
        f"        self.size = size\n        self.{noun2}s: list[int] = []\n\n"
        f"    def add(self, value: int) -> None:\n        if len(self.{noun2}s) >= self.size:\n"
        f'            raise ValueError("{noun} is full")\n        self.{noun2}s.append(value)\n',
        f"def fib(n: int) -> int:\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
        f"    return a\n\n\nprint([fib(i) for i in range({n})])\n",
        f"import json\nfrom pathlib import Path\n\n\ndef load_{noun}(path: Path) -> dict:\n"
        f'    with path.open(encoding="utf-8") as f:\n        return json.load(f)\n',
        f"def is_prime(n: int) -> bool:\n    if n < 2:\n        return False\n"
        f"    i = 2\n    while i * i <= n:\n        if n % i == 0:\n            return False\n"
        f"        i += 1\n    return True\n\n\nassert is_prime({rng.choice([2, 3, 5, 7, 11, 13])})\n",
        f"def test_{noun}_{noun2}():\n    values = sorted([{', '.join(str(rng.randint(0, 50)) for _ in range(4))}])\n"
        f"    assert values == sorted(values)\n    assert len(values) == 4\n",
        f"async def fetch_{noun}(client, url: str) -> bytes:\n    response = await client.get(url)\n"
        f"    response.raise_for_status()\n    return response.content\n",
    ]
    return rng.choice(snippets)


def c_snippet(rng: random.Random) -> str:
    noun = rng.choice(NOUNS)
    n = rng.randint(4, 64)
    snippets = [
        f"#include <stdio.h>\n\nint main(void) {{\n    int total = 0;\n    for (int i = 0; i < {n}; i++) {{\n"
        f'        total += i;\n    }}\n    printf("total = %d\\n", total);\n    return 0;\n}}\n',
        f"static size_t {noun}_len(const char *s) {{\n    size_t n = 0;\n    while (s[n] != '\\0') {{\n"
        f"        n++;\n    }}\n    return n;\n}}\n",
        f"typedef struct {{\n    int id;\n    float score;\n    char name[{n}];\n}} {noun}_t;\n",
        f"int max_{noun}(const int *xs, int n) {{\n    int best = xs[0];\n    for (int i = 1; i < n; ++i)\n"
        f"        if (xs[i] > best) best = xs[i];\n    return best;\n}}\n",
    ]
    return rng.choice(snippets)


def json_record(rng: random.Random) -> str:
    record = {
        "id": f"{rng.choice(NOUNS)}-{rng.randint(1000, 9999)}",
        "name": rng.choice(NAMES),
        "city": rng.choice(CITIES),
        "score": round(rng.random() * 100, 2),
        "tags": rng.sample(ADJECTIVES, rng.randint(1, 3)),
        "active": rng.random() < 0.5,
        "count": rng.randint(0, 500),
    }
    if rng.random() < 0.3:
        record["meta"] = {"color": rng.choice(COLORS), "version": f"{rng.randint(0, 3)}.{rng.randint(0, 9)}"}
    if rng.random() < 0.5:
        return json.dumps(record)
    return json.dumps(record, indent=2)


def arithmetic(rng: random.Random) -> str:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    op = rng.choice(["+", "-", "*"])
    result = {"+": a + b, "-": a - b, "*": a * b}[op]
    forms = [
        f"Q: What is {a} {op} {b}?\nA: {result}",
        f"Question: compute {a} {op} {b}.\nAnswer: The answer is {result}.",
        f"{a} {op} {b} = {result}",
    ]
    return rng.choice(forms)


def dialogue(rng: random.Random) -> str:
    name, topic, noun = rng.choice(NAMES), rng.choice(TOPICS), rng.choice(NOUNS)
    turns = [
        ("user", f"Hi! Can you explain {topic} in one sentence?"),
        ("assistant", f"Sure. {topic[0].upper() + topic[1:]} is about making the {noun} work well. {sentence(rng)}"),
        ("user", f"Thanks. My name is {name}. What should I try first?"),
        ("assistant", f"Nice to meet you, {name}! Start with a {rng.choice(ADJECTIVES)} {noun} and check it twice."),
    ]
    style = rng.randint(0, 2)
    if style == 0:
        return "\n".join(f"{role.capitalize()}: {text}" for role, text in turns[: rng.choice([2, 4])])
    if style == 1:
        return "\n".join(f"### {role}\n{text}" for role, text in turns[:2])
    return "\n".join(f"{role}\n{text}" for role, text in turns[: rng.choice([2, 4])])


def markdown(rng: random.Random) -> str:
    topic = rng.choice(TOPICS)
    items = "\n".join(f"- {sentence(rng)}" for _ in range(rng.randint(2, 4)))
    return f"## Notes on {topic}\n\n{paragraph(rng)}\n\n{items}\n"


KINDS = [
    (paragraph, 5),
    (python_snippet, 3),
    (c_snippet, 1),
    (json_record, 2),
    (arithmetic, 2),
    (dialogue, 2),
    (markdown, 1),
]


def generate(max_bytes: int = 180_000) -> str:
    """Return the corpus text: blocks drawn from ``KINDS`` until ``max_bytes`` would be exceeded."""
    rng = random.Random(SEED)
    funcs = [f for f, _ in KINDS]
    weights = [w for _, w in KINDS]
    blocks: list[str] = []
    size = 0
    while True:
        block = rng.choices(funcs, weights)[0](rng).rstrip("\n") + "\n\n"
        n = len(block.encode("utf-8"))
        if size + n > max_bytes:
            break
        blocks.append(block)
        size += n
    return "".join(blocks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the shipped corpus differs")
    args = parser.parse_args(argv)
    text = generate()
    if args.check:
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        if current != text:
            print(f"{OUT} is stale; run {Path(__file__).name} to regenerate", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8", newline="\n")
    print(f"wrote {OUT} ({len(text.encode('utf-8'))} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
