#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizers/<name>/: small tokenizers of the kinds real
models use, and what transformers' AutoTokenizer makes of them.

    pip install "transformers>=5" tokenizers jinja2 && python3 tools/gen_tokenizer_fixture.py

No real tokenizer ships with the installed Python packages (and nothing is
downloaded), so each tokenizer is trained here, with the `tokenizers` library,
on a few sentences written for this script, then assembled the way real
checkpoints are laid out:

  llama-bytefallback  SentencePiece-style BPE as in Llama 2 / Mistral
                      tokenizer.json files (Prepend+Replace normalizer, <0xNN>
                      byte fallback, Strip decoder), tokenizer_class
                      PreTrainedTokenizerFast, add_bos_token and add_eos_token
                      set in tokenizer_config.json (transformers rebuilds the
                      post-processor), Llama-2 chat template (raise_exception,
                      .strip(), lstrip/trim of an indented template)
  llama-class         the same files with tokenizer_class LlamaTokenizer
  llama-class-legacy  (legacy false / true), which transformers 5 loads by
                      rebuilding the pipeline (Metaspace pre-tokenizer), plus
                      added tokens known only to tokenizer.json
  wordpiece-cleanup   BERT-style WordPiece, no post-processor in tokenizer.json,
                      clean_up_tokenization_spaces=true (applied by transformers
                      to non-BPE models only), a template using namespace,
                      tojson, Python string methods, loop controls, the
                      {% generation %} tag and Python printing of True/None/lists
  bytelevel-added     GPT-2-style byte-level BPE, no post-processor, a bos_token
                      missing from tokenizer.json (transformers adds it),
                      add_bos_token=true, and an added token with lstrip/rstrip
                      known only to tokenizer_config.json's added_tokens_decoder;
                      template in chat_template.jinja (which wins over the one
                      in tokenizer_config.json), generation_config.json with a
                      list of eos ids

Each directory gets expected.json: len(tokenizer), bos/eos ids, and for each
test string the ids with and without special tokens and both decodes; for each
conversation the rendered template (or transformers' exception message) and
its ids. Running the script twice gives identical files.
"""
import json
import pathlib
import shutil
import tempfile

import tokenizers
import transformers
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tokenizers"

# Original text written for this script, dedicated to the public domain.
CORPUS = """\
The lighthouse keeper counts the ships that pass the rocky point each night.
She writes 12 ships on Monday, 7 on Tuesday and 31 on the stormy Friday.
Hello there! Don't forget the lamp, it's the only light for miles around.
Questions and answers: Is the sea calm? The sea is calm. Who keeps the light? The keeper does.
The assistant answers briefly. The user asks, and the assistant replies with care.
Café owners in Zürich serve naïve tourists crème brûlée, and they're happy about it.
Numbers like 3.14159, 2,718 and 1e-5 appear in the keeper's notebook, with dates like 2024-03-14.
We've seen whales, we'd seen seals, and you'll see gulls if you're patient.
""" * 3

STRINGS = [
    "Hello world",
    "  leading and   multiple   spaces\n\nnewlines\t tabs ",
    "digits 0123456789 and 3.14159",
    "unicode: ünïcödé — 日本語 😀",
    "Hello , world . Is it ? Yes ! don 't , I 'm , it 's , we 've , they 're",
    "",
]

CHATS = [
    [{"role": "user", "content": "Who keeps the light?"}],
    [
        {"role": "system", "content": "  You answer briefly.  "},
        {"role": "user", "content": "Hi, is the sea calm?"},
        {"role": "assistant", "content": " The sea is calm. "},
        {"role": "user", "content": "And the ships? 😀"},
    ],
    [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "please break here"},
    ],
    # Two user turns in a row: the Llama-2 template raises.
    [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}],
]

LLAMA_STRINGS = ["<s>[INST] hi [/INST] ok</s>", "tab\tand \u00a0nbsp", " x", "  two", "a</s>b"]

LLAMA2_TEMPLATE = """\
{% if messages[0]['role'] == 'system' %}
    {% set loop_messages = messages[1:] %}
    {% set system_message = messages[0]['content'] %}
{% else %}
    {% set loop_messages = messages %}
    {% set system_message = false %}
{% endif %}
{% for message in loop_messages %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {% endif %}
    {% if loop.index0 == 0 and system_message != false %}
        {% set content = '<<SYS>>\\n' + system_message.strip() + '\\n<</SYS>>\\n\\n' + message['content'] %}
    {% else %}
        {% set content = message['content'] %}
    {% endif %}
    {% if message['role'] == 'user' %}
        {{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}
    {% elif message['role'] == 'assistant' %}
        {{ ' '  + content.strip() + ' ' + eos_token }}
    {% endif %}
{% endfor %}
"""

FEATURE_TEMPLATE = """\
{%- set ns = namespace(n=0, sys='') -%}
{%- for m in messages -%}
{%- if m.role == 'system' -%}{%- set ns.sys = m.content | trim -%}{%- set ns.n = ns.n + 1 -%}{%- endif -%}
{%- endfor -%}
{{ {'system': ns.sys, 'count': messages|length, 'n': ns.n, 'flag': add_generation_prompt, 'html': '<b>&"é"</b>\\t', 'x': none, 'f': 1.5, 'l': [1, 'a', true]} | tojson }}
{{ messages | map(attribute='role') | list | tojson(indent=2) }}
{{ messages[0] | tojson }} {{ messages[-1].items() | list | length }}
{% for m in messages %}
    {%- if m.role == 'system' %}{% continue %}{% endif %}
    [{{ loop.index }}/{{ loop.length }}] {{ m.role.upper() }}: {{ m.content.split() | join('_') }} {{ m.content.startswith('Hi') }} {{ m.content.replace(' ', '-') }} {{ m['content'].lstrip('H').rstrip('!') }} {{ m.get('name', 'anon') }}
    {% generation %}{{ m.content | length }}{{ cls_token }}{% endgeneration %}
    {% if 'break' in m.content %}{% break %}{% endif %}
{% endfor %}
{{ add_generation_prompt }} {{ none }} {{ [1, 'two', none, false] }} {{ {'k': "it's"} }} {{ 3 / 2 }} {{ 7 // 2 }} {{ 'a' ~ 1 }} {{ bos_token }}|{{ sep_token }}|{{ mask_token }}
{%- if add_generation_prompt %}
ASSISTANT:{% endif %}
"""

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|start|>' + message['role'] + '\\n' + message['content'] | trim + '<|end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start|>assistant\\n' }}{% endif %}\n"
)


def _train_bpe(text, vocab_size, byte_level):
    tok = Tokenizer(models.BPE())
    if byte_level:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.pre_tokenizer = pre_tokenizers.Split("\n", "isolated")
        alphabet = []
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(text.splitlines(keepends=True), trainer)
    m = json.loads(tok.to_str())["model"]
    return m["vocab"], m["merges"]


def llama_bytefallback():
    specials = ["<unk>", "<s>", "</s>"]
    trained, merges = _train_bpe(CORPUS, 400, byte_level=False)
    vocab = {t: i for i, t in enumerate(specials)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for t in sorted(trained, key=trained.get):
        if t not in vocab:
            vocab[t] = len(vocab)
    merges = [m for m in merges if all(p in vocab for p in (m if isinstance(m, list) else m.split(" ")))]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges],
                               unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.add_special_tokens(specials)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": False, "normalized": False,
                      "rstrip": False, "single_word": False, "special": True},
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "add_bos_token": True,
        "add_eos_token": True,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "chat_template": LLAMA2_TEMPLATE,
    }
    strings = STRINGS + LLAMA_STRINGS
    return tok, config, {}, None, strings


def llama_class(legacy):
    """The same files declaring tokenizer_class LlamaTokenizer: transformers 5
    then rebuilds the pipeline (Metaspace pre-tokenizer, prepend_scheme
    "first" unless legacy) and ignores tokenizer.json's normalizer/decoder."""
    tok, config, _, _, strings = llama_bytefallback()
    tok.add_tokens([AddedToken("<extra>", special=False, normalized=False)])
    tok.add_special_tokens(["<sp2>"])
    config = dict(config, tokenizer_class="LlamaTokenizer", legacy=legacy)
    del config["add_eos_token"]
    return tok, config, {}, None, strings + ["x<sp2>y <extra> z", " <extra>x"]


def wordpiece_cleanup():
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # The WordPiece trainer breaks ties in hash order, so the vocabulary is
    # built here instead: characters, their "##" forms, frequent words.
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    counts = {}
    for line in CORPUS.splitlines():
        for word, _ in pre.pre_tokenize_str(normalizer.normalize_str(line)):
            counts[word] = counts.get(word, 0) + 1
    chars = sorted({c for w in counts for c in w})
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1][:120]
    vocab = specials + chars + ["##" + c for c in chars] + words + ["##s", "##ing", "##ed", "##er", "##ly"]
    tok = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.add_special_tokens(specials)
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.post_processor = None
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
        "eos_token": "[SEP]",
        "clean_up_tokenization_spaces": True,
        "chat_template": [
            {"name": "tool_use", "template": "{{ raise_exception('not this one') }}"},
            {"name": "default", "template": FEATURE_TEMPLATE},
        ],
    }
    strings = STRINGS + ["[CLS] hello [SEP] world [MASK]"]
    return tok, config, {}, None, strings


def bytelevel_added():
    specials = ["<|end|>", "<|start|>"]
    trained, merges = _train_bpe(CORPUS, 420, byte_level=True)
    vocab = {t: i for i, t in enumerate(specials)}
    for t in sorted(trained, key=trained.get):
        if t not in vocab:
            vocab[t] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]))
    tok.add_special_tokens(specials)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = None
    n = tok.get_vocab_size()
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|bos|>",
        "eos_token": "<|end|>",
        "add_bos_token": True,
        # chat_template.jinja takes precedence over this one.
        "chat_template": "{{ raise_exception('the tokenizer_config.json template must not be used') }}",
        "added_tokens_decoder": {
            "0": {"content": "<|end|>", "lstrip": False, "normalized": False, "rstrip": False,
                  "single_word": False, "special": True},
            "1": {"content": "<|start|>", "lstrip": False, "normalized": False, "rstrip": False,
                  "single_word": False, "special": True},
            str(n): {"content": "<tool>", "lstrip": True, "normalized": False, "rstrip": True,
                     "single_word": False, "special": False},
        },
    }
    generation = {"eos_token_id": [0, 1], "bos_token_id": None}
    strings = STRINGS + ["call  <tool>  now <|start|>user\nhi<|end|>", "<|bos|>x<tool>y"]
    return tok, config, generation, CHATML_TEMPLATE, strings


def build(name, tok, config, generation, jinja, strings, dest):
    d = dest / name
    d.mkdir(parents=True)
    tok.save(str(d / "tokenizer.json"))
    with open(d / "tokenizer_config.json", "w") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
        f.write("\n")
    if generation:
        with open(d / "generation_config.json", "w") as f:
            json.dump(generation, f, indent=2)
            f.write("\n")
    if jinja is not None:
        (d / "chat_template.jinja").write_text(jinja)

    hf = AutoTokenizer.from_pretrained(str(d))
    assert hf.is_fast, name
    exp = {
        "versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
        "class": type(hf).__name__,
        "len": len(hf),
        "bos_token_id": hf.bos_token_id,
        "eos_token_id": hf.eos_token_id,
        "strings": [],
        "chats": [],
    }
    for s in strings:
        with_ = hf.encode(s, add_special_tokens=True)
        exp["strings"].append({
            "text": s,
            "ids_with_special": with_,
            "ids_without_special": hf.encode(s, add_special_tokens=False),
            "decode": hf.decode(with_),
            "decode_skip": hf.decode(with_, skip_special_tokens=True),
        })
    for msgs in CHATS:
        for agp in (False, True):
            entry = {"messages": msgs, "add_generation_prompt": agp}
            try:
                text = hf.apply_chat_template(msgs, add_generation_prompt=agp, tokenize=False)
                entry["text"] = text
                entry["ids"] = hf.encode(text, add_special_tokens=False)
            except Exception as e:  # the template's raise_exception
                entry["error"] = str(e)
            exp["chats"].append(entry)
    with open(d / "expected.json", "w") as f:
        json.dump(exp, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"{name}: {exp['class']}, {exp['len']} tokens")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for name, fn in [("llama-bytefallback", llama_bytefallback),
                         ("llama-class", lambda: llama_class(False)),
                         ("llama-class-legacy", lambda: llama_class(True)),
                         ("wordpiece-cleanup", wordpiece_cleanup),
                         ("bytelevel-added", bytelevel_added)]:
            build(name, *fn(), tmp)
        if OUT.exists():
            shutil.rmtree(OUT)
        OUT.mkdir(parents=True)
        for d in sorted(tmp.iterdir()):
            shutil.copytree(d, OUT / d.name)


if __name__ == "__main__":
    main()
