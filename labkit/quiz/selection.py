"""Which items are asked: the course's plan of topics and lesson quizzes, and the draws.

The constants say what the course asks where (the core topics a review draws on, each
lesson's topics, closing-quiz items and worked items, the test's difficulty plan);
:func:`pick` draws items by id or by filters with a seed, :func:`pick_test` a test (10
questions unless asked otherwise: :func:`difficulty_plan`), :func:`lesson_items` a lesson's
closing quiz, :func:`already_asked` what a lesson's test should leave out.

Imports: labkit.quiz.bank.
"""

from __future__ import annotations

import random

from labkit.quiz.bank import DIFFICULTIES, Bank, Item, QuizError

#: Kinds that a test scores right/wrong (recall is self-rated, explain is partial credit).
SCORED_KINDS = ("choice", "scenario", "code_output", "find_bug")
#: The six course topics of DESIGN.md; lesson files may add more topics to the bank.
CORE_TOPICS = ("lora-basics", "lora-params", "qlora", "quantization", "benefits", "lora-is-not")
#: What the review modes (flashcards, explain, the 10-question test) draw on when no topic is
#: given: the core topics. Lesson topics (``lora-layers``, ``finetuning``, ``memory``,
#: ``scaling``, ``standard-stack``, ``beyond-lora``, ``failure-lab``) are asked by name, so
#: the review of lesson 08 stays on the cheat sheet. A bank with none of these uses all its
#: topics.
REVIEW_TOPICS = CORE_TOPICS
#: The topics each lesson teaches; a closing quiz longer than its curated items
#: (``lesson_quiz("01", n=6)``) draws the rest from them.
LESSON_TOPICS = {
    "00": ("lora-basics", "lora-params"),
    "01": ("lora-basics", "lora-params", "lora-is-not"),
    "02": ("lora-layers",),
    "03": ("finetuning",),
    "04": ("quantization",),
    "05": ("qlora",),
    "06": ("memory",),
    "07": CORE_TOPICS,
    "08": CORE_TOPICS,
    "09": ("scaling",),
    "10": ("standard-stack",),
    "11": ("beyond-lora",),
    "12": ("failure-lab",),
}
#: Each lesson's closing quiz, chosen by hand: three items on what that lesson taught, easy to
#: hard, and no item in two lessons' quizzes (a test checks both).
LESSON_ITEMS = {
    "00": ("lb-acronym", "lp-trainable-count", "lp-count-bug"),
    "01": ("ln-which-is-lora", "lb-rank-meaning", "lp-model-total"),
    "02": ("ll-b-zero", "ll-merge-bug", "ll-rank-scenario"),
    "03": ("ft-forgetting", "ft-switch-bug", "ft-lr-why"),
    "04": ("qz-bytes-recall", "qz-absmax-bits", "qz-double-quant"),
    "05": ("ql-name", "ql-what-4bit", "ql-dequant"),
    "06": ("mem-bytes-per-param", "mem-lora-removes", "mem-checkpointing-code"),
    "07": ("qz-why", "ql-paged-optimizer", "ql-step-speed"),  # its cells answer ql-memory-bug
    "08": ("bf-scenario-budget", "ln-grow", "ln-scenario-speed"),
    "09": ("sc-ddp-replica", "sc-adapter-bytes", "sc-token-weighting"),
    "10": ("ss-label-mask", "ss-colab-scenario", "ss-bf16-bound"),
    "11": ("bl-rslora-scale", "bl-dora-count", "bl-pissa-convert"),
    "12": ("fl-checkpoint-fix", "fl-head-scenario", "fl-merge-qlora"),
}
#: Items a lesson works through in its own cells (lesson 07's problems, lesson 08's explain
#: examples), besides its closing quiz; a test checks this against the notebooks.
LESSON_SHOWN = {
    "07": ("lb-goal", "ql-name", "ql-memory-code", "qz-both-bug", "ql-scenario-laptop"),
    "08": ("lb-explain", "ql-explain"),
}


def difficulty_plan(n: int) -> tuple[str, ...]:
    """The difficulties of an ``n``-question test, easy first: 30 % easy and 30 % hard
    (rounded half up), the rest medium; 10 questions give 3, 4, 3 and 5 give 2, 1, 2."""
    return tuple(d for d, count in _plan_counts(n).items() for _ in range(count))


def _plan_counts(n: int) -> dict[str, int]:
    _check_count(n)
    easy = (3 * n + 5) // 10
    return {"easy": easy, "medium": n - 2 * easy, "hard": easy}


def _check_count(n) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise QuizError(f"n must be a positive whole number, got {n!r}")


TEST_PLAN = difficulty_plan(10)  # 3 easy, 4 medium, 3 hard


def review_topics(bank: Bank) -> tuple[str, ...]:
    """The topics a review draws on by default: those of ``REVIEW_TOPICS`` that ``bank``
    has, or every topic of a bank that has none of them (a teacher's own bank)."""
    have = tuple(t for t in REVIEW_TOPICS if t in bank.titles)
    return have or tuple(bank.topics)


def pick_test(bank: Bank, seed: int = 0, n: int = 10, topics=None, exclude=()) -> list[Item]:
    """A test of ``n`` questions: the :func:`difficulty_plan` (for 10, ``TEST_PLAN``: 3 easy,
    4 medium, 3 hard), spread over topics.

    Only kinds with one right answer (``SCORED_KINDS``) are drawn; each slot takes an item
    from a topic used least so far, chosen at random from ``seed``. ``topics`` (a tuple of
    names) limits the draw; default :func:`review_topics`, the core topics. Items whose id
    is in ``exclude`` are not drawn.
    """
    _check_count(n)
    topics = review_topics(bank) if topics is None else _known_topics(bank, topics)
    exclude = set(exclude)
    unknown = sorted(exclude - set(bank.by_id))
    if unknown:
        raise QuizError(f"exclude names no item: {', '.join(unknown)} (check the ids)")
    left_out = f" once {len(exclude)} excluded items are left out" if exclude else ""
    for difficulty, need in _plan_counts(n).items():  # enough items, before any draw
        have = len([it for it in bank.select(topic=topics, kind=SCORED_KINDS,
                                             difficulty=difficulty) if it.id not in exclude])
        if have < need:
            raise QuizError(
                f"a test of {n} questions needs {need} {difficulty} scored items "
                f"({', '.join(SCORED_KINDS)}) on {', '.join(topics)}{left_out}; the bank "
                f"has {have}"
            )
    rng = random.Random(seed)
    used: dict[str, int] = {}
    picked: list[Item] = []
    for difficulty in difficulty_plan(n):
        pool = [
            it
            for it in bank.select(topic=topics, kind=SCORED_KINDS, difficulty=difficulty)
            if it not in picked and it.id not in exclude
        ]
        least = min(used.get(it.topic, 0) for it in pool)
        choice = rng.choice([it for it in pool if used.get(it.topic, 0) == least])
        used[choice.topic] = used.get(choice.topic, 0) + 1
        picked.append(choice)
    return picked


def pick(
    bank: Bank, topic=None, *, ids=None, kind=None, difficulty=None, n=None, seed: int = 0
) -> list[Item]:
    """Items by id (in the order given) or by filters, ``n`` of them drawn with ``seed``."""
    if n is not None:
        _check_count(n)
    if ids is not None:
        missing = [i for i in ids if i not in bank.by_id]
        if missing:
            raise QuizError(
                f"no item with id {', '.join(map(repr, missing))}; "
                f"the bank has e.g. {', '.join(sorted(bank.by_id)[:5])}"
            )
        return [bank.by_id[i] for i in ids]
    if topic is not None:
        _known_topics(bank, topic)
    items = bank.select(topic=topic, kind=kind, difficulty=difficulty)
    if not items:
        raise QuizError(f"no items match topic={topic!r}, kind={kind!r}, difficulty={difficulty!r}")
    rng = random.Random(seed)
    items = rng.sample(items, len(items))
    return items if n is None else items[:n]


def _known_topics(bank: Bank, topic) -> tuple[str, ...]:
    """``topic`` (a name or several) as a tuple, each checked to be in ``bank``."""
    topics = (topic,) if isinstance(topic, str) else tuple(topic)
    for t in topics:
        if t not in bank.titles:
            raise QuizError(f"no topic {t!r}; topics: {', '.join(bank.topics)}")
    return topics


def lesson_items(bank: Bank, lesson, n: int = 3, seed: int = 0) -> list[Item]:
    """The items of a lesson's closing quiz: its curated ``LESSON_ITEMS`` first, then, if
    ``n`` asks for more, items drawn with ``seed`` from its ``LESSON_TOPICS`` (easy, medium,
    hard in turn) that no other lesson's quiz uses."""
    _check_count(n)
    lesson = str(lesson).zfill(2)
    if lesson not in LESSON_TOPICS:
        raise QuizError(f"no quiz for lesson {lesson!r}; lessons: {', '.join(LESSON_TOPICS)}")
    items = pick(bank, ids=LESSON_ITEMS[lesson])[:n]
    taken = {i for ids in LESSON_ITEMS.values() for i in ids}
    shuffled = [it for it in pick(bank, LESSON_TOPICS[lesson], seed=seed) if it.id not in taken]
    queues = [[it for it in shuffled if it.difficulty == d] for d in DIFFICULTIES]
    while len(items) < n and any(queues):
        items += [q.pop(0) for q in queues if q][: n - len(items)]
    return items


def already_asked(lesson) -> tuple[str, ...]:
    """Ids of the items the course asks outside ``lesson``'s review: the closing quizzes and
    worked items (``LESSON_SHOWN``) of the lessons before it, and ``lesson``'s own, so that
    its test asks only new items: ``take_test(exclude=already_asked("08"))``."""
    lesson = str(lesson).zfill(2)
    if lesson not in LESSON_TOPICS:
        raise QuizError(f"no lesson {lesson!r}; lessons: {', '.join(LESSON_TOPICS)}")
    upto = [k for k in LESSON_TOPICS if k <= lesson]
    return tuple(i for k in upto for i in LESSON_ITEMS[k] + LESSON_SHOWN.get(k, ()))
