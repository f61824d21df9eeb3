"""Version switching on a running server (Triton's explicit model control) and rollback.

Triton serves a model's newest version (version policy `latest 1`). `reload` asks a running
server to load the newest version: Triton keeps the old version serving until the new
one has loaded, and keeps it if the load fails. The switch is then confirmed by a check
request. `rollback` retires the newest version folder (kept aside, never deleted) so the
previous one becomes the newest, and reloads it when a server is given.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from aigc import registry
from aigc.errors import ServerError
from serving import security
from serving.repository import versions
from serving.security import key_headers

logger = logging.getLogger(__name__)


def served_versions(url: str, model: str, key: str | None = None) -> list[int]:
    """The versions of `model` that the server at `url` has READY (`key`: Triton's control
    key, `serving.security`)."""
    with grpcclient.InferenceServerClient(url) as client:
        try:
            index = client.get_model_repository_index(as_json=True, headers=key_headers(key)).get(
                "models", []
            )
        except InferenceServerException as exc:
            raise ServerError(_refused(url, exc)) from None
    return sorted(int(m["version"]) for m in index if m.get("name") == model and m.get("state") == "READY")


def check_model(url: str, model: str, timeout_s: float = 30.0) -> None:
    """A real request through the model (its role's `check` hook in `aigc.registry`)."""
    from serving.client import AigcClient

    role = registry.component(model)[1].role
    with AigcClient(url, timeout_s=timeout_s) as client:
        registry.hook(role.check)(client, model)


def check_text(client, model: str) -> None:
    """One greedy token."""
    client.generate_text("check", max_tokens=1, ignore_eos=True, stream=False, model=model)


def check_encoder(client, model: str) -> None:
    """One black image."""
    _, dims = client.input_shape(model)
    client.encode(np.zeros((1, *dims), np.uint8), model=model)


def check_decoder(client, model: str) -> None:
    """Zero latents."""
    _, dims = client.input_shape(model)
    client.decode(np.zeros((1, *dims), np.float32), model=model)


def _refused(url: str, exc: InferenceServerException) -> str:
    """The message of a control request Triton answered with an error."""
    if "restricted" in (exc.message() or "").lower() or "PERMISSION_DENIED" in str(exc.status()):
        return (
            f"the server at {url} restricts its control APIs to a key: pass --triton-key-file "
            f"(the file `aigc serve` wrote or was given) or set ${security.TRITON_KEY_ENV}"
        )
    return f"the server at {url}: {exc.message()}"


def reload(url: str, model: str, timeout_s: float = 120.0, key: str | None = None) -> int:
    """Load the newest version of `model` on the running server, check it, return it."""
    with grpcclient.InferenceServerClient(url) as client:
        try:
            client.load_model(model, client_timeout=timeout_s, headers=key_headers(key))
        except InferenceServerException as exc:
            why = _refused(url, exc)
            raise ServerError(
                f"{model}: the new version was not loaded, the previous one keeps serving: {why}"
            ) from None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready = served_versions(url, model, key)
        if ready:
            break
        time.sleep(0.2)
    else:
        raise ServerError(f"{model}: no version ready after {timeout_s:.0f} s")
    check_model(url, model)
    logger.info("%s now serving version %d", model, ready[-1])
    return ready[-1]


def rollback(repository: Path, model: str, url: str | None = None, key: str | None = None) -> int:
    """Retire the newest version of `model`; returns the version now newest (and served)."""
    repository = Path(repository).absolute()
    have = versions(repository / model)
    if not (repository / model).is_dir():
        raise ServerError(f"{model}: no such model in {repository}")
    if len(have) < 2:
        raise ServerError(f"{model}: only version(s) {have} in {repository}; nothing to roll back to")
    retired = repository.parent / f"{repository.name}.retired" / model
    retired.mkdir(parents=True, exist_ok=True)
    target = retired / f"{have[-1]}-{int(time.time())}"
    os.rename(repository / model / str(have[-1]), target)
    logger.info("retired %s version %d to %s", model, have[-1], target)
    if url:
        with grpcclient.InferenceServerClient(url) as client:
            try:  # reload: the removed version is unloaded, the previous serves
                client.load_model(model, headers=key_headers(key))
            except InferenceServerException as exc:
                os.rename(target, repository / model / str(have[-1]))  # nothing changed after all
                raise ServerError(f"{model}: not rolled back: {_refused(url, exc)}") from None
        served = served_versions(url, model, key)
        if served != [have[-2]]:
            raise ServerError(
                f"{model}: after rollback the server reports versions {served}, expected {have[-2]}"
            )
        check_model(url, model)
    return have[-2]
