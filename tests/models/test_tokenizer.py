"""QwenTokenizer against tiktoken (same ranks, Qwen regex) and transformers (same tokenizer.json)."""

import pytest

from segzero_jax.models.qwen2_5_vl.tokenizer import (QWEN2_5_VL_SPECIAL_TOKENS,
                                                      QWEN2_PRETOKENIZE_REGEX, QwenTokenizer,
                                                      byte_to_unicode, default_tiktoken_path,
                                                      load_tiktoken_ranks)

CORPUS = [
    "Hello world!  \n\n  def f(x):\n\treturn x**2  # 12345678\n",
    "你好，世界。これは日本語のテキストです。한국어도 있습니다.",
    "emoji 😀👍🏽🇩🇪 café naïve Ελληνικά русский",
    "   lots   of    space\r\n\r\n\t\t  trailing   ",
    '<think>The cat is left.</think>\n<answer>{"bbox": [10,100,200,210], '
    '"points_1": [30,110], "points_2": [35,180]}</answer>',
    "1234567890 3.14159 -42e10 0x1F 1,000,000.50",
    "I'm they'RE we'll You'VE it's SHE'D",
    "for (int i = 0; i < n; ++i) { a[i] += b[i] >> 2; }\n// ~!@#$%^&*()_+",
    "mixed\u00a0nbsp\u3000ideographic\u2028line sep",
    "",
]


@pytest.fixture(scope="module")
def tok():
    return QwenTokenizer.default()


@pytest.fixture(scope="module")
def tiktoken_enc():
    import tiktoken
    ranks = load_tiktoken_ranks(default_tiktoken_path())
    special = {text: idx for idx, text, _ in QWEN2_5_VL_SPECIAL_TOKENS}
    return tiktoken.Encoding("qwen2_5", pat_str=QWEN2_PRETOKENIZE_REGEX, mergeable_ranks=ranks,
                             special_tokens=special)


@pytest.mark.parity
def test_default_matches_tiktoken_and_roundtrips(tok, tiktoken_enc):
    for text in CORPUS:
        ids = tok.encode(text)
        assert ids == tiktoken_enc.encode(text, disallowed_special=()), text
        assert tok.decode(ids) == text


@pytest.mark.parity
def test_default_special_tokens(tok, tiktoken_enc):
    assert tok.vocab_size == 151665
    assert tok.pad_id == 151643 and tok.eos_ids == (151645, 151643)
    for idx, text, _ in QWEN2_5_VL_SPECIAL_TOKENS:
        assert tok.encode(text) == [idx]
    text = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n"
    ids = tok.encode(text)
    assert ids == tiktoken_enc.encode(text, allowed_special="all")
    assert ids[:3] == [151644, 872, 198]
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi\n"
    assert 151657 not in tok.special_ids and 151645 in tok.special_ids


@pytest.mark.parity
def test_token_bytes_are_exact(tok, tiktoken_enc):
    table = tok.token_bytes()
    assert len(table) == tok.vocab_size
    for idx in [0, 1, 100, 5000, 77091, 151642]:
        assert table[idx] == tiktoken_enc.decode_single_token_bytes(idx)
    assert table[151645] == b"<|im_end|>"
    text = CORPUS[2] + CORPUS[4]
    assert b"".join(table[i] for i in tok.encode(text)) == text.encode("utf-8")


@pytest.mark.parity
def test_from_file_matches_transformers(tmp_path, tiktoken_enc):
    import transformers
    from segzero_jax.models.qwen2_5_vl.tokenizer import merges_from_ranks

    ranks = {t: r for t, r in load_tiktoken_ranks(default_tiktoken_path()).items() if r < 3000}
    b2u = byte_to_unicode()
    enc = lambda b: "".join(b2u[x] for x in b)  # noqa: E731
    vocab = {enc(t): r for t, r in ranks.items()}
    merges = [(enc(a), enc(b)) for a, b in merges_from_ranks(ranks)]
    hf = transformers.Qwen2Tokenizer(vocab=vocab, merges=merges,
                                     extra_special_tokens=["<|im_start|>", "<|im_end|>"])
    hf.save_pretrained(tmp_path)
    ours = QwenTokenizer.from_file(str(tmp_path))
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert ours.vocab_size == len(ref)
    for text in CORPUS + ["<|im_start|>user hi<|im_end|>"]:
        ids = ours.encode(text)
        assert ids == ref.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == ref.decode(ids)
    table = ours.token_bytes()
    for idx in [0, 255, 256, 2999]:
        assert table[idx] == tiktoken_enc.decode_single_token_bytes(idx)
    assert ours.pad_id == ref.convert_tokens_to_ids("<|endoftext|>")


def test_from_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        QwenTokenizer.from_file(str(tmp_path))
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid tokenizer.json"):
        QwenTokenizer.from_file(str(bad))
