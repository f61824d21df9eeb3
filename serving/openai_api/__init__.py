"""OpenAI-compatible HTTP API (`/v1/models`, `/v1/completions`, `/v1/chat/completions`) in
front of the Triton server's text models; `aigc serve --openai-port PORT` starts it.

    from serving.openai_api import OpenAIFrontend

    with OpenAIFrontend("127.0.0.1:8001", Path("model_repository"), port=9000) as api:
        ...  # openai.OpenAI(base_url=f"{api.url}/v1", api_key="unused")
"""

__all__ = ["OpenAIFrontend", "create_app"]


def __getattr__(name: str):
    # FastAPI is imported when the frontend is used, not when the CLI reads its flags
    # (`aigc --help` on a client-only install has no FastAPI).
    if name in __all__:
        from serving.openai_api import app

        return getattr(app, name)
    raise AttributeError(f"module 'serving.openai_api' has no attribute {name!r}")
