"""Pure parts of the generation stage: reading questions out of model replies, prompts, the journal."""

import pytest

from spanpref.generate import clean_queries, parse_queries
from spanpref.journal import Journal
from spanpref.prompts import PromptError, load_prompt, parse_prompt


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('["Why did A happen?", "How does B compare with C?"]', ["Why did A happen?", "How does B compare with C?"]),
        ('Sure! Here they are:\n```json\n["Why X?", "How Y?"]\n```\nHope this helps.', ["Why X?", "How Y?"]),
        ('{"questions": ["Why X?", "How Y?"]}', ["Why X?", "How Y?"]),
        ('[{"query": "Why X?"}, {"question": "How Y?"}, 3]', ["Why X?", "How Y?"]),
        (
            "1. Why did the war start?\n2) How did it end?\n- What changed after?\nnot a question line",
            ["Why did the war start?", "How did it end?", "What changed after?"],
        ),
        ("I cannot help with that.", []),
        ('["unterminated', []),
    ],
)
def test_parse_queries(reply, expected):
    assert parse_queries(reply) == expected


def test_clean_queries_drops_duplicates_short_and_long():
    seen = {"why did a happen"}
    kept, reason = clean_queries(
        [
            "Why did A happen?",
            "Who?",
            "How do the two accounts of the battle differ and why?",
            "word " * 90,
            "How do the two accounts of the battle differ and why",
        ],
        seen=seen,
        min_words=4,
    )
    assert kept == ["How do the two accounts of the battle differ and why?"]
    assert reason == "duplicate; too short (1 words); too long (90 words)"


def test_bundled_prompts_fill_every_slot():
    q = load_prompt("generate_queries")
    assert q.slots == {"domain", "title", "n", "text"}
    msgs = q.messages(domain="news", title="T", n=5, text="A {{title}} inside the document stays as is.")
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "A {{title}} inside the document stays as is." in msgs[1]["content"]
    assert "Write 5 different questions" in msgs[1]["content"]
    r = load_prompt("generate_responses")
    assert r.slots == {"text", "query"} and r.version.startswith("generate_responses@")


def test_prompt_errors(tmp_path):
    with pytest.raises(PromptError, match=r"missing values \['query'\], unused values \['extra'\]"):
        load_prompt("generate_responses").messages(text="x", extra=1)
    with pytest.raises(PromptError, match="text before the first"):
        parse_prompt("hello\n### user\nhi", "p")
    with pytest.raises(PromptError, match=r"unknown prompt 'nope'; give a .txt file or one of \["):
        load_prompt("nope")


def test_journal_survives_a_torn_last_line(tmp_path):
    j = Journal(tmp_path / "repo", "stage")
    j.append({"key": "a"}, {"key": "b"})
    j.close()
    with j.path.open("a") as f:
        f.write('{"key": "c", "unfin')  # a kill in the middle of a write
    assert [r["key"] for r in Journal(tmp_path / "repo", "stage").records()] == ["a", "b"]
    j2 = Journal(tmp_path / "repo", "stage")
    j2.append({"key": "d"})
    j2.close()
    assert [r["key"] for r in j2.records()] == ["a", "b", "d"]
    j2.clear()
    assert not j2.folder.exists()
