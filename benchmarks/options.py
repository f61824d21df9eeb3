"""What `aigc bench` measures and how: its options, and the subjects it measures."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aigc import registry
from aigc.errors import ConfigError
from aigc.registry import ModelKind

BASELINES = ("eager", "optimum")


def bench_names() -> tuple[str, ...]:
    """What `--models` accepts: the benchmarked kinds' served components."""
    return tuple(k.bench.component for k in registry.benchmarked())


def bench_kind(name: str) -> ModelKind:
    """The benchmarked kind named by `name` (a kind or its measured component)."""
    for k in registry.benchmarked():
        if name in (k.name, k.bench.component):
            return k
    raise ConfigError(f"--models: unknown model {name!r}; allowed: {', '.join(bench_names())}")


@dataclass
class BenchOptions:
    out: Path = Path("runs/bench")
    cache: Path = Path("runs/bench-cache")
    url: str | None = None  # a running server's gRPC address; None = start the embedded one
    exports: tuple[Path, ...] = ()  # export folders to serve / compare (checkpoint from their report)
    # kind -> its checkpoint folder (`--gpt2`, `--dcgan`, `--vae`); a kind not given gets its
    # registry entry's default (the GPT-2 124M architecture with random weights, a tiny
    # DCGAN) or is measured only when served
    checkpoints: dict[str, Path] = field(default_factory=dict)
    gpt2_variant: str = "auto"  # the text generator's variant to serve
    image_variant: str = "auto"
    # kinds or served components (`registry.benchmarked()`); None: the required ones and
    # every other one where available
    models: tuple[str, ...] | None = None
    baselines: tuple[str, ...] = BASELINES
    # peer runtimes (benchmarks.peers): names, engine families, "all" or "none"; None: all
    # of them (--quick: the 4-bit ones and CTranslate2's int8)
    peers: tuple[str, ...] | None = None
    prompt_tokens: int = 16
    new_tokens: int = 64
    concurrency: tuple[int, ...] = (1, 2, 4, 8)
    # The long workload: a document-sized prompt; 0 prompt tokens: no long or mixed workload.
    long_prompt_tokens: int = 512
    long_new_tokens: int = 128
    long_concurrency: tuple[int, ...] = (1, 8)
    # The mixed workload: `mixed_streams` short streams (prompt_tokens -> mixed_new_tokens, back
    # to back) while `mixed_arrivals` long prompts (-> mixed_long_new_tokens) arrive every
    # `mixed_period_s`; 0 streams: not run.
    mixed_streams: int = 4
    mixed_new_tokens: int = 128
    mixed_long_new_tokens: int = 4
    mixed_arrivals: int = 5
    mixed_period_s: float = 3.0
    # The many-users workload: this many short streams at once, one request each (0: not run),
    # with the server's resident memory before and after.
    many_users: int = 64
    # The engine's offline probes (benchmarks.engine_probe) on the export's block-runner
    # (OpenVINO) variant: mixed calls, blocks by use, prefix caching, a shared prefix.
    engine_probe: bool = True
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    threads: int = 2
    repeats: int = 5
    # the one-stream served figure and the fastest peer's, measured again in turns (served,
    # peer, served, peer, ...): the ratio is taken per round, its median gated, its spread shown
    peer_rounds: int = 3
    # one stream and the most streams up to 8 served again in turns (1, 8, 1, 8, ...): the
    # gain of batching over one stream is taken per round, its median set against the ceiling
    scaling_rounds: int = 3
    image_requests: int = 200
    throughput_seconds: float = 3.0
    quick: bool = False
    progress: bool = True
    # genai-perf beside the bench's own client (benchmarks.genai_perf): auto (when on PATH),
    # off, or the path of its executable
    genai_perf: str = "auto"
    extra: dict = field(default_factory=dict)
    # the embedded server's process (its resident memory is read from /proc); None with --url
    server_pid: int | None = None

    def validate(self) -> None:
        if not 1 <= self.prompt_tokens <= 512:
            raise ConfigError(f"--prompt-tokens must be in 1..512, got {self.prompt_tokens}")
        if not 1 <= self.new_tokens <= 512:
            raise ConfigError(f"--new-tokens must be in 1..512, got {self.new_tokens}")
        if not 0 <= self.long_prompt_tokens <= 100_000:
            raise ConfigError(f"--long-prompt-tokens must be in 0..100000, got {self.long_prompt_tokens}")
        if not 1 <= self.long_new_tokens <= 512:
            raise ConfigError(f"--long-new-tokens must be in 1..512, got {self.long_new_tokens}")
        if not self.long_concurrency or any(not 1 <= c <= 64 for c in self.long_concurrency):
            raise ConfigError(
                f"--long-concurrency values must be in 1..64, got {list(self.long_concurrency)}"
            )
        if not 0 <= self.mixed_streams <= 64:
            raise ConfigError(f"--mixed-streams must be in 0..64, got {self.mixed_streams}")
        if not 1 <= self.mixed_new_tokens <= 512 or not 1 <= self.mixed_long_new_tokens <= 512:
            raise ConfigError(
                f"--mixed-new-tokens must be in 1..512, got {self.mixed_new_tokens} "
                f"(long: {self.mixed_long_new_tokens})"
            )
        if not 0 <= self.many_users <= 256:
            raise ConfigError(f"--many-users must be in 0..256, got {self.many_users}")
        if not 1 <= self.mixed_arrivals <= 1000:
            raise ConfigError(f"--mixed-arrivals must be in 1..1000, got {self.mixed_arrivals}")
        if not 0.01 <= self.mixed_period_s <= 600:
            raise ConfigError(f"--mixed-period must be in 0.01..600 seconds, got {self.mixed_period_s}")
        if not self.concurrency or any(not 1 <= c <= 64 for c in self.concurrency):
            raise ConfigError(f"--concurrency values must be in 1..64, got {list(self.concurrency)}")
        if not self.batch_sizes or any(not 1 <= b <= 64 for b in self.batch_sizes):
            raise ConfigError(f"--batch-sizes values must be in 1..64, got {list(self.batch_sizes)}")
        if not 1 <= self.threads <= 256:
            raise ConfigError(f"--threads must be in 1..256, got {self.threads}")
        if not 1 <= self.repeats <= 1000:
            raise ConfigError(f"--repeats must be in 1..1000, got {self.repeats}")
        if not 1 <= self.peer_rounds <= 20:
            raise ConfigError(f"--peer-rounds must be in 1..20, got {self.peer_rounds}")
        if not 1 <= self.scaling_rounds <= 20:
            raise ConfigError(f"--scaling-rounds must be in 1..20, got {self.scaling_rounds}")
        if not 1 <= self.image_requests <= 100_000:
            raise ConfigError(f"--image-requests must be in 1..100000, got {self.image_requests}")
        if not 0.1 <= self.throughput_seconds <= 600:
            raise ConfigError(f"--throughput-seconds must be in 0.1..600, got {self.throughput_seconds}")
        for b in self.baselines:
            if b not in BASELINES:
                raise ConfigError(f"--baselines: unknown baseline {b!r}; allowed: {', '.join(BASELINES)}")
        self.peer_names()
        if self.genai_perf not in ("auto", "off"):
            from benchmarks.genai_perf import locate

            locate(self.genai_perf)  # a path that is no executable fails now, not after the run
        if self.models is not None:
            if not self.models:
                raise ConfigError("--models: name at least one model")
            for m in self.models:
                bench_kind(m)
        for kind, path in self.checkpoints.items():
            registry.get(kind, "a checkpoint's model")
            if path is not None and not Path(path).is_dir():
                raise ConfigError(f"--{kind} {path}: not a checkpoint folder")
        for e in self.exports:
            if not (Path(e) / "export_report.json").is_file():
                raise ConfigError(f"--exports {e}: no export_report.json (an `aigc export` folder?)")

    def peer_names(self) -> tuple[str, ...]:
        """The peers to measure (raises ConfigError naming --peers for an unknown one)."""
        from benchmarks.peers import resolve

        return resolve(self.peers, self.quick)

    def scaling_top(self) -> int | None:
        """The most streams up to 8 served beside one stream: the concurrency whose gain over
        one stream is set against the batch step's ceiling; None without both."""
        tops = [c for c in self.concurrency if 1 < c <= 8]
        return max(tops) if tops and 1 in self.concurrency else None

    def quick_mode(self) -> BenchOptions:
        """The CI setting: a few minutes of measuring on 2 cores. 8 streams stay: the gate
        compares them with the ceiling that the offline step at batch 8 sets."""
        self.concurrency = tuple(c for c in self.concurrency if c in (1, 4, 8)) or (1,)
        # 8 long streams stay: their inter-token gap against 8 short streams' is gated
        self.long_concurrency = tuple(c for c in self.long_concurrency if c in (1, 8)) or (1,)
        # 4 long arrivals: the running streams' p99 gap during a prefill is then taken over
        # ~1800 gaps, where with 2 it was the 9th largest of ~900 (2-3 stalls of the machine
        # decided it: during / other p99 0.99-1.61 over ten runs of one machine and engine)
        self.mixed_arrivals = min(self.mixed_arrivals, 4)
        self.batch_sizes = tuple(b for b in self.batch_sizes if b in (1, 8)) or (1,)
        self.repeats = min(self.repeats, 3)
        self.image_requests = min(self.image_requests, 100)
        self.throughput_seconds = min(self.throughput_seconds, 1.0)
        return self


@dataclass
class Subject:
    """One served model to measure and the local files its in-process baselines run."""

    kind: ModelKind
    model: str  # the served component measured (the kind's `bench.component`)
    checkpoint: Path | None  # for the PyTorch / Optimum baselines; None: served figures only
    export: Path | None  # export folder: ONNX files (in-process ORT), tokenizer
    optional: bool = False  # measured only when the server has it (default model list)
