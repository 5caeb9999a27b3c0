"""Deterministic synthetic GGUF models shaped like CohereLabs Tiny Aya Global.

    .cache/venv/bin/python scripts/make_models.py --out .cache/models --tiny
    .cache/venv/bin/python scripts/make_models.py --out /tmp/models --full

Both files use the llama.cpp architecture `cohere2` (Tiny Aya, Command R7B) with the
real model's special tokens, byte-level BPE tokenizer type (`gpt2`, pre-tokenizer
`tiny_aya`) and chat template, so the code paths that depend on the model's kind
(template, control tokens, end of generation, sliding-window KV cache) run as they
would on the real model. The weights are random (normal, std 0.02, fixed seed): the
models produce nonsense, but the same nonsense on every run.

- `--tiny` writes `tiny-aya-cohere2-f16.gguf`, a few MB: 4 layers (so the pattern of
  three sliding-window layers and one global layer appears), hidden 256 (a multiple
  of 256, so K-quants apply when it is quantized), 4 heads of 64, 2 KV heads, FFN 512,
  and a 1024-token vocabulary (see below). The file is byte-identical on every run
  and is left untouched when it already holds that content.
- `--full` writes `tiny-aya-full-synthetic-f16.gguf` (about 6.7 GB) with the exact
  tensor shapes of the real model and a 262,144-token vocabulary, for speed and size
  measurements. It is written tensor by tensor, holding at most one tensor (1 GiB)
  in memory.

The vocabulary: the special tokens, the 256 GPT-2 byte tokens, BPE merges learnt from
a few English sentences and from the chat template's own text, then filler tokens up
to the vocabulary size. So real text tokenizes into words and pieces of words, and the
template's fixed preamble (740 bytes) takes about 140 tokens, as with a real
tokenizer, instead of one token per byte.

Each file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# The guest's built-in copy of the real model's chat template (the same text as the
# reference reconstruction the guest's golden tests use).
DEFAULT_CHAT_TEMPLATE = ROOT / "guest" / "templates" / "tiny-aya.jinja"

ARCH = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.COHERE2]  # "cohere2"
SEED = 20260217
WEIGHT_STD = 0.02
CHUNK = 1 << 24  # random values drawn per step while filling a tensor

# Hyperparameters shared by both models, as in Tiny Aya Global. The real config's
# logit_scale is taken as 1.0 (per a third-party reimplementation of the HF config);
# the real context length is larger, 8192 is what the app needs.
CONTEXT_LENGTH = 8192
SLIDING_WINDOW = 4096
ROPE_THETA = 50_000.0
NORM_EPS = 1e-5
LOGIT_SCALE = 1.0

# Special tokens at the start of the vocabulary, all CONTROL. PAD, BOS and EOS have
# the real model's ids; the other ids are our choice (the app resolves them by text).
PAD, UNK, BOS, EOS = "<PAD>", "<UNK>", "<BOS_TOKEN>", "<EOS_TOKEN>"
SPECIAL_TOKENS = [
    PAD,
    UNK,
    BOS,
    EOS,
    "<|START_OF_TURN_TOKEN|>",
    "<|END_OF_TURN_TOKEN|>",
    "<|SYSTEM_TOKEN|>",
    "<|USER_TOKEN|>",
    "<|CHATBOT_TOKEN|>",
    "<|START_RESPONSE|>",
    "<|END_RESPONSE|>",
]

# Everyday English of the kind the tests send; the BPE merges are learnt from it and
# from the chat template's text.
MERGE_CORPUS = """\
Hello there! How are you today? I am fine, thank you, and you?
What is your name? My name is Aya, and I am a helpful assistant.
Can you help me translate this sentence into French, Spanish, German or Italian?
Please translate the following text from English into another language.
The weather is nice today and the sun is shining over the city.
We went to the market in the morning to buy bread, milk, eggs and fresh fruit.
Tell me a short story about a small robot who wants to learn every language in the world.
Where is the train station? How much does this ticket cost? Thank you very much.
I would like a cup of coffee and a glass of water, please.
Good morning, good afternoon, good evening and good night. See you tomorrow!
The answer should be written in the same language as the question.
Write one sentence that explains what you can do for me when there is no internet.
They said that this is the best book they have read this year.
It is important to be kind to other people, to listen and to learn from them.
This is a test of the tokenizer with numbers like 7, 42, 365 and 2048.
"""

# Pre-tokenization for learning the merges: an ASCII rendering of the `tiny_aya`
# split (a word with at most one leading non-letter, runs of up to three digits,
# punctuation runs, whitespace), so the merges fit the pieces llama.cpp produces.
PRETOKEN = re.compile(
    r"[^\r\nA-Za-z0-9]?[A-Z]*[a-z]+(?:'[a-z]{1,2})?"
    r"|[^\r\nA-Za-z0-9]?[A-Z]+[a-z]*(?:'[a-z]{1,2})?"
    r"|[0-9]{1,3}"
    r"| ?[^\sA-Za-z0-9]+[\r\n/]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class ModelSpec:
    """The shape of one synthetic model."""

    file_name: str
    name: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_vocab: int

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


TINY = ModelSpec(
    file_name="tiny-aya-cohere2-f16.gguf",
    name="Tiny Aya Cohere2 synthetic tiny",
    n_layer=4, n_embd=256, n_ff=512, n_head=4, n_head_kv=2, n_vocab=1024,
)
FULL = ModelSpec(
    file_name="tiny-aya-full-synthetic-f16.gguf",
    name="Tiny Aya Cohere2 synthetic full size",
    n_layer=36, n_embd=2048, n_ff=11008, n_head=16, n_head_kv=4, n_vocab=262_144,
)


# --- Vocabulary -------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level mapping: every byte to one printable character."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def template_text(chat_template: str) -> str:
    """The literal text of a Jinja chat template: no tags, no control-token names."""
    return re.sub(r"\{%.*?%\}|\{\{.*?\}\}|<\|[A-Z_]+\|>", "", chat_template, flags=re.S)


def learn_merges(text: str, max_new_tokens: int) -> tuple[list[str], list[str]]:
    """Byte-level BPE on `text`: the merges, in rank order, and the tokens they make.

    Each step merges the most frequent adjacent pair (ties: the smallest pair), until
    `max_new_tokens` new tokens exist or every word is a single token.
    """
    byte_char = bytes_to_unicode()
    words = Counter(
        tuple(byte_char[b] for b in piece.encode("utf-8")) for piece in PRETOKEN.findall(text)
    )
    merges: list[str] = []
    new_tokens: list[str] = []
    known = set(byte_char.values())
    while len(new_tokens) < max_new_tokens:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merged = best[0] + best[1]
        merges.append(f"{best[0]} {best[1]}")
        if merged not in known:
            known.add(merged)
            new_tokens.append(merged)
        words = Counter({merge_pair(word, best): count for word, count in words.items()})
    return merges, new_tokens


def merge_pair(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """`word` with every occurrence of `pair` joined into one symbol."""
    out: list[str] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def build_vocab(n_vocab: int, chat_template: str) -> tuple[list[str], list[int], list[str]]:
    """Tokens, token types and merges: special tokens, the 256 byte tokens, the
    merges learnt from MERGE_CORPUS and the template, then fillers up to `n_vocab`.

    Fillers are NORMAL tokens (" filler123") so that every sampled id prints as text,
    as with a real vocabulary; no merge produces them, so no input tokenizes to them.
    """
    byte_tokens = [bytes_to_unicode()[b] for b in range(256)]
    n_fixed = len(SPECIAL_TOKENS) + len(byte_tokens)
    merges, merged = learn_merges(MERGE_CORPUS + template_text(chat_template), n_vocab - n_fixed)
    space = bytes_to_unicode()[ord(" ")]
    fillers = [f"{space}filler{i}" for i in range(n_vocab - n_fixed - len(merged))]

    tokens = SPECIAL_TOKENS + byte_tokens + merged + fillers
    check_vocab(tokens, merges, n_vocab)
    n_special = len(SPECIAL_TOKENS)
    types = [gguf.TokenType.CONTROL] * n_special + [gguf.TokenType.NORMAL] * (n_vocab - n_special)
    return tokens, [int(t) for t in types], merges


def check_vocab(tokens: list[str], merges: list[str], n_vocab: int) -> None:
    """Fails unless the vocabulary has `n_vocab` unique tokens and every merge joins
    two tokens into a token."""
    if len(tokens) != n_vocab or len(set(tokens)) != n_vocab:
        raise ValueError(
            f"vocabulary has {len(tokens)} tokens, {len(set(tokens))} unique; expected {n_vocab}"
        )
    known = set(tokens)
    for merge in merges:
        left, right = merge.split(" ")
        if left not in known or right not in known or left + right not in known:
            raise ValueError(f"merge {merge!r} does not join two tokens into a token")


# --- Model file ---------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """One tensor: GGUF name, numpy shape (ggml's dimensions reversed), and whether it
    is a norm (F32, all ones) or a weight matrix (F16, random)."""

    name: str
    shape: tuple[int, ...]
    is_norm: bool

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32 if self.is_norm else np.float16)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize


def tensor_name(kind: gguf.MODEL_TENSOR, layer: int | None = None) -> str:
    return gguf.TENSOR_NAMES[kind].format(bid=layer) + ".weight"


def tensor_specs(spec: ModelSpec) -> list[TensorSpec]:
    """The tensors llama.cpp's cohere2 loader creates; the output projection is tied
    to the token embedding, so there is no `output.weight`."""
    T = gguf.MODEL_TENSOR
    n_kv = spec.n_head_kv * spec.head_dim
    specs = [
        TensorSpec(tensor_name(T.TOKEN_EMBD), (spec.n_vocab, spec.n_embd), False),
        TensorSpec(tensor_name(T.OUTPUT_NORM), (spec.n_embd,), True),
    ]
    for i in range(spec.n_layer):
        specs += [
            TensorSpec(tensor_name(T.ATTN_NORM, i), (spec.n_embd,), True),
            TensorSpec(tensor_name(T.ATTN_Q, i), (spec.n_embd, spec.n_embd), False),
            TensorSpec(tensor_name(T.ATTN_K, i), (n_kv, spec.n_embd), False),
            TensorSpec(tensor_name(T.ATTN_V, i), (n_kv, spec.n_embd), False),
            TensorSpec(tensor_name(T.ATTN_OUT, i), (spec.n_embd, spec.n_embd), False),
            TensorSpec(tensor_name(T.FFN_GATE, i), (spec.n_ff, spec.n_embd), False),
            TensorSpec(tensor_name(T.FFN_UP, i), (spec.n_ff, spec.n_embd), False),
            TensorSpec(tensor_name(T.FFN_DOWN, i), (spec.n_embd, spec.n_ff), False),
        ]
    return specs


def add_metadata(writer: gguf.GGUFWriter, spec: ModelSpec, chat_template: str) -> None:
    """The keys convert_hf_to_gguf.py writes for a Cohere2 model, and the tokenizer."""
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(spec.name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(spec.n_embd)
    writer.add_block_count(spec.n_layer)
    writer.add_feed_forward_length(spec.n_ff)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(spec.n_head_kv)
    writer.add_layer_norm_eps(NORM_EPS)
    writer.add_rope_freq_base(ROPE_THETA)
    writer.add_rope_dimension_count(spec.head_dim)
    writer.add_rope_scaling_type(gguf.RopeScalingType.NONE)
    writer.add_logit_scale(LOGIT_SCALE)
    # llama.cpp applies the window to three layers out of four (its cohere2 default).
    writer.add_sliding_window(SLIDING_WINDOW)
    writer.add_vocab_size(spec.n_vocab)

    tokens, types, merges = build_vocab(spec.n_vocab, chat_template)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("tiny_aya")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(SPECIAL_TOKENS.index(BOS))
    writer.add_eos_token_id(SPECIAL_TOKENS.index(EOS))
    writer.add_pad_token_id(SPECIAL_TOKENS.index(PAD))
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(chat_template)


def random_f16(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Normal values with std WEIGHT_STD, drawn in float32 a chunk at a time so the
    only large buffer is the float16 result."""
    out = np.empty(shape, np.float16)
    flat = out.reshape(-1)
    buf = np.empty(min(CHUNK, flat.size), np.float32)
    for start in range(0, flat.size, CHUNK):
        part = buf[: min(CHUNK, flat.size - start)]
        rng.standard_normal(out=part, dtype=np.float32)
        part *= WEIGHT_STD
        flat[start : start + part.size] = part
    return out


def write_model(spec: ModelSpec, path: Path, chat_template: str) -> None:
    """Writes the model to `path`: metadata and tensor index first, then each tensor
    as it is generated."""
    tensors = tensor_specs(spec)
    writer = gguf.GGUFWriter(path, ARCH)
    try:
        add_metadata(writer, spec, chat_template)
        for t in tensors:
            writer.add_tensor_info(t.name, t.shape, t.dtype, t.nbytes)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        rng = np.random.default_rng(SEED)
        for t in tensors:
            data = np.ones(t.shape, t.dtype) if t.is_norm else random_f16(rng, t.shape)
            writer.write_tensor_data(data)
    finally:
        writer.close()


# --- Files ----------------------------------------------------------------------------


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_free_space(spec: ModelSpec, out: Path) -> None:
    """Fails early when `out` cannot hold the model's tensors (plus 1% for the rest)."""
    need = sum(t.nbytes for t in tensor_specs(spec)) * 101 // 100
    free = shutil.disk_usage(out).free
    if free < need:
        raise OSError(f"{out}: {free:,} bytes free, {spec.file_name} needs about {need:,}")


def make(spec: ModelSpec, out: Path, chat_template: str, keep_identical: bool) -> None:
    """Writes `spec` into `out` under a temporary name, then renames it. With
    `keep_identical`, an existing file with the same SHA-256 is left untouched."""
    check_free_space(spec, out)
    final = out / spec.file_name
    part = out / (spec.file_name + ".part")
    start = time.monotonic()
    try:
        write_model(spec, part, chat_template)
        digest = sha256(part) if keep_identical else None
        if digest is not None and final.is_file() and sha256(final) == digest:
            part.unlink()
            verb = "unchanged"
        else:
            os.replace(part, final)
            verb = "wrote"
    finally:
        part.unlink(missing_ok=True)
    seconds = time.monotonic() - start
    hash_note = f", sha256 {digest}" if digest else ""
    print(f"{verb} {final} ({final.stat().st_size:,} bytes, {seconds:.1f} s{hash_note})")


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Write deterministic synthetic GGUF models shaped like Tiny Aya Global."
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="output directory (created if missing)"
    )
    parser.add_argument("--tiny", action="store_true", help=f"write {TINY.file_name} (a few MB)")
    parser.add_argument(
        "--full", action="store_true", help=f"write {FULL.file_name} (about 6.7 GB)"
    )
    parser.add_argument(
        "--chat-template",
        type=Path,
        default=DEFAULT_CHAT_TEMPLATE,
        help="Jinja chat template stored as tokenizer.chat_template (default: %(default)s)",
    )
    args = parser.parse_args()
    if not (args.tiny or args.full):
        parser.error("nothing to do: give --tiny, --full or both")

    try:
        chat_template = args.chat_template.read_text(encoding="utf-8")
        args.out.mkdir(parents=True, exist_ok=True)
        if args.tiny:
            make(TINY, args.out, chat_template, keep_identical=True)
        if args.full:
            make(FULL, args.out, chat_template, keep_identical=False)
    except (OSError, ValueError) as e:
        print(f"make_models.py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("make_models.py: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
