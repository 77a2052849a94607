"""Gemma's conversation format: the Jinja template the tokenizer files carry, and the same
rules in Python, which encode a conversation as ids.

Control ids come only from here: `encode_chat` encodes the template's structure (`<bos>`,
`<start_of_turn>`, `<end_of_turn>`) as ids and every message as text, so no message can end a
turn or forge one. (The Jinja template renders a string that transformers, llama.cpp --jinja
and onnxruntime-genai then parse for special tokens: for ordinary messages their ids equal
`encode_chat`'s, but those tools do not guard against control strings inside messages.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from hslm.tokenizer import BOS, END_OF_TURN, START_OF_TURN, TokenizerError

# Gemma's conversation format: an optional system message goes in front of the first user
# turn, "assistant" is spelled "model", every turn's text is trimmed. `chat_parts` is the same
# rules in Python; the tests hold the two to each other.
CHAT_TEMPLATE = (
    "{%- if not messages -%}{{ raise_exception('the conversation has no messages') }}{%- endif -%}"
    "{%- for message in messages -%}{%- if message.content is not string -%}"
    "{{ raise_exception('message content must be a string') }}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if messages[0].role == 'system' -%}"
    "{%- set system_prefix = messages[0].content + '\\n\\n' -%}{%- set turns = messages[1:] -%}"
    "{%- if not turns -%}"
    "{{ raise_exception('a system message must be followed by a user message') }}"
    "{%- endif -%}"
    "{%- else -%}{%- set system_prefix = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{{ bos_token }}"
    "{%- for message in turns -%}"
    "{%- set role = 'model' if message.role in ('assistant', 'model') else message.role -%}"
    "{%- if role != ('user' if loop.index0 % 2 == 0 else 'model') -%}"
    "{{ raise_exception('roles must alternate user, assistant, user, ... after an optional "
    "system message') }}"
    "{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (system_prefix if loop.first else '') }}"
    "{{ (message.content | trim) + '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)


class ChatPart(NamedTuple):
    """One piece of a conversation in Gemma's format: a control token the template puts there,
    or text."""

    text: str  # the text, or the control token's name (BOS, START_OF_TURN or END_OF_TURN)
    control: bool
    answer: bool = False  # a model turn's own text and end: what fine-tuning learns


def chat_parts(messages: Sequence[dict], add_generation_prompt: bool = True) -> list[ChatPart]:
    """A conversation ([{"role": ..., "content": ...}, ...]) in Gemma's format, as the Jinja
    `chat_template` in tokenizer_config.json renders it, cut into control tokens and text.
    Only the template's structure is a control part; message content is always text."""
    if not messages:
        raise TokenizerError("the conversation has no messages")
    if not all(isinstance(message, dict) for message in messages):
        raise TokenizerError("every message must be a {'role': ..., 'content': ...} object")
    if not all(isinstance(message.get("content"), str) for message in messages):
        raise TokenizerError("message content must be a string")
    system_prefix, turns = "", list(messages)
    if messages[0].get("role") == "system":
        system_prefix, turns = messages[0]["content"] + "\n\n", turns[1:]
        if not turns:
            raise TokenizerError("a system message must be followed by a user message")
    parts = [ChatPart(BOS, True)]
    for index, message in enumerate(turns):
        role = "model" if message.get("role") in ("assistant", "model") else message.get("role")
        if role != ("user" if index % 2 == 0 else "model"):
            raise TokenizerError("roles must alternate user, assistant, user, ... after an "
                                 "optional system message")
        prefix = system_prefix if index == 0 else ""
        answer = role == "model"
        # The header is a part of its own: it is also the generation prompt, which a model
        # turn's text must follow with the token boundaries inference will have.
        parts += [ChatPart(START_OF_TURN, True), ChatPart(f"{role}\n", False),
                  ChatPart(prefix + message["content"].strip(), False, answer),
                  ChatPart(END_OF_TURN, True, answer), ChatPart("\n", False, answer)]
    if add_generation_prompt:
        parts += [ChatPart(START_OF_TURN, True), ChatPart("model\n", False)]
    return parts


def render_chat(messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
    """The conversation as the Jinja `chat_template` renders it (a string that starts with
    "<bos>"), for display and for tools that take the template; hslm encodes conversations
    with `encode_chat`, never by parsing this string."""
    return "".join(part.text for part in chat_parts(messages, add_generation_prompt))


def encode_chat_parts(tokenizer, parts: Sequence[ChatPart]) -> list[list[int]]:
    """The ids of each part: a control part its token's id, a text part `tokenizer.encode` of
    its text (text only). `tokenizer` is hslm's or a backend's with the same interface."""
    control_ids = {BOS: tokenizer.bos_id, START_OF_TURN: tokenizer.start_of_turn_id,
                   END_OF_TURN: tokenizer.end_of_turn_id}
    return [[control_ids[part.text]] if part.control else tokenizer.encode(part.text)
            for part in parts]


def encode_chat(tokenizer, messages: Sequence[dict],
                add_generation_prompt: bool = True) -> list[int]:
    """The ids of a conversation, `<bos>` first: control ids only where the template puts them,
    every message encoded as text (a "<end_of_turn>" written in a message stays text). For
    messages without special token names these are the ids of `render_chat`'s string parsed
    for special tokens, as transformers does."""
    parts = chat_parts(messages, add_generation_prompt)
    return [token for ids in encode_chat_parts(tokenizer, parts) for token in ids]
