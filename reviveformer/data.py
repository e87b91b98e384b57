"""Data: text sources -> documents -> tokenizer -> packed blocks, through `datasets` with on-disk caching.

Sources (design.md, Data): `stdlib` (the Python standard library's own source files on this machine, no
download), `text` (local files or folders) and `hub` (a `datasets` name/config). Documents are split into
train/validation before packing, so no validation block shares text with a training block.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict

from reviveformer.config import DataConfig
from reviveformer.errors import DataError

log = logging.getLogger("reviveformer")
datasets.disable_progress_bars()  # tokenising is quick and cached; the training bar is the one that matters

EOS = "<|endoftext|>"
# Documents are cut into chunks of about this many characters (at line boundaries) so that even a single
# text file yields enough documents for a train/validation split.
CHUNK_CHARS = 4000
# A file where more than this share of characters are invalid UTF-8 is taken for binary and skipped.
BINARY_SHARE = 0.1
TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".text", ".json", ".csv", ".tex", ".html", ""}
# Versions of how a tokenizer is trained (train_bpe_tokenizer) and blocks are packed (pack), in the cache keys:
# bump one when its code changes what it makes, so that no cache from before is reused.
BPE_RECIPE = "bytelevel-bpe-1"
PACK_RECIPE = "eos-concat-1"


@dataclass
class PackedData:
    """Packed train/validation blocks (columns input_ids, labels) and the tokenizer that made them."""

    train: Dataset
    val: Dataset
    tokenizer: object  # a transformers tokenizer
    fingerprint: str
    contents: dict[str, Any] = field(default_factory=dict)
    """What the blocks are made of (`describe_contents`), which a checkpoint records for a resume to check."""


def cache_root(cfg: DataConfig) -> Path:
    return Path(
        cfg.cache_dir or os.environ.get("REVIVEFORMER_CACHE", Path.home() / ".cache" / "reviveformer")
    )


def _stdlib_files(max_files: int | None) -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file())
    if not files:
        raise DataError(
            f"data.source=stdlib found no .py files in {root}; use data.source=text data.path=FILE"
        )
    return files[:max_files] if max_files else files


def _text_files(path: str, max_files: int | None) -> list[Path]:
    p = Path(path).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise DataError(
                f"data.path={path} is a folder with no text files ({', '.join(sorted(TEXT_SUFFIXES - {''}))})"
            )
        return files[:max_files] if max_files else files
    raise DataError(f"data.path={path} does not exist (give a text file or a folder of text files)")


def _pieces(line: str) -> list[str]:
    """A line cut into pieces of at most CHUNK_CHARS characters, each cut after the last whitespace before
    the limit (a hard cut where the piece's second half has none), so that a file on one line (minified
    text, a dump without newlines) chunks like the same text with newlines. Joined, they are the line."""
    pieces = []
    while len(line) > CHUNK_CHARS:
        cut = max(line.rfind(c, 0, CHUNK_CHARS) for c in " \t") + 1
        cut = cut if cut > CHUNK_CHARS // 2 else CHUNK_CHARS
        pieces.append(line[:cut])
        line = line[cut:]
    return [*pieces, line]


def _chunk(text: str) -> list[str]:
    chunks, cur, size = [], [], 0
    for line in text.splitlines(keepends=True):
        pieces = _pieces(line)
        for i, piece in enumerate(pieces):
            cur.append(piece)
            size += len(piece)
            if size >= CHUNK_CHARS or i < len(pieces) - 1:  # a cut piece was cut at the size: end there
                chunks.append("".join(cur))
                cur, size = [], 0
    if cur and "".join(cur).strip():
        chunks.append("".join(cur))
    return chunks


def read_text_file(path: Path) -> str | None:
    """A file's text as UTF-8. A few invalid bytes (a stray Latin-1 character, a cut multi-byte one) are
    decoded as U+FFFD with one warning naming the file, rather than dropping the whole file; a file that is
    mostly not UTF-8 (binary) is skipped with a warning. None when skipped."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        first = e.start
    text = raw.decode("utf-8", errors="replace")
    # count replacements against the file's own U+FFFD characters, which are valid UTF-8
    bad = text.count("\ufffd") - raw.count("\ufffd".encode())
    if bad > BINARY_SHARE * max(len(text), 1):
        log.warning("skipping %s: not UTF-8 text (%d of %d characters invalid)", path, bad, len(text))
        return None
    log.warning(
        "%s has %d invalid UTF-8 byte sequence(s), the first at byte %d; they are read as U+FFFD",
        path,
        bad,
        first,
    )
    return text


def texts_hash(ds: Dataset) -> str:
    """A hash of a split's documents, in order: what a tokenizer trained on it, or blocks packed from it, are
    made of. Hashing the text itself (not file names, sizes and times, nor the seed and val_fraction that
    chose the split) keys the caches by exactly their contents."""
    h = hashlib.sha256()
    for batch in ds.iter(batch_size=1000):
        for text in batch["text"]:
            data = text.encode("utf-8", errors="surrogatepass")
            h.update(len(data).to_bytes(8, "little"))  # so that document boundaries count
            h.update(data)
    return h.hexdigest()[:20]


def load_documents(cfg: DataConfig, seed: int) -> tuple[DatasetDict, str]:
    """Documents as a DatasetDict with splits train/validation (column `text`), and a fingerprint of them."""
    if cfg.source == "hub":
        return _load_hub(cfg, seed)
    files = (
        _stdlib_files(cfg.max_files) if cfg.source == "stdlib" else _text_files(cfg.path or "", cfg.max_files)
    )
    texts: list[str] = []
    for f in files:
        text = read_text_file(f)
        if text is not None:
            texts.extend(_chunk(text))
    texts = [t for t in texts if t.strip()]
    where = "the standard library" if cfg.source == "stdlib" else f"data.path={cfg.path}"
    if len(texts) < 2:
        raise DataError(
            f"{where} holds too little text ({len(texts)} non-empty chunk(s) of ~{CHUNK_CHARS} chars); "
            "need at least 2 for a train/validation split"
        )
    docs = _split(Dataset.from_dict({"text": texts}), cfg.val_fraction, seed)
    return docs, _docs_fingerprint(cfg.source, docs)


def _docs_fingerprint(source: str, docs: DatasetDict) -> str:
    return f"{source}-{texts_hash(docs['train'])}-{texts_hash(docs['validation'])}"


def _split(docs: Dataset, val_fraction: float, seed: int) -> DatasetDict:
    n_val = max(1, round(len(docs) * val_fraction))
    if n_val >= len(docs):
        raise DataError(
            f"data.val_fraction={val_fraction} leaves no training documents: the data has {len(docs)} "
            f"documents (chunks of ~{CHUNK_CHARS} characters) and {n_val} would go to validation; give "
            f"data.val_fraction at most {(len(docs) - 1) / len(docs):.3f}, or more text"
        )
    split = docs.train_test_split(test_size=n_val, seed=seed, shuffle=True)
    return DatasetDict(train=split["train"], validation=split["test"])


def _load_hub(cfg: DataConfig, seed: int) -> tuple[DatasetDict, str]:
    try:
        raw = datasets.load_dataset(cfg.name, cfg.config)
    except Exception as e:  # the hub raises many types (connection, not found, offline)
        raise DataError(
            f"data.name={cfg.name} data.config={cfg.config} could not be loaded from the hub or its "
            f"local cache: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    if "train" not in raw:
        raise DataError(f"dataset {cfg.name} has no 'train' split (splits: {', '.join(raw)})")
    col = cfg.text_column
    if col not in raw["train"].column_names:
        raise DataError(
            f"data.text_column={col} is not a column of {cfg.name} (columns: {raw['train'].column_names})"
        )

    def clean(ds: Dataset) -> Dataset:
        ds = (
            ds.select_columns([col]).rename_column(col, "text")
            if col != "text"
            else ds.select_columns(["text"])
        )
        return ds.filter(lambda b: [bool(t.strip()) for t in b["text"]], batched=True)

    if "validation" in raw:
        docs = DatasetDict(train=clean(raw["train"]), validation=clean(raw["validation"]))
    else:
        docs = _split(clean(raw["train"]), cfg.val_fraction, seed)
    return docs, _docs_fingerprint("hub", docs)


def train_bpe_tokenizer(texts, vocab_size: int):
    """A byte-level BPE tokenizer (GPT-2's scheme) trained on `texts`, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer, length=None)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS)


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except Exception as e:
        raise DataError(
            f"data.tokenizer={name_or_path} could not be loaded (a tokenizer folder, 'bpe' to train one, "
            f"or 'gpt2' when the hub or its cache is reachable): {type(e).__name__}"
        ) from None
    if tok.eos_token is None:
        raise DataError(
            f"tokenizer {name_or_path} has no end-of-text token; reviveformer separates documents with it"
        )
    return tok


def tokenizer_cache_key(train: Dataset, vocab_size: int) -> str:
    """What a trained bpe tokenizer is made of: the training documents themselves, the vocabulary size and the
    trainer (its version and our recipe), so that a cached one is the one a fresh machine would train."""
    import tokenizers

    src = json.dumps([texts_hash(train), vocab_size, tokenizers.__version__, BPE_RECIPE])
    return hashlib.sha256(src.encode()).hexdigest()[:20]


@contextlib.contextmanager
def _staged(final: Path) -> Iterator[Path]:
    """A fresh folder beside the cache entry `final` to write it in (a mkdtemp name: ours alone, never reused),
    renamed to `final` when the block ends, or dropped when another process finished first (theirs is kept).
    Left by any exception, a stop signal's during set-up included, it is removed: no unfinished folder stays."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(final)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)


def get_tokenizer(cfg: DataConfig, docs: DatasetDict):
    """The configured tokenizer; a trained bpe one is cached by `tokenizer_cache_key` and reused."""
    if cfg.tokenizer != "bpe":
        return load_tokenizer(cfg.tokenizer)
    cached = cache_root(cfg) / "tokenizers" / tokenizer_cache_key(docs["train"], cfg.vocab_size)
    if (cached / "tokenizer.json").is_file():
        return load_tokenizer(str(cached))
    tok = train_bpe_tokenizer(docs["train"]["text"], cfg.vocab_size)
    with _staged(cached) as tmp:
        tok.save_pretrained(tmp)
    return load_tokenizer(str(cached)) if (cached / "tokenizer.json").is_file() else tok


def tokenizer_fingerprint(tokenizer) -> str:
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def pack(docs: Dataset, tokenizer, block_size: int, fingerprint: str) -> Dataset:
    """Tokenise documents (each followed by EOS), concatenate and cut into full blocks of block_size."""
    eos = tokenizer.eos_token_id

    def tokenize(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"ids": [x + [eos] for x in ids]}

    def group(batch):
        flat = [t for ids in batch["ids"] for t in ids]
        n = len(flat) // block_size * block_size
        blocks = [flat[i : i + block_size] for i in range(0, n, block_size)]
        return {"input_ids": blocks, "labels": [list(b) for b in blocks]}

    # Explicit fingerprints: datasets cannot hash a tokenizer closure reliably (hub datasets are disk-backed,
    # so their map results are cached under these names; local ones are cached whole by prepare_data).
    tok = docs.map(
        tokenize,
        batched=True,
        remove_columns=docs.column_names,
        new_fingerprint=f"{fingerprint}-tok",
        desc="tokenising",
    )
    packed = tok.map(
        group,
        batched=True,
        batch_size=1000,
        remove_columns=["ids"],
        new_fingerprint=f"{fingerprint}-pack",
        desc="packing",
    )
    return packed


def _check_not_empty(train: Dataset, val: Dataset, cfg: DataConfig) -> None:
    if len(train) == 0 or len(val) == 0:
        which = "training" if len(train) == 0 else "validation"
        raise DataError(
            f"the {which} split has no full block of data.block_size={cfg.block_size} tokens "
            f"(source={cfg.source}{', path=' + cfg.path if cfg.path else ''}); give more text, a "
            "smaller data.block_size, or a larger data.val_fraction"
        )


def describe_source(cfg: DataConfig) -> str:
    """Where the documents come from, for messages: the standard library's folder names the Python version."""
    if cfg.source == "stdlib":
        return f"the standard library at {sysconfig.get_paths()['stdlib']}"
    if cfg.source == "hub":
        return f"hub dataset {cfg.name}" + (f"/{cfg.config}" if cfg.config else "")
    return str(cfg.path)


def describe_contents(
    cfg: DataConfig, docs_fingerprint: str, docs: DatasetDict, train: Dataset, val: Dataset
) -> dict:
    """The data's fingerprint that a checkpoint keeps (docs/design.md, "Resuming"): where it comes from, each
    split's text hash (`texts_hash`, in the documents' fingerprint) and its documents and trained tokens."""
    _, train_text, val_text = docs_fingerprint.rsplit("-", 2)  # _docs_fingerprint's "source-train-val"
    return {
        "source": describe_source(cfg),
        "train_text": train_text,
        "validation_text": val_text,
        "train_documents": len(docs["train"]),
        "validation_documents": len(docs["validation"]),
        "train_tokens": len(train) * cfg.block_size,
        "validation_tokens": len(val) * cfg.block_size,
    }


def prepare_data(cfg: DataConfig, seed: int, tokenizer=None) -> PackedData:
    """Documents -> tokenizer (trained, loaded, or the one given) -> packed train/validation blocks (cached)."""
    docs, fp = load_documents(cfg, seed)
    if tokenizer is None:
        tokenizer = get_tokenizer(cfg, docs)
    # the blocks are made of the documents of each split (fp hashes their text), the tokenizer and block_size
    key_src = json.dumps([fp, tokenizer_fingerprint(tokenizer), cfg.block_size, PACK_RECIPE])
    key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
    store = cache_root(cfg) / "packed" / key
    if (store / "done").is_file():
        train, val = (
            datasets.load_from_disk(str(store / "train")),
            datasets.load_from_disk(str(store / "validation")),
        )
    else:
        train = pack(docs["train"], tokenizer, cfg.block_size, f"{key}-train")
        val = pack(docs["validation"], tokenizer, cfg.block_size, f"{key}-val")
        _check_not_empty(train, val, cfg)
        with _staged(store) as tmp:
            train.save_to_disk(str(tmp / "train"))
            val.save_to_disk(str(tmp / "validation"))
            (tmp / "done").write_text(key_src)
        if (store / "done").is_file():
            train = datasets.load_from_disk(str(store / "train"))
            val = datasets.load_from_disk(str(store / "validation"))
    if cfg.max_tokens is not None:
        n_train = min(len(train), max(1, cfg.max_tokens // cfg.block_size))
        # validation shrinks in proportion so that small pilots do not spend most of their time evaluating
        n_val = min(len(val), max(1, round(n_train * cfg.val_fraction / (1 - cfg.val_fraction))))
        train, val = train.select(range(n_train)), val.select(range(n_val))
    _check_not_empty(train, val, cfg)
    train.set_format("torch")
    val.set_format("torch")
    return PackedData(train, val, tokenizer, key, describe_contents(cfg, fp, docs, train, val))
