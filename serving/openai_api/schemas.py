"""The request bodies as pydantic models, for `/openapi.json` and `/docs`.

The handlers check requests with `protocol.py` (its messages name each field and its range
in OpenAI's words, and unknown fields are ignored as vLLM does); these models describe the
same fields for the API's schema, so that `/docs` shows what a request may hold. A test
keeps the two in step: every field the parser accepts is in the schema.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from engine.request_schema import MAX_LOGPROBS

Prompt = str | list[int] | list[str] | list[list[int]]


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown fields: ignored (and logged once)

    model: str = Field(description="a served text model (GET /v1/models)")
    max_tokens: int | None = Field(None, ge=0, description="tokens to generate at most")
    temperature: float | None = Field(
        None, ge=0, le=2, description="0 = greedy; default: the checkpoint's, else 1"
    )
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, description="vLLM's; 0 or -1 = off")
    min_p: float | None = Field(None, ge=0, le=1, description="vLLM's")
    seed: int | None = Field(None, ge=0, description="choice j of a prompt draws from seed + j")
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = Field(None, description="vLLM's")
    bad_words: list[str] | None = Field(None, description="vLLM's")
    ignore_eos: bool | None = Field(None, description="vLLM's")
    min_tokens: int | None = Field(None, ge=0, description="vLLM's")
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0, description="vLLM's; 1 = off")
    n: int | None = Field(None, ge=1, le=64, description="choices per prompt")
    stream: bool | None = None
    stream_options: dict[str, bool] | None = Field(None, description='{"include_usage": true}')
    response_format: dict[str, Any] | None = Field(
        None, description='{"type": "text" | "json_object" | "json_schema", "json_schema": {"schema": {...}}}'
    )
    structured_outputs: dict[str, Any] | None = Field(
        None, description="vLLM's: one of {json, regex, choice, grammar}"
    )
    guided_json: dict[str, Any] | str | None = Field(None, description="vLLM's: a JSON schema")
    guided_regex: str | None = Field(None, description="vLLM's")
    guided_choice: list[str] | None = Field(None, description="vLLM's")
    guided_grammar: str | None = Field(None, description="vLLM's: a Lark (or GBNF) grammar")


class CompletionRequest(_Sampling):
    prompt: Prompt = Field(description="text, token ids, or a batch of up to 256 of either")
    echo: bool | None = Field(
        None, description="return the prompt before the completion (with logprobs: scored)"
    )
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="alternatives per token")
    best_of: int | None = Field(
        None, ge=1, le=64, description="samples per prompt; the n most likely returned"
    )


class ChatCompletionRequest(_Sampling):
    messages: list[dict[str, Any]] = Field(description="{role, content} objects; text content")
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)


class TokenizeRequest(BaseModel):
    model: str | None = None  # left out: the server's one text model
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    return_token_strs: bool | None = None


class DetokenizeRequest(BaseModel):
    model: str | None = None
    tokens: list[int]


def request_body(model: type[BaseModel]) -> dict:
    """FastAPI's `openapi_extra` giving a route `model`'s schema as its JSON body."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }
