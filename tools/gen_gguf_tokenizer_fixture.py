"""Writes tests/fixtures/gguf_tokenizer/: small GGUF files holding only tokenizer
metadata, and expected.json with what transformers' tokenizer loaded from each
file (`AutoTokenizer.from_pretrained(dir, gguf_file=name)`) makes of a list of
test strings.

The vocabularies come from the committed Hugging Face tokenizer fixtures,
written as llama.cpp's convert_hf_to_gguf.py would write them: tokens in id
order, token_type (1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte),
scores for SentencePiece-style vocabularies, merges as "a b" strings for
byte-level BPE, `tokenizer.ggml.pre` named as llama.cpp names it.

Usage: python tools/gen_gguf_tokenizer_fixture.py [--dump DIR]
  (needs transformers and gguf; --dump also writes each backend tokenizer.json
  transformers built, for reading)
Check a real file: python tools/gen_gguf_tokenizer_fixture.py --check FILE.gguf OUT.json
  writes the same record for FILE.gguf (not committed) to OUT.json.
"""
import json
import os
import sys

import gguf
from transformers import AutoTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIX = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.join(FIX, "gguf_tokenizer")

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

STRINGS = [
    "Hello world",
    " Hello world",
    "  two leading spaces",
    "",
    " ",
    "   ",
    "\n",
    "line one\nline two\n\n\tTabbed\t\tend  ",
    "a\r\nb\rc",
    "Numbers: 1234567 and 3.14159, 2024-12-03, 00042",
    'Punctuation!? (yes) [no] {maybe} <tag> "quoted" \'single\' \u2014 dash\u2026 ellipsis',
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c5ngstr\u00f6m",
    "\u4e2d\u6587\u6d4b\u8bd5\uff0c\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3001\ud55c\uad6d\uc5b4",
    "Emoji: \U0001f600\U0001f389\U0001f44d\U0001f3fd and \u2764\ufe0f",
    "I'm sure they've said it's OK, don't worry.",
    "Hello . world , ok ? yes ! it 's",
    "UPPER lower MiXeD",
    "the keeper asks, and the assistant answers: the ships that sail",
    "x" * 40,
]

CONVERSATION = [
    {"role": "user", "content": "Hello, who are you?"},
    {"role": "assistant", "content": "I am a tiny test model."},
]

GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)

PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)


def load_hf(rel):
    """(tokens in id order, {id: added-token dict}, merges, tokenizer_config) of a committed HF tokenizer."""
    d = os.path.join(FIX, rel)
    j = json.load(open(os.path.join(d, "tokenizer.json"), encoding="utf-8"))
    vocab = dict(j["model"]["vocab"])
    added = {a["id"]: a for a in j["added_tokens"]}
    for i, a in added.items():
        vocab[a["content"]] = i
    tokens = [None] * (max(vocab.values()) + 1)
    for t, i in vocab.items():
        tokens[i] = t
    assert all(t is not None for t in tokens), rel
    merges = [m if isinstance(m, str) else " ".join(m) for m in j["model"].get("merges", [])]
    cfg = json.load(open(os.path.join(d, "tokenizer_config.json"), encoding="utf-8"))
    return tokens, added, merges, cfg


def write(name, arch, model, tokens, types, pre=None, scores=None, merges=None, ids=None, flags=None, template=None):
    path = os.path.join(OUT, name)
    w = gguf.GGUFWriter(path, arch)
    w.add_tokenizer_model(model)
    if pre is not None:
        w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    if scores is not None:
        w.add_token_scores(scores)
    if merges is not None:
        w.add_token_merges(merges)
    for key, value in (ids or {}).items():
        w.add_uint32(f"tokenizer.ggml.{key}_token_id", value)
    for key, value in (flags or {}).items():
        w.add_bool(f"tokenizer.ggml.{key}", value)
    if template is not None:
        w.add_chat_template(template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def byte_level_types(tokens, added, extra_types=None):
    types = []
    for i, _ in enumerate(tokens):
        if i in added:
            types.append(CONTROL if added[i]["special"] else USER_DEFINED)
        else:
            types.append(NORMAL)
    for i, t in (extra_types or {}).items():
        types[i] = t
    return types


def spm_types_scores(tokens, special):
    """Token types and Llama-2-like scores: 0 for special and byte tokens, then
    minus the rank of each normal token (earlier ids merge first)."""
    types, scores, rank = [], [], 0
    for t in tokens:
        if t in special:
            types.append(special[t])
            scores.append(0.0)
        elif len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            types.append(BYTE)
            scores.append(0.0)
        else:
            types.append(NORMAL)
            scores.append(-float(rank))
            rank += 1
    return types, scores


def fixtures():
    out = []

    # Llama 3 style: byte-level BPE, llama-bpe split, add_bos_token true.
    tokens, added, merges, cfg = load_hf("models/tiny-llama3")
    out.append(
        write(
            "llama3_bpe.gguf", "llama", "gpt2", tokens, byte_level_types(tokens, added), pre="llama-bpe",
            merges=merges, ids={"bos": 0, "eos": 2, "padding": 0},
            flags={"add_bos_token": True, "add_space_prefix": False}, template=cfg["chat_template"],
        )
    )

    # SmolLM2 style: byte-level BPE, "smollm" pre (GPT-2's split), add_bos_token false.
    tokens, added, merges, _ = load_hf("tokenizers/bytelevel-added")
    tokens = tokens + ["<|bos|>"]
    types = byte_level_types(tokens, added, {len(tokens) - 1: CONTROL})
    smol_template = load_hf("models/tiny-llama3")[3]["chat_template"]
    out.append(
        write(
            "smollm_bpe.gguf", "llama", "gpt2", tokens, types, pre="smollm", merges=merges,
            ids={"bos": len(tokens) - 1, "eos": 0, "padding": 0, "unknown": 1},
            flags={"add_bos_token": False}, template=smol_template,
        )
    )

    # Qwen2: byte-level BPE, qwen2 split, no BOS added, no template.
    tokens, added, merges, _ = load_hf("models/tiny-qwen2")
    out.append(
        write(
            "qwen2_bpe.gguf", "qwen2", "gpt2", tokens, byte_level_types(tokens, added), pre="qwen2",
            merges=merges, ids={"bos": 0, "eos": 2, "padding": 0}, flags={"add_bos_token": False},
        )
    )

    # Qwen3: user-defined tokens (<think>), and a control token spelled with a
    # raw space, which transformers leaves out of the special tokens.
    tokens, added, merges, cfg = load_hf("models/tiny-qwen3")
    tokens = tokens + ["<think>", "</think>", "<|odd token|>"]
    n = len(tokens)
    types = byte_level_types(tokens, added, {n - 3: USER_DEFINED, n - 2: USER_DEFINED, n - 1: CONTROL})
    out.append(
        write(
            "qwen3_bpe.gguf", "qwen3", "gpt2", tokens, types, pre="qwen2", merges=merges,
            ids={"bos": 0, "eos": 2, "padding": 0}, template=cfg.get("chat_template"),
        )
    )

    # Llama 2 style SentencePiece: scores + token types, byte fallback, no
    # merges (transformers derives them from the scores).
    tokens, added, merges, cfg = load_hf("tokenizers/llama-bytefallback")
    special = {"<unk>": UNKNOWN, "<s>": CONTROL, "</s>": CONTROL}
    types, scores = spm_types_scores(tokens, special)
    out.append(
        write(
            "llama_spm.gguf", "llama", "llama", tokens, types, pre="default", scores=scores,
            ids={"bos": 1, "eos": 2, "unknown": 0}, flags={"add_space_prefix": True},
            template=cfg["chat_template"],
        )
    )
    # The same with the merges in the file, EOS added too, and a pad token.
    out.append(
        write(
            "llama_spm_merges.gguf", "llama", "llama", tokens, types, pre="default", scores=scores,
            merges=merges, ids={"bos": 1, "eos": 2, "unknown": 0, "padding": 0},
            flags={"add_bos_token": True, "add_eos_token": True},
        )
    )

    # Gemma 3: SentencePiece-style, its own special tokens first, runs of
    # spaces stored as real spaces, no merges (derived in file order).
    base = [t for t in tokens if t not in special]
    gemma_tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>", "<unused0>"]
    gemma_special = {t: CONTROL for t in gemma_tokens}
    gemma_special["<unk>"] = UNKNOWN
    gemma_special["<unused0>"] = UNUSED
    gemma_tokens += base[:256] + ["  ", "   ", "\t\t"] + base[256:] + ["<h1>", "\u2581\u2581\u2581\u2581"]
    types, scores = spm_types_scores(gemma_tokens, gemma_special)
    types[gemma_tokens.index("<h1>")] = USER_DEFINED
    out.append(
        write(
            "gemma3_spm.gguf", "gemma3", "llama", gemma_tokens, types, pre="default", scores=scores,
            ids={"bos": 2, "eos": 1, "unknown": 3, "padding": 0},
            flags={"add_bos_token": True, "add_eos_token": False, "add_space_prefix": False},
            template=GEMMA_TEMPLATE,
        )
    )

    # Phi-3: SentencePiece-style with its chat tokens appended (control and
    # user-defined), no BOS added.
    phi_tokens = tokens + ["<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>", "<|system|>"]
    phi_special = dict(special)
    phi_special.update({"<|endoftext|>": CONTROL, "<|end|>": CONTROL, "<|assistant|>": USER_DEFINED,
                        "<|user|>": USER_DEFINED, "<|system|>": USER_DEFINED})
    types, scores = spm_types_scores(phi_tokens, phi_special)
    out.append(
        write(
            "phi3_spm.gguf", "phi3", "llama", phi_tokens, types, pre="default", scores=scores,
            ids={"bos": 1, "eos": phi_tokens.index("<|end|>"), "unknown": 0,
                 "padding": phi_tokens.index("<|endoftext|>")},
            flags={"add_bos_token": False, "add_eos_token": False}, template=PHI3_TEMPLATE,
        )
    )
    return out


EXTRA = {
    "llama3_bpe.gguf": ["<|im_start|>user\nHi there<|im_end|>\n", "a<|endoftext|>b"],
    "smollm_bpe.gguf": ["<|start|>hi<|end|>", "x<|bos|>y", " <|end|> "],
    "qwen2_bpe.gguf": ["<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n\u4f60\u597d<|im_end|>"],
    "qwen3_bpe.gguf": ["<think>\nhmm\n</think>\n\nok<|im_end|>", "<|odd token|> stays split", "<think><think>"],
    "llama_spm.gguf": ["<s>[INST] hi [/INST]", "a</s>b", "<unk>"],
    "llama_spm_merges.gguf": ["<s>[INST] hi [/INST] yes</s>"],
    "gemma3_spm.gguf": ["<start_of_turn>user\nhi<end_of_turn>\n", "<h1>Title</h1>", "a  b   c\t\td", "<bos><eos>"],
    "phi3_spm.gguf": ["<|user|>\nhi<|end|>\n<|assistant|>\nyes<|end|>", "<|endoftext|>"],
}


def record(path, strings):
    d, f = os.path.split(path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    cases = []
    for s in strings:
        with_sp = tok.encode(s, add_special_tokens=True)
        plain = tok.encode(s, add_special_tokens=False)
        cases.append(
            {
                "text": s,
                "ids": plain,
                "ids_with_special": with_sp,
                "decode": tok.decode(with_sp, skip_special_tokens=False),
                "decode_skip_special": tok.decode(with_sp, skip_special_tokens=True),
            }
        )
    rec = {
        "class": type(tok).__name__,
        "vocab_size": len(tok),
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "pad_token": tok.pad_token,
        "unk_token": tok.unk_token,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "clean_up_tokenization_spaces": bool(tok.clean_up_tokenization_spaces),
        "cases": cases,
    }
    if tok.chat_template:
        rec["chat_template"] = tok.chat_template
        rec["chat"] = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=False)
        rec["chat_generation_prompt"] = tok.apply_chat_template(
            CONVERSATION[:1], tokenize=False, add_generation_prompt=True
        )
    return rec, tok


def main():
    args = sys.argv[1:]
    if args[:1] == ["--check"]:
        rec, _ = record(args[1], STRINGS + [s for v in EXTRA.values() for s in v])
        json.dump(rec, open(args[2], "w", encoding="utf-8"), ensure_ascii=False, indent=1)
        return
    dump = args[1] if args[:1] == ["--dump"] else None
    os.makedirs(OUT, exist_ok=True)
    expected = {}
    for path in fixtures():
        name = os.path.basename(path)
        rec, tok = record(path, STRINGS + EXTRA[name])
        expected[name] = rec
        if dump:
            os.makedirs(dump, exist_ok=True)
            j = json.loads(tok.backend_tokenizer.to_str())
            j["model"]["vocab"] = len(j["model"]["vocab"])
            j["model"]["merges"] = j["model"].get("merges", [])[:20]
            json.dump(j, open(os.path.join(dump, name + ".json"), "w"), ensure_ascii=False, indent=1)
    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
