"""Data: chunking, a BPE tokenizer trained on the split, packing into blocks, caching, errors."""

from __future__ import annotations

import pytest

from reviveformer.config import DataConfig
from reviveformer.data import EOS, load_documents, prepare_data
from reviveformer.errors import DataError


def _cfg(corpus, **kw) -> DataConfig:
    return DataConfig(source="text", path=str(corpus), vocab_size=400, block_size=32, **kw)


def test_packing_is_the_tokenised_documents_cut_into_blocks(corpus_file):
    d = prepare_data(_cfg(corpus_file), seed=0)
    tok = d.tokenizer
    assert len(tok) == 400
    assert tok.eos_token == EOS
    # every block is full and its labels are its inputs (the model shifts them)
    ids = d.train[:]["input_ids"]
    assert ids.shape[1] == 32 and ids.shape[0] == len(d.train)
    assert (d.train[0]["input_ids"] == d.train[0]["labels"]).all()
    # independently: tokenising the training documents with EOS after each gives the same stream
    stream = ids.reshape(-1).tolist()
    text = tok.decode(stream[:2000])
    assert EOS in tok.decode(stream)  # document boundaries are marked
    assert "def " in text or "import" in text  # the fixture is Python source
    n_tokens_total = len(stream) + d.val[:]["input_ids"].numel()
    raw = corpus_file.read_text()
    n_independent = len(tok(raw, add_special_tokens=False)["input_ids"])
    # packing drops under one block per split, and chunking at line ends barely changes token counts
    assert abs(n_tokens_total - n_independent) < 0.02 * n_independent + 64


def test_split_is_deterministic_and_disjoint(corpus_file):
    a = prepare_data(_cfg(corpus_file), seed=0)
    b = prepare_data(_cfg(corpus_file), seed=0)
    assert (a.train[:]["input_ids"] == b.train[:]["input_ids"]).all()
    assert len(a.val) >= 1
    docs, _ = load_documents(_cfg(corpus_file), seed=0)
    train_docs, val_docs = set(docs["train"]["text"]), set(docs["validation"]["text"])
    assert train_docs and val_docs and not (train_docs & val_docs)
    # together they are the whole corpus, in order-independent chunks
    assert sum(map(len, train_docs | val_docs)) == len(corpus_file.read_text())


def test_second_run_hits_the_cache(corpus_file, monkeypatch):
    prepare_data(_cfg(corpus_file, val_fraction=0.1), seed=1)
    import reviveformer.data as data_mod

    def boom(*a, **k):
        raise AssertionError("re-tokenised on a cache hit")

    monkeypatch.setattr(data_mod, "pack", boom)
    monkeypatch.setattr(data_mod, "train_bpe_tokenizer", boom)
    d = prepare_data(_cfg(corpus_file, val_fraction=0.1), seed=1)
    assert len(d.train) > 0


def test_max_tokens_caps_training_blocks(corpus_file):
    d = prepare_data(_cfg(corpus_file, max_tokens=32 * 10), seed=0)
    assert len(d.train) == 10
    assert 1 <= len(d.val) <= 2


def test_stdlib_source_needs_no_download():
    d = prepare_data(DataConfig(source="stdlib", max_files=5, vocab_size=400, block_size=32), seed=0)
    assert len(d.train) > 10


def test_missing_and_empty_data(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare_data(DataConfig(source="text", path=str(tmp_path / "none.txt")), seed=0)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="too little text"):
        prepare_data(DataConfig(source="text", path=str(empty)), seed=0)
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(DataError, match="no text files"):
        prepare_data(DataConfig(source="text", path=str(folder)), seed=0)


def test_text_shorter_than_a_block(tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("x = 1\n" * 3000)  # plenty of chunks, but tiny vocab blocks still form; use a huge block
    with pytest.raises(DataError, match="no full block"):
        prepare_data(DataConfig(source="text", path=str(small), vocab_size=300, block_size=100000), seed=0)


def test_hub_source_without_network_is_a_clear_error():
    with pytest.raises(DataError, match="could not be loaded"):
        prepare_data(DataConfig(source="hub", name="surely-not-a-dataset-xyz", config=None), seed=0)


def test_a_few_invalid_utf8_bytes_are_replaced_with_one_warning(corpus_file, tmp_path, caplog):
    """A text file with three stray bytes keeps all its text (each bad byte read as U+FFFD) and warns once,
    naming the file; before, the whole file was dropped."""
    text = corpus_file.read_text()
    raw = text.encode()
    cut = [len(raw) // 4, len(raw) // 2, 3 * len(raw) // 4]
    bad = (
        raw[: cut[0]]
        + b"\xff"
        + raw[cut[0] : cut[1]]
        + b"\xfe"
        + raw[cut[1] : cut[2]]
        + b"\x80"
        + raw[cut[2] :]
    )
    path = tmp_path / "latin.txt"
    path.write_bytes(bad)
    with caplog.at_level("WARNING", logger="reviveformer"):
        docs, _ = load_documents(DataConfig(source="text", path=str(path)), seed=0)
    joined = "".join(docs["train"]["text"]) + "".join(docs["validation"]["text"])
    assert len(joined) == len(text) + 3 and joined.count("\ufffd") == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(path) in warnings[0] and "3 invalid UTF-8" in warnings[0]
    assert f"byte {cut[0]}" in warnings[0]


def test_a_binary_file_in_a_folder_is_skipped(corpus_file, tmp_path, caplog):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "code.py").write_text(corpus_file.read_text())
    (folder / "blob").write_bytes(bytes(range(128, 256)) * 64)  # no suffix: a text candidate, but not text
    with caplog.at_level("WARNING", logger="reviveformer"):
        docs, _ = load_documents(DataConfig(source="text", path=str(folder)), seed=0)
    assert sum(len(t) for split in docs.values() for t in split["text"]) == len(corpus_file.read_text())
    assert any("skipping" in r.getMessage() and "blob" in r.getMessage() for r in caplog.records)


def test_a_split_that_leaves_no_training_documents(corpus_file):
    """~30 documents of ~4000 characters: val_fraction 0.999 would put them all in validation."""
    n_docs = len(load_documents(_cfg(corpus_file), seed=0)[0]["train"]) + 2  # at least
    with pytest.raises(
        DataError, match=r"data.val_fraction=0.999 leaves no training documents.*at most 0\.9"
    ):
        load_documents(_cfg(corpus_file, val_fraction=0.999), seed=0)
    assert n_docs > 10


def test_cache_temporaries_are_unique_and_cleaned(corpus_file, tmp_path):
    """The packed-data cache is written under a mkdtemp name: a folder that happens to hold the old fixed
    temporary name (`<key>.tmp<pid>`) is neither written into nor moved, and nothing temporary is left."""
    import os

    key = prepare_data(_cfg(corpus_file, cache_dir=str(tmp_path / "a")), seed=0).fingerprint
    stale = tmp_path / "b" / "packed" / f"{key}.tmp{os.getpid()}"
    stale.mkdir(parents=True)
    (stale / "keep.txt").write_text("not the program's")
    d = prepare_data(_cfg(corpus_file, cache_dir=str(tmp_path / "b")), seed=0)
    assert d.fingerprint == key and len(d.train) > 0
    assert sorted(p.name for p in stale.iterdir()) == ["keep.txt"]
    assert not (tmp_path / "b" / "packed" / key / "keep.txt").exists()
    leftovers = [p.name for p in (tmp_path / "b").rglob("*") if ".tmp" in p.name and p != stale]
    assert leftovers == []


def _prepared(corpus, cache, seed: int):
    from reviveformer.data import tokenizer_fingerprint

    d = prepare_data(_cfg(corpus, cache_dir=str(cache)), seed=seed)
    return tokenizer_fingerprint(d.tokenizer), d.train[:]["input_ids"].tolist()


def test_a_cached_tokenizer_is_the_one_a_fresh_machine_would_train(corpus_file, tmp_path):
    """Issue 18 item 1: the seed chooses the training documents, so a tokenizer trained for seed 1 is not the
    one for seed 2; whichever ran first on a machine (a shared cache), each run gets the tokenizer and the
    blocks it gets from an empty cache."""
    fresh = {seed: _prepared(corpus_file, tmp_path / f"fresh{seed}", seed) for seed in (1, 2)}
    assert fresh[1][0] != fresh[2][0], (
        "the seeds must train different tokenizers for this test to mean anything"
    )
    for order in ((1, 2), (2, 1)):
        shared = tmp_path / f"shared{order[0]}{order[1]}"
        for seed in order:
            assert _prepared(corpus_file, shared, seed) == fresh[seed], (order, seed)


def test_a_file_changed_in_the_same_second_is_tokenised_anew(corpus_file, tmp_path):
    """The caches are keyed by the text, not by the file's name, size and modification time: an edit that
    keeps all three gets the tokenizer and blocks of its new text."""
    import os

    path = tmp_path / "data.txt"
    text = corpus_file.read_text()
    path.write_text(text)
    stamp = path.stat().st_mtime_ns
    _prepared(path, tmp_path / "shared", 0)
    path.write_text(text.replace("def ", "fed "))  # same size
    os.utime(path, ns=(stamp, stamp))
    copy = tmp_path / "copy" / "data.txt"
    copy.parent.mkdir()
    copy.write_text(path.read_text())
    assert _prepared(path, tmp_path / "shared", 0) == _prepared(copy, tmp_path / "fresh", 0)


def test_text_on_one_line_is_chunked_like_text_with_newlines(corpus_file, tmp_path):
    """Issue 18 item 2: a file without newlines was one chunk ("too little text") whatever its size. Cut at
    whitespace into pieces of at most CHUNK_CHARS characters, it makes as many documents as its length calls
    for, loses no character, and trains."""
    from reviveformer.data import CHUNK_CHARS

    text = " ".join(corpus_file.read_text().split())  # the corpus's words on one line, ~18 chunks
    assert "\n" not in text and len(text) > 10 * CHUNK_CHARS
    one_line = tmp_path / "one_line.txt"
    one_line.write_text(text)
    docs, _ = load_documents(_cfg(one_line), seed=0)
    chunks = [*docs["train"]["text"], *docs["validation"]["text"]]
    # no character lost, none longer than a chunk: so at least len / CHUNK_CHARS documents
    assert sum(map(len, chunks)) == len(text) and max(map(len, chunks)) <= CHUNK_CHARS
    # every cut but the text's last is after a space, so no word is split
    assert sum(c.endswith(" ") for c in chunks) == len(chunks) - 1
    d = prepare_data(_cfg(one_line), seed=0)
    assert len(d.train) > 0 and len(d.val) > 0
    # a line with no whitespace at all is cut hard, at CHUNK_CHARS
    hard = tmp_path / "hard.txt"
    hard.write_text("ab" * (CHUNK_CHARS + 100))
    docs, _ = load_documents(_cfg(hard), seed=0)
    assert sorted(map(len, [*docs["train"]["text"], *docs["validation"]["text"]])) == [
        200,
        CHUNK_CHARS,
        CHUNK_CHARS,
    ]


def test_a_stop_while_the_cache_is_written_leaves_no_unfinished_folder(corpus_file, tmp_path, monkeypatch):
    """A stop signal during set-up raises in the middle of a cache write (here: once the training split is
    saved, before the validation split); the unfinished folder it was written in is removed, and the next run
    writes the entry whole."""
    from datasets import Dataset

    from reviveformer.errors import StoppedInSetup

    saved = Dataset.save_to_disk
    calls = []

    def stop_at_the_second(self, path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            raise StoppedInSetup("SIGTERM")
        return saved(self, path, *a, **k)

    monkeypatch.setattr(Dataset, "save_to_disk", stop_at_the_second)
    cache = tmp_path / "cache"
    with pytest.raises(StoppedInSetup):
        prepare_data(_cfg(corpus_file, cache_dir=str(cache)), seed=0)
    assert len(calls) == 2 and calls[0].endswith("/train")  # stopped after the training split was written
    packed = cache / "packed"
    assert [p.name for p in packed.iterdir()] == []  # neither the entry nor its unfinished folder
    monkeypatch.setattr(Dataset, "save_to_disk", saved)
    d = prepare_data(_cfg(corpus_file, cache_dir=str(cache)), seed=0)
    assert len(d.train) > 0 and [(p / "done").is_file() for p in packed.iterdir()] == [True]
