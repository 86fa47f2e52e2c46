"""Rebuild Moonshine's Hugging Face tokenizer from the ``tokenizer.bin`` in the moonshine-cpp wheel.

Moonshine uses a Llama-style SentencePiece BPE tokenizer: 32000 pieces, byte fallback, ``▁`` for
spaces. The wheel ships only the vocabulary, as ``tokenizer.bin``: 32000 entries in id order, each
one length byte followed by that many bytes. Ids 0-2 hold the literal names ``<unk>``, ``<s>``,
``</s>``; ids 3-258 hold the raw single bytes 0x00-0xFF (the HF pieces ``<0x00>``-``<0xFF>``); the
rest are UTF-8 pieces.

The merges are not stored, but they can be derived: every split of a piece into two pieces that
are both in the vocabulary is a merge. Ordered by the merged piece's id (ties by left id, then
right id), with the merges whose result is made only of ``▁`` last, this reproduces the reference
``tokenizer.json`` exactly (61,249 merges).

Nothing here imports ``moonshine_cpp``; pass the path, e.g. from
:func:`moonlora.model.bundled.tokenizer_bin_path`.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

VOCAB_SIZE = 32000
UNK, BOS, EOS = "<unk>", "<s>", "</s>"
SPECIAL_TOKENS = (UNK, BOS, EOS)
NUM_BYTE_TOKENS = 256
FIRST_PIECE_ID = len(SPECIAL_TOKENS) + NUM_BYTE_TOKENS  # 259
SPACE = "\u2581"  # ▁


def read_vocab(tokenizer_bin: Path) -> list[str]:
    """The 32000 HF piece strings of ``tokenizer.bin``, in id order."""
    path = Path(tokenizer_bin)
    data = path.read_bytes()
    entries: list[bytes] = []
    pos = 0
    while pos < len(data):
        n = data[pos]
        end = pos + 1 + n
        if end > len(data):
            raise ValueError(
                f"{path}: truncated tokenizer.bin: entry {len(entries)} needs {n} bytes at offset "
                f"{pos + 1}, but the file is only {len(data)} bytes long"
            )
        entries.append(data[pos + 1 : end])
        pos = end
    if len(entries) != VOCAB_SIZE:
        raise ValueError(
            f"{path}: expected {VOCAB_SIZE} vocabulary entries in tokenizer.bin, found {len(entries)} "
            "(truncated or not a Moonshine tokenizer.bin?)"
        )

    vocab: list[str] = []
    for i, raw in enumerate(entries):
        if i < len(SPECIAL_TOKENS):
            # Stored as their names; accept an empty entry too.
            if raw not in (b"", SPECIAL_TOKENS[i].encode()):
                raise ValueError(f"{path}: entry {i} is {raw!r}, expected {SPECIAL_TOKENS[i]!r}")
            vocab.append(SPECIAL_TOKENS[i])
        elif i < FIRST_PIECE_ID:
            byte = i - len(SPECIAL_TOKENS)
            # Stored as the raw byte; accept an empty entry or the HF name too.
            name = f"<0x{byte:02X}>"
            if raw not in (b"", bytes([byte]), name.encode()):
                raise ValueError(f"{path}: entry {i} is {raw!r}, expected the byte 0x{byte:02X}")
            vocab.append(name)
        else:
            try:
                vocab.append(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}: entry {i} is not valid UTF-8: {raw!r}") from e
    if len(set(vocab)) != len(vocab):
        raise ValueError(f"{path}: tokenizer.bin has duplicate pieces")
    return vocab


def derive_merges(vocab: list[str]) -> list[tuple[str, str]]:
    """The BPE merges implied by a SentencePiece BPE vocabulary, in HF ``tokenizer.json`` order."""
    ids = {piece: i for i, piece in enumerate(vocab)}
    ranked: list[tuple[bool, int, int, int]] = []
    for merged_id in range(FIRST_PIECE_ID, len(vocab)):
        piece = vocab[merged_id]
        only_spaces = set(piece) == {SPACE}
        for k in range(1, len(piece)):
            left_id = ids.get(piece[:k])
            right_id = ids.get(piece[k:])
            if left_id is not None and right_id is not None:
                ranked.append((only_spaces, merged_id, left_id, right_id))
    ranked.sort()
    return [(vocab[left], vocab[right]) for _, _, left, right in ranked]


def build_tokenizer(tokenizer_bin: Path) -> Tokenizer:
    """The ``tokenizers.Tokenizer`` (Llama-style: prepends ``<s>`` when add_special_tokens is on)."""
    vocab = read_vocab(tokenizer_bin)
    merges = derive_merges(vocab)
    model = models.BPE(
        vocab={piece: i for i, piece in enumerate(vocab)},
        merges=merges,
        unk_token=UNK,
        byte_fallback=True,
        fuse_unk=True,
    )
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Sequence(
        [normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)]
    )
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace(SPACE, " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(content=" ", left=1, right=0),
        ]
    )
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    )
    bos_id = vocab.index(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0",
        pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
        special_tokens=[(BOS, bos_id)],
    )
    return tok


def build_hf_tokenizer(tokenizer_bin: Path):
    """A ``transformers.PreTrainedTokenizerFast`` for Moonshine (pad = ``</s>``, id 2)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(tokenizer_bin),
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=EOS,
        add_bos_token=True,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
    )
