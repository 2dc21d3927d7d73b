"""The task family of the SmolLM2 lab: chat-formatted problems a small instruct model can read.

Problems follow SPEC §7 (``{"id", "prompt", "answer", "task"}``); ``prompt`` holds the model's
chat template applied to one user message (with the generation prompt), so every tool that takes
plain prompts (sampling, KL, kernels, TRL) sees exactly what the model was trained to see.

- ``word-arith`` (the target task): a one-step word problem, "Mia has 7 stickers and gets 5 more.
  How many stickers does Mia have now?", answer the result; the check is the last number in the
  completion (SPEC §7 "last number"). Operands run from 2 to 10^digits − 1 (``LabConfig.digits``:
  the SmolLM2 preset uses one digit, where the base solves ~18% of dev samples; with two digits it
  solved ~2%, too rare a success for GRPO's groups to carry a signal — docs/lab.md).
- held-out tasks the base already does well, to measure forgetting:
  ``capital`` ("What is the capital of Japan?", the first known capital named in the completion),
  ``antonym`` ("What is the opposite of hot?") and ``plural`` ("What is the plural of 'box'?"),
  whose answer is the first word after "is" ("The opposite of hot is cold.").

The SFT arm's teacher style (a different, correct solution) is "<a> + <b> = <r>. The answer is <r>."
"""

from __future__ import annotations

import random
import re

TARGET_TASK = "word-arith"
HELDOUT_TASKS = ("capital", "antonym", "plural")
ALL_TASKS = (TARGET_TASK, *HELDOUT_TASKS)
INSTRUCTION = "Answer with the final number."
SYSTEM_PROMPT = "You are a helpful assistant."  # short: the template's default costs 20 tokens per sequence

NAMES = ("Mia", "Tom", "Ana", "Leo", "Sara", "Ben", "Nina", "Omar", "Lily", "Jack", "Emma", "Ravi")
ITEMS = ("apples", "stickers", "marbles", "books", "coins", "pencils", "cards", "shells", "stamps", "cookies")
CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Germany": "Berlin", "Spain": "Madrid",
    "Russia": "Moscow", "China": "Beijing", "Egypt": "Cairo", "England": "London", "Greece": "Athens",
    "Portugal": "Lisbon", "Austria": "Vienna", "Ireland": "Dublin", "Norway": "Oslo", "Sweden": "Stockholm",
    "Poland": "Warsaw", "Hungary": "Budapest", "Finland": "Helsinki", "Denmark": "Copenhagen",
    "Thailand": "Bangkok", "South Korea": "Seoul", "Kenya": "Nairobi", "Argentina": "Buenos Aires",
    "Peru": "Lima", "Cuba": "Havana", "Belgium": "Brussels", "the Netherlands": "Amsterdam",
    "Turkey": "Ankara", "Canada": "Ottawa", "Australia": "Canberra", "India": "New Delhi", "Mexico": "Mexico City",
}
ANTONYMS = {
    "hot": "cold", "big": "small", "early": "late", "fast": "slow", "happy": "sad", "up": "down", "old": "young",
    "light": "dark", "open": "closed", "rich": "poor", "tall": "short", "hard": "soft", "wet": "dry", "full": "empty",
    "strong": "weak", "loud": "quiet", "day": "night", "good": "bad", "high": "low", "clean": "dirty", "win": "lose",
    "push": "pull", "thick": "thin", "near": "far", "love": "hate",
}
PLURALS = {
    "box": "boxes", "mouse": "mice", "child": "children", "city": "cities", "foot": "feet", "tooth": "teeth",
    "knife": "knives", "bus": "buses", "baby": "babies", "man": "men", "woman": "women", "leaf": "leaves",
    "dog": "dogs", "cat": "cats", "glass": "glasses", "story": "stories", "wolf": "wolves", "goose": "geese",
    "house": "houses", "watch": "watches", "book": "books", "lady": "ladies", "fox": "foxes", "car": "cars",
    "person": "people",
}

_LAST_NUMBER = re.compile(r"(-?\d+)(?!.*\d)", re.DOTALL)
_WORD_AFTER_IS = re.compile(r"\bis\s+(?:the\s+word\s+)?['\"]?([A-Za-z]+)")


def max_operand(digits: int) -> int:
    """The largest operand of a word problem with ``digits`` digits (operands run from 2)."""
    if digits < 1:
        raise ValueError(f"digits must be ≥ 1, got {digits}")
    return 10**digits - 1


def word_problem(rng: random.Random, digits: int = 2) -> tuple[str, int, str]:
    """One addition or subtraction word problem with operands in 2..10^digits − 1:
    (question, result, the arithmetic written out, e.g. ``"23 + 19"``)."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    top = max_operand(digits)
    a, b = rng.randint(2, top), rng.randint(2, top)
    if rng.random() < 0.5:
        return f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?", a + b, f"{a} + {b}"
    a, b = max(a, b), min(a, b)
    return f"{name} has {a} {item} and gives away {b}. How many {item} does {name} have left?", a - b, f"{a} - {b}"


def make_question(task: str, rng: random.Random, digits: int = 2) -> dict:
    """One problem of ``task`` before rendering: ``{"question"`` (the user message), ``"answer"}``,
    plus ``"work"`` (the arithmetic the teacher writes out) for the target task, whose operands
    have up to ``digits`` digits."""
    if task == TARGET_TASK:
        question, result, work = word_problem(rng, digits)
        return {"question": f"{question} {INSTRUCTION}", "answer": str(result), "work": work}
    if task == "capital":
        country = rng.choice(sorted(CAPITALS))
        return {"question": f"What is the capital of {country}?", "answer": CAPITALS[country]}
    if task == "antonym":
        word = rng.choice(sorted(ANTONYMS))
        return {"question": f"What is the opposite of {word}?", "answer": ANTONYMS[word]}
    if task == "plural":
        word = rng.choice(sorted(PLURALS))
        return {"question": f"What is the plural of '{word}'?", "answer": PLURALS[word]}
    raise ValueError(f"unknown task {task!r}; expected one of {ALL_TASKS}")


def teacher_completion(problem: dict) -> str:
    """The SFT arm's demonstration: the arithmetic written out, then the answer sentence."""
    if problem["task"] != TARGET_TASK:
        return problem["answer"]
    return f"{problem['work']} = {problem['answer']}. The answer is {problem['answer']}."


def extract_answer(task: str, completion: str) -> str | None:
    """The final answer of ``completion`` for ``task`` (``None`` when there is none)."""
    if task == TARGET_TASK:
        match = _LAST_NUMBER.search(completion)
        return str(int(match.group(1))) if match else None
    if task == "capital":
        hits = [(completion.find(c), c) for c in CAPITALS.values() if c in completion]
        return min(hits)[1] if hits else None
    if task in ("antonym", "plural"):
        match = _WORD_AFTER_IS.search(completion)
        return match.group(1).lower() if match else None
    raise ValueError(f"unknown task {task!r}; expected one of {ALL_TASKS}")


def chat_renderer(tokenizer):
    """``question -> prompt``: the tokenizer's chat template on a system and a user message,
    ending with the assistant's generation prompt."""

    def render(question: str) -> str:
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    return render
