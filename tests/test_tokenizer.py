"""The tokenizer rebuilt from moonshine-cpp's tokenizer.bin matches the reference Moonshine tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from moonlora.model import bundled
from moonlora.model.tokenizer import (
    build_hf_tokenizer,
    build_tokenizer,
    derive_merges,
    read_vocab,
)

BECKETT = "Ever tried ever failed, no matter try again, fail again, fail better."
BECKETT_IDS = [18274, 1898, 3926, 5229, 29892, 694, 4383, 1018, 1449, 29892, 4418, 1449, 29892, 4418, 2253, 29889]
UNICODE = "Café 🚑 naïve"
UNICODE_IDS = [315, 28059, 29871, 243, 162, 157, 148, 1055, 30085, 345]
ORACLES = [(BECKETT, BECKETT_IDS), (UNICODE, UNICODE_IDS)]


@pytest.fixture(scope="module")
def tokenizer_bin() -> Path:
    try:
        path = bundled.tokenizer_bin_path()
    except bundled.BundledModelMissing as e:
        pytest.skip(str(e))
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="module")
def vocab(tokenizer_bin):
    return read_vocab(tokenizer_bin)


@pytest.fixture(scope="module")
def tok(tokenizer_bin):
    return build_tokenizer(tokenizer_bin)


@pytest.fixture(scope="module")
def hf_tok(tokenizer_bin):
    return build_hf_tokenizer(tokenizer_bin)


def test_vocab(vocab):
    assert len(vocab) == 32000
    assert vocab[:3] == ["<unk>", "<s>", "</s>"]
    assert vocab[3] == "<0x00>" and vocab[258] == "<0xFF>"
    assert vocab[259] == "▁▁"
    assert len(set(vocab)) == len(vocab)


def test_merge_count(vocab):
    merges = derive_merges(vocab)
    assert len(merges) == 61249
    assert len(set(merges)) == len(merges)
    # The merges that only build runs of ▁ come last.
    assert set("".join(merges[-1])) == {"▁"}
    assert set("".join(merges[0])) != {"▁"}


@pytest.mark.parametrize("text,ids", ORACLES, ids=["beckett", "unicode"])
def test_oracle_encode_decode(tok, text, ids):
    enc = tok.encode(text, add_special_tokens=False)
    assert enc.ids == ids
    assert tok.decode(ids) == text


@pytest.mark.parametrize("text,ids", ORACLES, ids=["beckett", "unicode"])
def test_hf_oracle(hf_tok, text, ids):
    assert hf_tok.encode(text, add_special_tokens=False) == ids
    assert hf_tok(text).input_ids == [1, *ids]  # <s> prepended, like Llama
    assert hf_tok.decode(ids) == text
    assert hf_tok.decode([1, *ids, 2], skip_special_tokens=True) == text


def test_bos_post_processor(tok):
    assert tok.encode(BECKETT).ids == [1, *BECKETT_IDS]


def test_special_tokens(hf_tok):
    assert (hf_tok.bos_token, hf_tok.bos_token_id) == ("<s>", 1)
    assert (hf_tok.eos_token, hf_tok.eos_token_id) == ("</s>", 2)
    assert (hf_tok.unk_token, hf_tok.unk_token_id) == ("<unk>", 0)
    assert (hf_tok.pad_token, hf_tok.pad_token_id) == ("</s>", 2)
    assert len(hf_tok) == 32000


def test_save_load_round_trip(hf_tok, tmp_path):
    from transformers import AutoTokenizer

    hf_tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text, ids in ORACLES:
        assert loaded.encode(text, add_special_tokens=False) == ids
        assert loaded(text).input_ids == hf_tok(text).input_ids == [1, *ids]
        assert loaded.decode(ids) == hf_tok.decode(ids) == text
    assert loaded.pad_token_id == 2 and loaded.eos_token_id == 2
    assert loaded.bos_token_id == 1 and loaded.unk_token_id == 0


def test_truncated_file(tokenizer_bin, tmp_path):
    data = tokenizer_bin.read_bytes()
    bad = tmp_path / "tokenizer.bin"

    bad.write_bytes(data[:-2])  # cut inside the last entry
    with pytest.raises(ValueError, match="tokenizer.bin"):
        read_vocab(bad)

    bad.write_bytes(data[: data.index(b"\x05<unk>") + 6 + 4])  # whole entries, far too few
    with pytest.raises(ValueError, match=r"expected 32000"):
        build_tokenizer(bad)

    bad.write_bytes(b"")
    with pytest.raises(ValueError, match=str(bad.name)):
        read_vocab(bad)
