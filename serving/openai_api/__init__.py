"""OpenAI-compatible HTTP API (`/v1/models`, `/v1/completions`, `/v1/chat/completions`) in
front of the Triton server's text models; `aigc serve --openai-port PORT` starts it.

    from serving.openai_api import OpenAIFrontend

    with OpenAIFrontend("127.0.0.1:8001", Path("model_repository"), port=9000) as api:
        ...  # openai.OpenAI(base_url=f"{api.url}/v1", api_key="unused")
"""

from serving.openai_api.app import OpenAIFrontend, create_app

__all__ = ["OpenAIFrontend", "create_app"]
