"""Questions of the synthetic shapes benchmark about a given scene: pope, gqa and mme, and their prompts.

Three families mirror the paper benchmarks: pope asks "Is there a red circle in the image?" (yes /
no, negatives sampled the POPE way), gqa asks for one word about colour, shape, relations and
counts, mme asks a Yes and a No question per image in the categories existence, count, position,
color. Every question carries its `evidence`: the patches of every object it is about.

Relations ("Which shape is to the left of the red circle?", "Is the red circle above the green
square?"): object A is *left of* B when A's whole column range lies left of B's
(A.col + A.width <= B.col); likewise right, above, below. A "Which shape is ..." question is only
asked when exactly one object stands in that relation to the reference object.
"""

from __future__ import annotations

import random
import re
from collections import Counter

from harness.shapes.scenes import ALL_PAIRS, COLOURS, MAX_OBJECTS, SHAPES, SIZES, Obj, Scene

# ---- words -----------------------------------------------------------------------------------
PLURALS = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "cross": "crosses",
    "diamond": "diamonds",
}
NUMBER_WORDS = ("one", "two", "three", "four", "five", "six")
RELATIONS = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}

# ---- tasks -----------------------------------------------------------------------------------
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."  # pope and gqa prompts
YES_NO = " Please answer yes or no."  # ends every mme question
POPE_SPLITS = ("random", "popular", "adversarial")
POPULAR_TOP_K = 3  # a popular negative is drawn from the 3 most frequent absent pairs
GQA_TYPES = ("colour", "shape", "relation", "count")
GQA_ANSWERS = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "relation": SHAPES,
    "count": NUMBER_WORDS,
}
MME_CATEGORIES = ("existence", "count", "position", "color")
TEMPLATE_WORDS = (
    "is", "there", "a", "an", "in", "the", "image", "?", ".",
    "answer", "question", "using", "single", "word", "or", "phrase", "please", "yes", "no",
    "what", "colour", "shape", "object", "objects", "which", "to", "of",
    "left", "right", "above", "below", "how", "many", "are",
)  # fmt: skip


# ---- question helpers ------------------------------------------------------------------------
def _side(obj: Obj) -> int:
    return SIZES[obj.size]


def is_related(a: Obj, b: Obj, relation: str) -> bool:
    """True if a's whole block lies `relation` (left/right/above/below) of b's block."""
    if relation == "left":
        return a.col + _side(a) <= b.col
    if relation == "right":
        return b.col + _side(b) <= a.col
    if relation == "above":
        return a.row + _side(a) <= b.row
    if relation == "below":
        return b.row + _side(b) <= a.row
    raise ValueError(f"relation={relation!r} is not one of {tuple(RELATIONS)}")


def _with_article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _name(obj: Obj) -> str:
    return f"{obj.colour} {obj.shape}"


def _question(question: str, answer: str, evidence: list[int], kind: str) -> dict:
    return {"question": question, "answer": answer, "evidence": sorted(evidence), "type": kind}


def prompt(family: str, question: str) -> str:
    """The text the model sees for a question (what the task's doc_to_text returns)."""
    return question if family == "mme" else question + SHORT_ANSWER


def tokenize_words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks, as the embedded model's tokenizer splits them."""
    return re.findall(r"\w+|[^\w\s]", text.lower())


def vocabulary() -> list[str]:
    """Every word or punctuation token of any prompt or answer (sorted, lower-case)."""
    words = set(TEMPLATE_WORDS) | set(COLOURS) | set(SHAPES) | set(PLURALS.values())
    return sorted(words | set(NUMBER_WORDS))


# ---- pope ------------------------------------------------------------------------------------
def pope_positives(scene: Scene, rng: random.Random, n: int = 1) -> list[dict]:
    """Questions about n distinct present objects (answer "yes")."""
    objects = rng.sample(scene.objects, min(n, len(scene.objects)))
    return [
        _question(f"Is there {_with_article(_name(obj))} in the image?", "yes", obj.evidence, "positive")
        for obj in objects
    ]


def pope_negatives(
    scene: Scene,
    rng: random.Random,
    strategy: str,
    n: int = 1,
    pair_counts: Counter | None = None,
) -> list[dict]:
    """Questions about n distinct absent (colour, shape) pairs (answer "no", empty evidence).

    Args:
        scene: the image's objects.
        rng: RNG for the choice.
        strategy: "random" (any absent pair), "popular" (among the POPULAR_TOP_K + n - 1 absent
            pairs most frequent in `pair_counts`, ties in ALL_PAIRS order) or "adversarial" (absent
            pairs sharing a colour or a shape with a present object).
        n: number of negatives.
        pair_counts: (colour, shape) -> number of images holding it; needed for "popular".

    Returns:
        The question dicts.
    """
    present = {(obj.colour, obj.shape) for obj in scene.objects}
    absent = [pair for pair in ALL_PAIRS if pair not in present]
    if strategy == "random":
        pool = absent
    elif strategy == "popular":
        if pair_counts is None:
            raise ValueError("strategy='popular' needs pair_counts")
        pool = sorted(absent, key=lambda pair: -pair_counts[pair])[: POPULAR_TOP_K + n - 1]
    elif strategy == "adversarial":
        colours = {colour for colour, _ in present}
        shapes = {shape for _, shape in present}
        pool = [pair for pair in absent if pair[0] in colours or pair[1] in shapes]
    else:
        raise ValueError(f"strategy={strategy!r} is not one of {POPE_SPLITS}")
    return [
        _question(f"Is there {_with_article(f'{colour} {shape}')} in the image?", "no", [], strategy)
        for colour, shape in rng.sample(pool, min(n, len(pool)))
    ]


# ---- gqa -------------------------------------------------------------------------------------
def gqa_questions(scene: Scene) -> list[dict]:
    """Every well-defined one-word question about a scene, each with its "type" (GQA_TYPES).

    colour: "What colour is the star?" (exactly one star); shape: "What shape is the red object?"
    (exactly one red object); relation: "Which shape is to the left of the red circle?" (exactly
    one object in that relation, see `is_related`); count: "How many circles are there?" (shapes
    present, answer one..six).
    """
    objects = scene.objects
    shape_counts = Counter(obj.shape for obj in objects)
    colour_counts = Counter(obj.colour for obj in objects)
    questions = []
    for obj in objects:
        if shape_counts[obj.shape] == 1:
            questions.append(_question(f"What colour is the {obj.shape}?", obj.colour, obj.evidence, "colour"))
        if colour_counts[obj.colour] == 1:
            text = f"What shape is the {obj.colour} object?"
            questions.append(_question(text, obj.shape, obj.evidence, "shape"))
        for relation, phrase in RELATIONS.items():
            hits = [other for other in objects if other is not obj and is_related(other, obj, relation)]
            if len(hits) == 1:
                text = f"Which shape is {phrase} the {_name(obj)}?"
                questions.append(_question(text, hits[0].shape, hits[0].evidence + obj.evidence, "relation"))
    for shape, count in shape_counts.items():
        evidence = [p for obj in objects if obj.shape == shape for p in obj.evidence]
        text = f"How many {PLURALS[shape]} are there?"
        questions.append(_question(text, NUMBER_WORDS[count - 1], evidence, "count"))
    return questions


# ---- mme -------------------------------------------------------------------------------------
def _count_question(k: int) -> str:
    if k == 1:
        return "Is there one object in the image?"
    return f"Are there {NUMBER_WORDS[k - 1]} objects in the image?"


def mme_questions(scene: Scene, rng: random.Random, category: str) -> list[dict]:
    """A Yes and a No question of one MME category, in random order ([] if the scene can't).

    existence: a present object vs a random absent pair; count: the true number of objects vs
    another number in 1..6; position: a strict relation between two objects vs its opposite;
    color: the true colour of a shape that occurs once vs another colour.
    """
    objects = scene.objects
    if category == "existence":
        obj = rng.choice(objects)
        present = {(o.colour, o.shape) for o in objects}
        colour, shape = rng.choice([pair for pair in ALL_PAIRS if pair not in present])
        yes = (f"Is there {_with_article(_name(obj))} in the image?", obj.evidence)
        no = (f"Is there {_with_article(f'{colour} {shape}')} in the image?", [])
    elif category == "count":
        evidence = [p for obj in objects for p in obj.evidence]
        wrong = rng.choice([k for k in range(1, MAX_OBJECTS + 1) if k != len(objects)])
        yes = (_count_question(len(objects)), evidence)
        no = (_count_question(wrong), evidence)
    elif category == "position":
        options = [
            (a, b, relation)
            for a in objects
            for b in objects
            if a is not b
            for relation in RELATIONS
            if is_related(a, b, relation)
        ]
        if not options:
            return []
        a, b, relation = rng.choice(options)
        evidence = a.evidence + b.evidence
        yes = (f"Is the {_name(a)} {RELATIONS[relation]} the {_name(b)}?", evidence)
        no = (f"Is the {_name(a)} {RELATIONS[OPPOSITE[relation]]} the {_name(b)}?", evidence)
    elif category == "color":
        shape_counts = Counter(obj.shape for obj in objects)
        unique = [obj for obj in objects if shape_counts[obj.shape] == 1]
        if not unique:
            return []
        obj = rng.choice(unique)
        wrong = rng.choice([colour for colour in COLOURS if colour != obj.colour])
        yes = (f"Is the {obj.shape} {obj.colour}?", obj.evidence)
        no = (f"Is the {obj.shape} {wrong}?", obj.evidence)
    else:
        raise ValueError(f"category={category!r} is not one of {MME_CATEGORIES}")
    pair = [
        _question(yes[0] + YES_NO, "Yes", yes[1], category),
        _question(no[0] + YES_NO, "No", no[1], category),
    ]
    rng.shuffle(pair)
    return pair
