"""GPT-2 (transformers `GPT2LMHeadModel`) with a byte-level BPE tokenizer trained on the corpus."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from aigc.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

EOS = "<|endoftext|>"


@dataclass
class GPT2TrainConfig:
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64
    n_positions: int = 128
    vocab_size: int = 512

    def validate(self) -> None:
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.vocab_size < 300:
            raise ConfigError(f"vocab_size must be >= 300 (256 bytes + merges), got {self.vocab_size}")


SIZE_PRESETS = {
    "tiny": GPT2TrainConfig(),
    "small": GPT2TrainConfig(n_layer=4, n_head=4, n_embd=128, n_positions=256, vocab_size=2048),
    "124m": GPT2TrainConfig(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257),
}


def train_tokenizer(text: str, vocab_size: int):
    """Byte-level BPE trained on `text`, wrapped for transformers (EOS doubles as BOS)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        [text], vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS], show_progress=False
    )
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, bos_token=EOS, unk_token=EOS)


def _model(cfg: GPT2TrainConfig, vocab: int, eos_id: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=vocab,
            n_positions=cfg.n_positions,
            n_embd=cfg.n_embd,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
        )
    )
    # transformers derives the loss from the class name and finds none in "GPT2LMHeadModel",
    # so it warns and falls back to the causal-LM loss; name that loss explicitly.
    model.loss_type = "ForCausalLM"
    return model


def _save(model, tok, out: Path, files: dict[str, str]) -> None:
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")


def train(opts) -> Path:
    from tqdm import tqdm

    from training.checkpoint import atomic_dir
    from training.common import seed_everything
    from training.data import load_text_corpus

    gen = seed_everything(opts.seed)
    cfg = SIZE_PRESETS[opts.size]
    cfg.validate()
    train_text, heldout = load_text_corpus(opts.data)
    steps, bs, lr = opts.steps or 1200, opts.batch_size or 16, opts.lr or 1e-3
    with atomic_dir(opts.out) as tmp:
        tok = train_tokenizer(train_text, cfg.vocab_size)
        ids = torch.tensor(tok(train_text)["input_ids"], dtype=torch.long)
        block = min(cfg.n_positions, 64 if opts.size == "tiny" else cfg.n_positions)
        if len(ids) <= block + 1:
            raise DataError(f"--data: corpus has {len(ids)} tokens, needs more than {block + 1}")
        model = _model(cfg, len(tok), tok.eos_token_id)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        model.train()
        bar = tqdm(range(steps), desc="gpt2", disable=None if opts.progress else True)
        for _ in bar:
            starts = torch.randint(0, len(ids) - block - 1, (bs,), generator=gen)
            x = torch.stack([ids[s : s + block] for s in starts.tolist()])
            loss = model(input_ids=x, labels=x).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        model.eval()
        prompt = tok("The ", return_tensors="pt")
        with torch.no_grad():
            sample = model.generate(
                **prompt, max_new_tokens=48, do_sample=False, pad_token_id=tok.eos_token_id
            )
        _save(model, tok, tmp, {"heldout.txt": heldout, "samples.txt": tok.decode(sample[0]) + "\n"})
    logger.info("gpt2 checkpoint written to %s (loss %.3f)", opts.out, loss.item())
    return Path(opts.out)


def create_random_gpt2(out: Path, preset: str = "124m", seed: int = 0) -> Path:
    """The GPT-2 architecture of `preset` with random weights, saved by `save_pretrained`.

    Its byte-level BPE tokenizer is trained on `pydoc_data` text and padded with unused
    tokens to the preset's vocabulary (50257 for 124M), so the compute matches the real
    `gpt2` and every token decodes to text. Nothing is downloaded.
    """
    from training.checkpoint import atomic_dir
    from training.data import load_text_corpus

    if preset not in SIZE_PRESETS:
        raise ConfigError(f"--size must be one of {', '.join(SIZE_PRESETS)}, got {preset!r}")
    cfg = SIZE_PRESETS[preset]
    torch.manual_seed(seed)
    train_text, heldout = load_text_corpus(None)
    with atomic_dir(out) as tmp:
        tok = train_tokenizer(train_text, min(cfg.vocab_size, 16384))
        # Pad the vocabulary with plain added tokens so that every id the random model can
        # produce decodes to text (a streamed benchmark then sees one delta per token).
        missing = cfg.vocab_size - len(tok)
        if missing > 0:
            tok.add_tokens([f"<|unused_{i}|>" for i in range(missing)])
        model = _model(cfg, max(cfg.vocab_size, len(tok)), tok.eos_token_id)
        _save(model.eval(), tok, tmp, {"heldout.txt": heldout})
    logger.info("random-weight GPT-2 (%s) written to %s", preset, out)
    return Path(out)
