"""build_prompts with the real SmolLM2 tokenizer: chat template, tokens, length filter, stable ids."""

from __future__ import annotations

import copy

import pytest
from transformers import AutoTokenizer

from rlpost.config.schema import DataConfig
from rlpost.data import DatasetError, build_prompts, load_rows

ROWS = [
    {"id": "p1", "answer": "5",
     "question": "Tom has 3 apples. He buys 2 more apples. How many apples does Tom have now?"},
    {"question": "What is 7 - 4?", "answer": "3", "level": 1},
    {"question": "Mia has 2 bags with 4 coins in each bag, and she finds a long list of other coins too: "
     + "one, " * 40 + "how many coins does Mia have?", "answer": "8"},
]


@pytest.fixture(scope="module")
def tokenizer(smollm2_path):
    return AutoTokenizer.from_pretrained(smollm2_path)


def test_chat_template_with_generation_prompt(tokenizer):
    prompts = build_prompts(ROWS[:1], tokenizer, DataConfig()).prompts
    text = prompts[0].text
    user = ROWS[0]["question"] + "\nPut your final answer within \\boxed{}."
    # SmolLM2's template adds its own default system message when the config gives none.
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert prompts[0].token_ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(prompts[0].token_ids) == text
    assert prompts[0].row is ROWS[0]


def test_system_prompt_and_template_fields(tokenizer):
    config = DataConfig(system_prompt="Solve it.", prompt_template="Q: {question} (level {level})")
    text = build_prompts(ROWS[1:2], tokenizer, config).prompts[0].text
    assert text.startswith(
        "<|im_start|>system\nSolve it.<|im_end|>\n<|im_start|>user\nQ: What is 7 - 4? (level 1)<|im_end|>"
    )
    assert "SmolLM" not in text


def test_plain_text_without_chat_template(tokenizer):
    config = DataConfig(use_chat_template=False, system_prompt="Be brief.")
    prompt = build_prompts(ROWS[1:2], tokenizer, config).prompts[0]
    assert prompt.text == "Be brief.\n\nWhat is 7 - 4?\nPut your final answer within \\boxed{}."
    assert prompt.token_ids == tokenizer(prompt.text, add_special_tokens=False)["input_ids"]


def test_tokenizer_without_chat_template_falls_back_to_plain_text(tokenizer):
    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    prompt = build_prompts(ROWS[1:2], bare, DataConfig()).prompts[0]
    assert prompt.text == "What is 7 - 4?\nPut your final answer within \\boxed{}."


def test_template_naming_a_missing_field(tokenizer):
    with pytest.raises(DatasetError, match=r"names \{questoin\}.*did you mean 'question'"):
        build_prompts(ROWS[:1], tokenizer, DataConfig(prompt_template="{questoin}"))
    with pytest.raises(DatasetError, match="not a valid format string"):
        build_prompts(ROWS[:1], tokenizer, DataConfig(prompt_template="answer in {}"))


def test_overlong_prompts_skipped_and_counted(tokenizer):
    lengths = [len(p.token_ids) for p in build_prompts(ROWS, tokenizer, DataConfig()).prompts]
    limit = sorted(lengths)[1]  # keeps the two shortest prompts
    result = build_prompts(ROWS, tokenizer, DataConfig(max_prompt_tokens=limit))
    assert result.skipped_overlong == 1 and len(result) == 2
    assert all(len(p.token_ids) <= limit for p in result.prompts)


def test_overlong_prompts_error(tokenizer):
    lengths = [len(p.token_ids) for p in build_prompts(ROWS, tokenizer, DataConfig()).prompts]
    config = DataConfig(max_prompt_tokens=max(lengths) - 1, overlong_prompts="error")
    expected = rf"has {max(lengths)} tokens, over data.max_prompt_tokens = {max(lengths) - 1}"
    with pytest.raises(DatasetError, match=expected):
        build_prompts(ROWS, tokenizer, config)


def test_prompt_ids_are_stable(tokenizer):
    first = build_prompts(ROWS, tokenizer, DataConfig()).prompts
    reordered = build_prompts(list(reversed(ROWS)), tokenizer, DataConfig(system_prompt="Other.")).prompts
    assert first[0].prompt_id == "p1"  # from the row's id
    assert first[1].prompt_id.startswith("q-")  # from the question text
    # The same question gets the same id whatever the order and the template.
    assert {p.prompt_id for p in first} == {p.prompt_id for p in reordered}
    assert len({p.prompt_id for p in first}) == 3


def test_repeated_questions_get_distinct_ids(tokenizer):
    prompts = build_prompts([ROWS[1], dict(ROWS[1]), dict(ROWS[1])], tokenizer, DataConfig()).prompts
    base = prompts[0].prompt_id
    assert [p.prompt_id for p in prompts] == [base, f"{base}#2", f"{base}#3"]


def test_arithmetic_prompts_fit_and_keep_the_row(tokenizer):
    config = DataConfig(arithmetic={"levels": [1, 2, 3], "test_size": 50})
    rows = load_rows("arithmetic", "test", data_config=config)
    result = build_prompts(rows, tokenizer, config)
    assert result.skipped_overlong == 0
    assert [p.prompt_id for p in result.prompts] == [row["id"] for row in rows]
    assert all(p.row["question"] in p.text for p in result.prompts)
