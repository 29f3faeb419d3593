"""labkit.quiz: bank validation errors, plain text, widgets driven by script, test and lesson
picks, study modes (the scorer, progress and terminal have their own test files)."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
import yaml

from labkit import quiz

ROOT = Path(__file__).resolve().parent.parent
BANK = quiz.load_bank(quiz.BANK_DIR)


# ------------------------------------------------------------------ validation errors


def good_item(**changes) -> dict:
    item = {
        "id": "t-one",
        "topic": "lora-basics",
        "kind": "choice",
        "difficulty": "easy",
        "prompt": "Which is right?",
        "answer": "yes",
        "hint": "h",
        "solution": ["s1", "s2"],
        "quick_check": "q",
        "mistakes": ["m"],
        "choices": [{"text": "yes"}, {"text": "no", "feedback": "No."}],
    }
    item.update(changes)
    return {k: v for k, v in item.items() if v is not None}


def write_bank(tmp_path, files: dict) -> Path:
    bank = tmp_path / "bank"
    bank.mkdir()
    for name, content in files.items():
        text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
        (bank / name).write_text(text)
    return bank


def topic_file(*items, topic="lora-basics"):
    return {"topic": topic, "title": "T", "items": list(items)}


def test_a_valid_tiny_bank_loads(tmp_path, monkeypatch):
    directory = write_bank(tmp_path, {"lora_basics.yaml": topic_file(good_item())})
    bank = quiz.load_bank(directory)
    assert [it.id for it in bank.items] == ["t-one"] and bank.titles == {"lora-basics": "T"}
    monkeypatch.setenv("LABKIT_QUIZZES", str(directory))
    assert quiz.load_bank() is bank


def test_malformed_yaml_names_file_and_line(tmp_path):
    bad = "topic: lora-basics\ntitle: T\nitems:\n  - id: x\n    prompt: [unclosed\n"
    bank = write_bank(tmp_path, {"lora_basics.yaml": bad})
    with pytest.raises(
        quiz.QuizError, match=r"^bank/lora_basics\.yaml: not valid YAML at line \d+: "
    ):
        quiz.load_bank(bank)


def test_duplicate_id_names_both_files(tmp_path):
    bank = write_bank(
        tmp_path,
        {
            "lora_basics.yaml": topic_file(good_item()),
            "qlora.yaml": topic_file(good_item(topic="qlora"), topic="qlora"),
        },
    )
    with pytest.raises(quiz.QuizError) as err:
        quiz.load_bank(bank)
    assert str(err.value) == (
        "bank/qlora.yaml: item 't-one': field 'id': duplicate id, already used in "
        "bank/lora_basics.yaml"
    )


def test_answer_not_among_choices(tmp_path):
    bank = write_bank(tmp_path, {"lora_basics.yaml": topic_file(good_item(answer="maybe"))})
    with pytest.raises(quiz.QuizError) as err:
        quiz.load_bank(bank)
    assert str(err.value) == (
        "bank/lora_basics.yaml: item 't-one': field 'answer': 'maybe' is not among the "
        "choices ('yes', 'no')"
    )


@pytest.mark.parametrize("field", ["id", "hint", "solution", "quick_check", "mistakes", "choices"])
def test_missing_field(tmp_path, field):
    bank = write_bank(tmp_path, {"lora_basics.yaml": topic_file(good_item(**{field: None}))})
    label = "#1" if field == "id" else "t-one"
    tail = " (a choice item needs it)" if field == "choices" else ""
    with pytest.raises(quiz.QuizError) as err:
        quiz.load_bank(bank)
    assert (
        str(err.value) == f"bank/lora_basics.yaml: item '{label}': field '{field}': missing{tail}"
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"kind": "essay"},
            "field 'kind': 'essay' is not one of recall, choice, code_output, "
            "find_bug, scenario, explain",
        ),
        ({"difficulty": "brutal"}, "field 'difficulty': 'brutal' is not one of easy, medium, hard"),
        (
            {"hnit": "typo"},
            "field 'hnit': unknown field for a choice item; known: answer, "
            "choices, difficulty, hint, id, kind, mistakes, prompt, quick_check, "
            "solution, topic",
        ),
        (
            {"choices": [{"text": "yes"}, {"text": "no"}]},
            "field 'choices[1].feedback': missing (every wrong option needs it)",
        ),
        ({"solution": []}, "field 'solution': must be a non-empty list of text"),
        ({"prompt": "  "}, "field 'prompt': must not be empty"),
        ({"topic": "qlora"}, "field 'topic': 'qlora' differs from the file's 'lora-basics'"),
        (
            {
                "kind": "code_output",
                "choices": None,
                "answer": "1",
                "code": "print(1)",
                "output": "1",
            },
            "field 'output': unknown field for a code_output item",
        ),
    ],
)
def test_each_item_problem_names_file_item_and_field(tmp_path, changes, message):
    bank = write_bank(tmp_path, {"lora_basics.yaml": topic_file(good_item(**changes))})
    with pytest.raises(quiz.QuizError) as err:
        quiz.load_bank(bank)
    assert str(err.value).startswith(f"bank/lora_basics.yaml: item 't-one': {message}")


def test_file_level_problems(tmp_path):
    bank = write_bank(tmp_path, {"lora_basics.yaml": topic_file(good_item(), topic="qlora")})
    with pytest.raises(
        quiz.QuizError,
        match=r"^bank/lora_basics\.yaml: topic 'qlora' does not "
        r"match the file name 'lora_basics\.yaml'$",
    ):
        quiz.load_bank(bank)
    with pytest.raises(
        quiz.QuizError, match=r"no quiz files \(\*\.yaml\) here; .* set LABKIT_QUIZZES"
    ):
        quiz.load_bank(tmp_path / "empty")


def test_never_a_partial_load(tmp_path):
    bank = write_bank(
        tmp_path,
        {
            "lora_basics.yaml": topic_file(good_item()),
            "qlora.yaml": topic_file(
                good_item(id="t-two", topic="qlora"),
                good_item(id="t-three", topic="qlora", kind="quiz"),
                topic="qlora",
            ),
        },
    )
    before = dict(quiz._BANKS)
    with pytest.raises(quiz.QuizError, match="item 't-three': field 'kind'"):
        quiz.load_bank(bank)
    assert quiz._BANKS == before  # nothing cached from the failed load
    (bank / "qlora.yaml").unlink()
    assert [it.id for it in quiz.load_bank(bank).items] == ["t-one"]


# ------------------------------------------------------------------------ plain text


def test_plain_text_fallback_is_deterministic_and_hides_the_answer():
    for item in BANK.items:
        text = quiz.ItemView(item).text()
        assert text == quiz.ItemView(item).text()
        assert "Answer:" not in text and item.hint not in text
        assert not any(step in text for step in item.solution)
        if item.kind in ("recall", "code_output", "explain"):
            shown = text.replace(quiz._indent(item.code), "") if item.code else text
            assert item.answer not in shown
        assert "python -m labkit.quiz" in text


def test_display_is_one_bundle_with_widget_view_and_text():
    from IPython.core.formatters import format_display_data

    view = quiz.show(ids=["lp-trainable-count"], progress=None)
    data, _ = format_display_data(view)
    assert set(data) == {"application/vnd.jupyter.widget-view+json", "text/plain"}
    assert data["application/vnd.jupyter.widget-view+json"]["model_id"] == view.box.model_id
    assert data["text/plain"].startswith("[lora-params | choice | medium] A 1024 x 1024")
    for option in ("16,384", "1,048,576", "8,192", "8,388,608"):
        assert f") {option}\n" in data["text/plain"] + "\n"


# --------------------------------------------------------------------------- widgets


def option_index(item, text):
    return [c.text for c in item.options()].index(text)


def test_widget_choice_feedback_hint_solution_and_progress(tmp_path):
    progress = quiz.Progress(tmp_path / "p.json")
    view = quiz.show(ids=["lp-trainable-count"], progress=progress)
    item = view.item
    view.check_button.click()  # nothing chosen yet
    assert "Answer first" in view.feedback.value and progress.attempts == []

    view.choices.value = option_index(item, "8,192")
    view.check_button.click()
    assert "Not quite: That is only one of the two factors" in view.feedback.value
    assert view.result.correct is False

    view.hint_button.click()
    assert view.hint.value == f"<i>Hint: {item.hint}</i>"
    assert view.solution.value == ""
    view.solution_button.click()
    for part in [*item.solution, item.quick_check, *item.mistakes]:
        assert html.escape(part) in view.solution.value

    view.choices.value = option_index(item, "16,384")
    view.check_button.click()
    assert "Correct." in view.feedback.value and view.result.correct is True
    saved = json.loads((tmp_path / "p.json").read_text())["attempts"]
    assert [(a["id"], a["correct"]) for a in saved] == [
        ("lp-trainable-count", False),
        ("lp-trainable-count", True),
    ]


def test_widget_code_output_explain_and_recall(tmp_path):
    progress = quiz.Progress(tmp_path / "p.json")
    code = quiz.show(ids=["ql-memory-code"], progress=progress)
    code.response.value = "3"
    code.check_button.click()
    assert "Not quite" in code.feedback.value
    code.response.value = " 14 "
    code.check_button.click()
    assert "Correct: it prints 14." in code.feedback.value

    exp = quiz.show(ids=["lb-explain"], progress=progress)
    exp.response.value = "LoRA keeps the base frozen. It still trains all the weights."
    exp.check_button.click()
    assert "1/4 concepts." in exp.feedback.value
    assert "Misconception: LoRA does not train all the weights" in exp.feedback.value
    assert exp.result.score == 0.25

    card = quiz.show(ids=["lb-acronym"], progress=progress)
    assert card.solution.value == ""
    card.reveal_button.click()
    assert "Low-Rank Adaptation" in card.solution.value
    card.knew_button.click()
    assert card.result.correct is True
    assert [a["id"] for a in progress.attempts] == [
        "ql-memory-code",
        "ql-memory-code",
        "lb-explain",
        "lb-acronym",
    ]


def test_widget_test_mode_scores_with_a_topic_breakdown(tmp_path):
    session = quiz.take_test(seed=1, progress=tmp_path / "p.json")
    assert len(session.views) == 10
    expected = {}
    for i, view in enumerate(session.views):
        item = view.item
        right = i % 3 != 0  # answer questions 0, 3, 6, 9 wrongly
        if item.choices:
            wrong = next(c.text for c in item.options() if c.text != item.answer)
            view.choices.value = option_index(item, item.answer if right else wrong)
        else:
            view.response.value = item.answer if right else item.answer + "0"
        session.next_button.click()
        view.check_button.click()
        assert view.check_button.disabled  # one answer per question in a test
        cell = expected.setdefault(item.topic, [0, 0])
        cell[0] += right
        cell[1] += 1
    session.finish_button.click()
    report = session.report.value
    assert "Score: 6/10 (60%)" in report
    for topic, (c, n) in expected.items():
        assert f"{topic:<14} {c}/{n}" in report
    assert session.index == 9  # Next stops at the last question


def test_a_test_mixes_difficulties_and_topics():
    for seed in range(5):
        items = quiz.pick_test(BANK, seed)
        levels = [it.difficulty for it in items]
        assert levels == ["easy"] * 3 + ["medium"] * 4 + ["hard"] * 3
        assert {it.topic for it in items} == set(quiz.CORE_TOPICS)  # review: core topics only
        assert len({it.id for it in items}) == 10
        assert all(it.kind in quiz.SCORED_KINDS for it in items)
    assert quiz.pick_test(BANK, 0) == quiz.pick_test(BANK, 0) != quiz.pick_test(BANK, 1)


def test_a_test_on_chosen_topics_draws_only_from_them():
    extra = tuple(t for t in BANK.topics if t not in quiz.CORE_TOPICS)
    assert extra  # the lesson topics (memory, scaling, ...)
    every = quiz.pick_test(BANK, 0, n=len(BANK.topics), topics=BANK.topics)
    assert {it.topic for it in every} == set(BANK.topics)  # least-used topic first: one each
    three = quiz.pick_test(BANK, 0, topics=("memory", "scaling", "qlora"))
    assert {it.topic for it in three} == {"memory", "scaling", "qlora"}
    with pytest.raises(quiz.QuizError, match=r"a test of 10 questions needs 3 easy scored items "
                       r"\(choice, scenario, code_output, find_bug\) on memory; the bank has \d$"):
        quiz.pick_test(BANK, 0, topics=("memory",))
    with pytest.raises(quiz.QuizError, match=r"no topic 'nope'; topics: benefits"):
        quiz.take_test(topics=("nope",))


def test_review_topics_of_a_bank_without_core_topics_are_all_its_topics(tmp_path):
    directory = write_bank(
        tmp_path,
        {"mine.yaml": topic_file(good_item(topic="mine"), topic="mine")},
    )
    bank = quiz.load_bank(directory, cache=False)
    assert quiz.review_topics(bank) == ("mine",)
    assert quiz.review_topics(BANK) == quiz.CORE_TOPICS


def test_study_mode_sessions_hold_the_right_items(tmp_path):
    progress = tmp_path / "p.json"
    cards = quiz.flashcards(progress=progress)
    assert {v.item.kind for v in cards.views} == {"recall"}
    # with no topic, the review modes cover the core topics, every one of their items
    assert len(cards.views) == len(BANK.select(topic=quiz.CORE_TOPICS, kind="recall"))
    assert {v.item.topic for v in cards.views} == set(quiz.CORE_TOPICS)
    explained = quiz.explain(progress=progress).views
    assert {v.item.kind for v in explained} == {"explain"}
    assert {v.item.id for v in explained} == {
        it.id for it in BANK.select(topic=quiz.CORE_TOPICS, kind="explain")
    }
    memory_cards = quiz.flashcards("memory", progress=progress)
    assert {v.item.id for v in memory_cards.views} == {
        it.id for it in BANK.select(topic="memory", kind="recall")
    }
    assert len(quiz.practice(progress=progress).views) == len(BANK.items)  # practice: all
    practice = quiz.practice("qlora", n=4, seed=2, progress=progress)
    assert len(practice.views) == 4 and {v.item.topic for v in practice.views} == {"qlora"}
    assert practice.text().endswith("python -m labkit.quiz qlora)")
    hard = quiz.show(kind="choice", difficulty="hard", progress=progress)
    assert {(v.item.kind, v.item.difficulty) for v in hard.views} == {("choice", "hard")}


def test_lesson_quizzes_ask_what_their_lesson_taught_and_never_repeat():
    a, b = quiz.lesson_quiz("01"), quiz.lesson_quiz(1)
    assert [v.item.id for v in a.views] == list(quiz.LESSON_ITEMS["01"])
    assert a.text() == b.text() and a.text().endswith("python -m labkit.quiz lesson 01)")
    seen: dict[str, str] = {}
    order = {d: i for i, d in enumerate(quiz.DIFFICULTIES)}
    for lesson, ids in quiz.LESSON_ITEMS.items():
        items = [BANK.by_id[i] for i in ids]
        assert len(items) == 3 and {it.topic for it in items} <= set(quiz.LESSON_TOPICS[lesson])
        ranks = [order[it.difficulty] for it in items]
        assert ranks == sorted(ranks) and len(set(ranks)) >= 2, (lesson, ranks)  # easy first
        for i in ids:
            assert i not in seen, f"{i} closes lessons {seen[i]} and {lesson}"
            seen[i] = lesson
    # every lesson topic is some lesson's quiz topic; the lesson topics hold the bank's extras
    assert set(BANK.titles) == {t for ts in quiz.LESSON_TOPICS.values() for t in ts}


def test_a_longer_lesson_quiz_adds_its_topics_items_that_no_other_lesson_uses():
    views = quiz.lesson_quiz("04", n=50).views
    ids = [v.item.id for v in views]
    assert ids[:3] == list(quiz.LESSON_ITEMS["04"])
    others = {i for k, v in quiz.LESSON_ITEMS.items() if k != "04" for i in v}
    expected = {it.id for it in BANK.select(topic="quantization")} - others
    assert set(ids) == expected and len(ids) == len(expected)
    assert [v.item.id for v in quiz.lesson_quiz("04", n=2).views] == ids[:2]


def test_already_asked_collects_earlier_quizzes_and_worked_items_and_the_test_avoids_them():
    asked = quiz.already_asked("08")
    assert set(asked) == (
        {i for k in ("00", "01", "02", "03", "04", "05", "06", "07", "08")
         for i in quiz.LESSON_ITEMS[k]}
        | set(quiz.LESSON_SHOWN["07"]) | set(quiz.LESSON_SHOWN["08"])
    )
    assert set(quiz.already_asked("00")) == set(quiz.LESSON_ITEMS["00"])
    for seed in range(5):
        test = quiz.take_test(seed=seed, exclude=asked)
        assert not {v.item.id for v in test.views} & set(asked)
        assert [v.item.difficulty for v in test.views] == list(quiz.TEST_PLAN)
    with pytest.raises(quiz.QuizError, match=r"exclude names no item: nope \(check the ids\)"):
        quiz.take_test(exclude=["nope"])
    everything = [it.id for it in BANK.items if it.difficulty == "easy"]
    with pytest.raises(quiz.QuizError, match=r"needs 3 easy scored items .* once \d+ excluded "
                       r"items are left out; the bank has 0$"):
        quiz.take_test(exclude=everything)
    with pytest.raises(quiz.QuizError, match=r"no lesson '42'; lessons: 00, 01"):
        quiz.already_asked(42)


def test_lesson_shown_lists_every_item_a_lesson_shows_outside_its_quiz():
    for nb in sorted((quiz.BANK_DIR.parent / "lessons").glob("*.ipynb")):
        lesson = nb.name[:2]
        code = "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"]
                         if c["cell_type"] == "code")
        shown = set(re.findall(r"""(?:ids=\[|by_id\[|worked\()((?:"[\w-]+",?\s*)+)""", code))
        ids = {i for group in shown for i in re.findall(r'"([\w-]+)"', group)}
        assert ids <= set(quiz.LESSON_SHOWN.get(lesson, ())), (nb.name, ids)


def test_show_is_seeded_and_names_bad_input():
    mixed = quiz.show(topic="lora-params", n=2, generated=2, seed=5)
    assert [v.item.id for v in mixed.views][2:] == ["gen-lora-count-5", "gen-model-bytes-6"]
    with pytest.raises(quiz.QuizError, match=r"no quiz for lesson '42'; lessons: 00, 01"):
        quiz.lesson_quiz("42")
    with pytest.raises(quiz.QuizError,
                       match=r"no topic 'lora'; topics: benefits, beyond-lora, failure-lab, "
                             r"finetuning, "):
        quiz.show(topic="lora")
    with pytest.raises(quiz.QuizError, match=r"no item with id 'nope'"):
        quiz.show(ids=["nope"])
