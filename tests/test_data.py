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
