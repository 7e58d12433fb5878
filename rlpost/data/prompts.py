"""Turn dataset rows into model prompts: template, chat template, tokens, length filter, stable ids."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

from rlpost.config.errors import closest
from rlpost.config.schema import DataConfig
from rlpost.data.errors import DatasetError
from rlpost.types import Prompt

log = logging.getLogger(__name__)


@dataclass
class PromptSet:
    """The prompts built from a dataset, and how many rows were left out for being too long."""

    prompts: list[Prompt] = field(default_factory=list)
    skipped_overlong: int = 0

    def __len__(self) -> int:
        return len(self.prompts)


def build_prompts(rows: list[dict], tokenizer: Any, data_config: DataConfig) -> PromptSet:
    """Prompts for `rows` (canonical rows from `load_rows`), in row order.

    The user message is `data_config.prompt_template.format(**row)`, preceded by
    `system_prompt` when set. With `use_chat_template` and a tokenizer that has a chat template,
    the messages go through it with the generation prompt; otherwise the text is plain (system
    prompt, a blank line, the user message). Token ids are the text tokenised without adding
    special tokens (the template already wrote them). Prompts over `max_prompt_tokens` are
    skipped and counted, or raise a `DatasetError`, per `overlong_prompts`.
    """
    texts = [_prompt_text(row, tokenizer, data_config) for row in rows]
    token_ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    ids = _prompt_ids(rows)
    result = PromptSet()
    for position, (prompt_id, text, ids_of_text, row) in enumerate(zip(ids, texts, token_ids, rows), start=1):
        if len(ids_of_text) > data_config.max_prompt_tokens:
            if data_config.overlong_prompts == "error":
                raise DatasetError(
                    f"row {position} (prompt {prompt_id!r}) has {len(ids_of_text)} tokens, over data.max_prompt_tokens = "
                    f"{data_config.max_prompt_tokens} (raise it, or set data.overlong_prompts: skip)"
                )
            result.skipped_overlong += 1
            continue
        result.prompts.append(Prompt(prompt_id=prompt_id, text=text, token_ids=list(ids_of_text), row=row))
    if result.skipped_overlong:
        log.warning(
            "skipped %d of %d prompts longer than data.max_prompt_tokens = %d",
            result.skipped_overlong, len(rows), data_config.max_prompt_tokens,
        )
    return result


def build_training_prompts(rows: list[dict], tokenizer: Any, data_config: DataConfig) -> PromptSet:
    """`build_prompts` for training: a `DatasetError` when the length filter leaves no prompt."""
    result = build_prompts(rows, tokenizer, data_config)
    if not result.prompts:
        raise DatasetError(
            f"{data_config.train}: all {len(rows)} prompts are longer than data.max_prompt_tokens = "
            f"{data_config.max_prompt_tokens}, so none is left to train on (raise data.max_prompt_tokens)"
        )
    return result


def _prompt_text(row: dict, tokenizer: Any, data_config: DataConfig) -> str:
    user = _fill_template(data_config.prompt_template, row)
    system = data_config.system_prompt
    if data_config.use_chat_template and getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{system}\n\n{user}" if system else user


def _fill_template(template: str, row: dict) -> str:
    try:
        return template.format(**row)
    except KeyError as exc:
        name = str(exc.args[0])
        raise DatasetError(
            f"data.prompt_template names {{{name}}}, which the rows do not have{closest(name, row)}; "
            f"fields: {', '.join(row)} (write literal braces as {{{{ and }}}})"
        ) from None
    except (IndexError, ValueError) as exc:
        raise DatasetError(
            f"data.prompt_template {template!r} is not a valid format string ({exc}); "
            "name fields like {question} and write literal braces as {{ and }}"
        ) from None


def _prompt_ids(rows: list[dict]) -> list[str]:
    """The row's `id` when it has one, else a hash of the question; repeats get `#2`, `#3`, ...

    Hashing the question (not the position) keeps the id the same when the data is reordered or
    extended, which sampler state and resumed runs rely on.
    """
    ids: list[str] = []
    seen: dict[str, int] = {}
    for row in rows:
        if row.get("id") is not None:
            base = str(row["id"])
        else:
            base = "q-" + hashlib.sha1(row["question"].encode()).hexdigest()[:16]
        seen[base] = seen.get(base, 0) + 1
        ids.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return ids
