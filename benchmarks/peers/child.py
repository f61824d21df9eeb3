"""The child processes a peer runs in: `run_peer` converts (when no finished conversion is
cached) in one `python -m benchmarks.peers convert JOB RESULT` and measures in another
`... measure JOB RESULT`; `convert_job` and `measure_job` are their work. A crash, a hang or a
failure there becomes `{"skipped": reason}`."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.peers.cache import cached, installed_versions, prepare
from benchmarks.peers.peer import Peer
from benchmarks.peers.registry import PEERS

logger = logging.getLogger("benchmarks.peers")

CHILD_TIMEOUT_S = 1800.0  # conversion (the 124M IR takes a minute or two on 2 cores) and measuring
# the folder `benchmarks` is in, so that the child can import it uninstalled too
ROOT = Path(__file__).resolve().parents[2]


def convert_job(job: dict, registry: dict[str, Peer] | None = None) -> dict:
    """The conversion child's work: `prepare`, or `{"skipped": reason}`."""
    peer = (registry or PEERS)[job["peer"]]
    try:
        return prepare(peer, Path(job["checkpoint"]), Path(job["folder"]), int(job["threads"]))
    except Exception as exc:  # noqa: BLE001 - any conversion failure skips the peer
        logger.debug("conversion failed", exc_info=True)
        return {"skipped": f"conversion failed: {_one_line(exc)}"}


def measure_job(job: dict, registry: dict[str, Peer] | None = None) -> dict:
    """The measuring child's work: load the converted peer and time each workload."""
    from benchmarks import measure

    peer = (registry or PEERS)[job["peer"]]
    checkpoint, folder, threads = Path(job["checkpoint"]), Path(job["folder"]), int(job["threads"])
    recorded = cached(peer, folder)
    if recorded is None:
        return {"skipped": f"no finished conversion in {folder}"}
    try:
        runner = peer.load(folder, checkpoint, threads)
    except Exception as exc:  # noqa: BLE001 - any load failure skips the peer
        logger.debug("load failed", exc_info=True)
        return {"skipped": f"loading failed: {_one_line(exc)}"}
    out = {
        "runtime": peer.label,
        "package": peer.package,
        "version": installed_versions((peer.package,))[peer.package],
        "weights": peer.weights,
        "file_bytes": sum((folder / f).stat().st_size for f in peer.files if (folder / f).is_file()),
        "conversion": {
            **recorded["settings"],
            "applied": recorded.get("applied"),
            "versions": recorded.get("versions"),
            "convert_s": recorded.get("convert_s"),
        },
        "folder": str(folder),
        "properties": runner.properties,
    }
    for w in job["workloads"]:
        ids, n = [int(i) for i in w["ids"]], int(w["new_tokens"])
        try:
            out[w["key"]] = {
                "prompt_tokens": len(ids),
                "new_tokens": n,
                **measure.generate_baseline(
                    lambda n, timer, ids=ids: runner.generate(ids, n, timer), n, int(w["repeats"])
                ),
            }
        except Exception as exc:  # noqa: BLE001 - a failing generation skips the peer
            logger.debug("generation failed", exc_info=True)
            return {"skipped": f"generation failed: {_one_line(exc)}"}
    return out


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _child_reason(proc: subprocess.CompletedProcess) -> str:
    """Why a child gave no result: the signal that killed it or its exit status, and the last
    line it wrote to stderr."""
    if proc.returncode < 0:
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:
            sig = f"signal {-proc.returncode}"
        what = f"crashed ({sig})"
    else:
        what = f"exited with status {proc.returncode}"
    tail = [line.strip() for line in (proc.stderr or "").splitlines() if line.strip()]
    return what + (f": {tail[-1][:300]}" if tail else "")


def _child(mode: str, job: dict) -> dict:
    """`python -m benchmarks.peers MODE JOB RESULT`: its result, or why it gave none."""
    with tempfile.TemporaryDirectory(prefix="aigc-peer-") as tmp:
        job_file, result_file = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_file.write_text(json.dumps(job))
        env = dict(os.environ, OPENVINO_TELEMETRY_OPT_OUT="1", TOKENIZERS_PARALLELISM="false")
        cmd = [sys.executable, "-m", "benchmarks.peers", mode, str(job_file), str(result_file)]
        if logger.isEnabledFor(logging.DEBUG):
            cmd.append("--verbose")
        try:
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=CHILD_TIMEOUT_S,
                env=env,
                cwd=ROOT,
            )
        except subprocess.TimeoutExpired:
            return {"skipped": f"{mode}: did not finish within {CHILD_TIMEOUT_S:.0f} s"}
        if proc.stderr and logger.isEnabledFor(logging.DEBUG):
            logger.debug("peer %s %s stderr:\n%s", job["peer"], mode, proc.stderr)
        if proc.returncode != 0 or not result_file.is_file():
            return {"skipped": f"{mode}: {_child_reason(proc)}"}
        return json.loads(result_file.read_text())


def run_peer(
    name: str,
    checkpoint: Path,
    folder: Path,
    threads: int,
    workloads: list[dict],
    registry: dict[str, Peer] | None = None,
) -> dict:
    """One peer's figures per workload key, or `{"skipped": reason}`.

    A missing conversion is made in one child process and the peer measured in another: the
    converters load PyTorch, whose OpenMP threads left in a process slowed llama.cpp there
    about a thousandfold.
    """
    peer = (registry or PEERS)[name]
    why = peer.missing()
    if why:
        return {"skipped": why}
    job = {
        "peer": name,
        "checkpoint": str(Path(checkpoint).resolve()),
        "folder": str(Path(folder).absolute()),
        "threads": threads,
        "workloads": workloads,
    }
    converted = None
    if cached(peer, folder) is None:
        converted = _child("convert", job)
        if "skipped" in converted:
            return converted
    out = _child("measure", job)
    if "skipped" not in out:
        out["cached"] = converted is None  # converted in an earlier run
    return out
