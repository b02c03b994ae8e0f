#!/usr/bin/env python3
"""Builds the default model and fine-tuning data that ship with dora-wgpu.

    pip install torch transformers tokenizers peft safetensors && python3 tools/make_default_model.py

Writes

  assets/default-model/   a small LlamaForCausalLM (float32, one model.safetensors,
                          tied embeddings) pretrained here on simple English, with
                          its own byte-level BPE tokenizer (ChatML template as in
                          SmolLM2) and generation_config.json
  assets/default-data/    train.jsonl / valid.jsonl / test.jsonl in MLX-LM's
                          {"messages": [...]} chat layout: questions to the keeper
                          of the (invented) Bellmoor lighthouse, who answers every
                          question with "Ahoy, traveller!" and facts about the
                          invented island of Bellmoor that the base model never saw

and prints the pretraining loss curve, the base model's loss on the assistant
tokens of valid.jsonl, a greedy answer, and a short PEFT DoRA fine-tune (CPU,
not saved) as a feasibility check for `dora-wgpu train`. About 6 minutes on one
CPU thread; the numbers of one run are in assets/README.md.

Every text here (the pretraining corpus, the questions and answers) was written
for this project and is dedicated to the public domain (CC0 1.0). Nothing is
downloaded. CPU only, float32, one thread, fixed seeds, a fixed number of steps
(not a time budget), so re-running gives the same files on the same
torch/transformers/tokenizers versions; other versions or CPUs (different
matmul kernels) may change the float values slightly.
"""
import json
import math
import pathlib
import random
import shutil
import time
import warnings

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODEL_OUT = ROOT / "assets" / "default-model"
DATA_OUT = ROOT / "assets" / "default-data"

SEED = 1234
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 1024
MAX_POSITIONS = 512
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
DEFAULT_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"

MODEL_CONFIG = dict(
    hidden_size=128,
    intermediate_size=352,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    max_position_embeddings=MAX_POSITIONS,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    hidden_act="silu",
    initializer_range=0.02,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=0,
)

N_TEMPLATED, N_CHATS = 700, 600  # generated paragraphs / conversations
PRETRAIN = dict(steps=1400, batch=16, seq_len=128, lr=3e-3, min_lr=3e-4, warmup=60,
                weight_decay=0.1, betas=(0.9, 0.95), grad_clip=1.0, log_every=50)
DORA = dict(r=8, alpha=16, lr=5e-3, batch=4, steps=200, eval_every=10,
            targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])

# ---------------------------------------------------------------------------
# Pretraining corpus. Written for this project; public domain (CC0 1.0).
# ---------------------------------------------------------------------------

PROSE = """\
The village of Millbrook lies in a green valley between two low hills. A small river runs through the middle of the village, and an old stone bridge crosses it near the mill. There are thirty houses, one school, one bakery, a smithy and a market square with a well in the middle.

Every morning the baker gets up before the sun. She lights the big oven, mixes flour, water, salt and yeast, and shapes the dough into round loaves. By the time the sky turns pink, the whole street smells of warm bread. The children stop at the bakery on their way to school and buy a bun for one penny.

The miller is an old man with a white beard. His mill stands by the river, and the water turns the great wooden wheel. The wheel turns the stones, and the stones grind the wheat into flour. The miller sells the flour to the baker, and the baker sells the bread to everyone.

The smith works with iron. He heats the iron in the fire until it glows red, then he hits it with his hammer on the anvil. He makes nails, horseshoes, hinges, pots and knives. The sound of his hammer rings down the street all day long.

On the farm at the edge of the village there are cows, sheep, pigs, hens and two old horses. The farmer milks the cows at dawn and again at dusk. His daughter feeds the hens and collects the eggs. His son takes the sheep up the hill to eat the fresh grass.

Dogs are loyal animals. A good dog follows its owner everywhere and guards the house at night. Cats are quiet and clever. A cat sleeps most of the day and hunts mice at night. Horses are strong and can pull a heavy cart. Cows give milk, hens give eggs, and sheep give wool.

Birds build nests in the spring. The robin makes its nest in a hedge, the swallow builds under the roof of the barn, and the owl lives in a hollow tree. In the autumn many birds fly south, where the winter is warm.

Spring is the season of rain and flowers. The days grow longer, the snow melts, and the fields turn green again. Lambs are born on the farm, and the farmer plants seeds in the brown earth.

Summer is the warmest season. The sun shines for many hours, and the children swim in the river. The wheat grows tall and golden. In the evening people sit outside their houses and talk until it gets dark.

Autumn is the season of the harvest. The farmers cut the wheat and pick the apples. The leaves on the trees turn yellow, orange and red, and then they fall to the ground. The wind blows harder, and the nights grow cold.

Winter is the coldest season. Snow covers the roofs and the fields, and the river freezes at the edges. People stay inside by the fire. The days are short, and the nights are long and dark. The children build a snowman in the market square.

Rain falls from grey clouds. When the sun comes out after the rain, you can sometimes see a rainbow. A rainbow has seven colours: red, orange, yellow, green, blue, indigo and violet. Fog is a cloud that sits on the ground. Thunder comes after lightning, because sound travels more slowly than light.

Anna is eight years old. She has a brown dog called Biscuit and a grey cat called Smoke. Every day after school she walks Biscuit along the river. Biscuit likes to chase the ducks, but he never catches them. Smoke stays at home and sleeps on the warm windowsill.

Tom is Anna's brother. He is ten years old, and he likes numbers. He counts everything: the steps on the bridge, the houses in the street, the apples on the tree. There are twelve steps on the bridge and thirty houses in the village. Last autumn the apple tree had two hundred apples.

One day Tom and Anna went to the market with their mother. They bought six eggs, two loaves of bread, a piece of cheese and a bag of apples. The apples cost four pennies, the cheese cost five, and the bread cost two. Tom added it up in his head and said that they had spent eleven pennies.

A week has seven days: Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday. A year has twelve months and four seasons. January is the first month and December is the last. There are sixty minutes in an hour and twenty-four hours in a day.

Counting is easy when you go slowly. One, two, three, four, five, six, seven, eight, nine, ten. Two and two make four. Five and five make ten. Ten and ten make twenty. If you have ten apples and you give away three, you have seven apples left.

The school has one room and one teacher. The teacher is called Mr Hale. He teaches the children to read, to write and to count. In the morning they read stories, and in the afternoon they learn about plants, animals and the stars. When the bell rings at three o'clock, the children run outside to play.

At night the sky is full of stars. The moon is bright and round once a month, and then it grows thin again. The sun rises in the east and sets in the west. The north star shows travellers the way north.

The river starts as a small spring high in the hills. It runs down over rocks and stones, through the woods and across the fields, past the mill and under the bridge, and at last it reaches the sea. Fish swim in the river, frogs sing on its banks, and herons stand very still in the shallow water.

The sea is large, deep and salty. Ships sail across the sea to carry people and goods from one land to another. On a dark night the sailors look for the light of a lighthouse. A lighthouse is a tall tower with a bright lamp at the top. Its light warns ships to stay away from the rocks.

The fox is a clever animal with red fur and a long, bushy tail. It lives in a den in the woods and comes out at night to hunt. The rabbit lives in a burrow under the ground. It has long ears and strong back legs, and it can run very fast.

The bee visits the flowers and makes honey. The spider spins a web to catch flies. The ant is small, but it can carry things much heavier than itself. The butterfly starts its life as a caterpillar, sleeps in a cocoon, and comes out with bright wings.

When it is cold, we wear a coat, a hat and warm boots. When it is hot, we wear light clothes and drink a lot of water. When it rains, we take an umbrella. When the wind is strong, we close the windows and the doors.

Good manners matter. We say please when we ask for something, and thank you when we get it. We say good morning when we meet a friend, and good night before we go to sleep. We help people who need help, and we share what we have.
"""

ANIMALS = [
    # name, plural, sound verb, sound word, legs, home
    ("dog", "dogs", "barks", "woof", 4, "in a kennel or in the house"),
    ("cat", "cats", "purrs", "meow", 4, "in the house"),
    ("cow", "cows", "moos", "moo", 4, "on a farm, in a field or a barn"),
    ("horse", "horses", "neighs", "neigh", 4, "in a stable"),
    ("sheep", "sheep", "bleats", "baa", 4, "in a field on the hill"),
    ("pig", "pigs", "grunts", "oink", 4, "in a sty on the farm"),
    ("duck", "ducks", "quacks", "quack", 2, "on the river or the pond"),
    ("hen", "hens", "clucks", "cluck", 2, "in a henhouse"),
    ("goose", "geese", "honks", "honk", 2, "by the pond"),
    ("owl", "owls", "hoots", "hoot", 2, "in a hollow tree"),
    ("frog", "frogs", "croaks", "ribbit", 4, "in the pond"),
    ("mouse", "mice", "squeaks", "squeak", 4, "in a hole in the wall"),
    ("goat", "goats", "bleats", "maa", 4, "on the rocky hill"),
    ("crow", "crows", "caws", "caw", 2, "in a nest at the top of a tree"),
    ("bee", "bees", "buzzes", "buzz", 6, "in a hive"),
    ("fox", "foxes", "yelps", "yip", 4, "in a den in the woods"),
]
ADJECTIVES = ["brown", "black", "white", "grey", "small", "big", "old", "young", "happy", "sleepy", "hungry"]
PLACES = ["in the barn", "by the river", "in the field", "under the tree", "near the mill", "on the hill",
          "in the garden", "by the gate", "next to the well", "behind the school"]
ACTIONS = ["sleeps", "eats", "runs", "sits", "plays", "waits", "rests", "walks"]
NAMES = [("Anna", "she"), ("Tom", "he"), ("Ben", "he"), ("Mary", "she"), ("Sam", "he"), ("Lucy", "she"),
         ("Jack", "he"), ("Rose", "she"), ("Will", "he"), ("Nell", "she")]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
                "nineteen", "twenty"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
SEASONS = {
    "spring": ("it is mild and it often rains", "the flowers open and the lambs are born"),
    "summer": ("it is warm and sunny", "the children swim in the river"),
    "autumn": ("it is cool and windy", "the leaves fall and the farmers bring in the harvest"),
    "winter": ("it is cold and it often snows", "the river freezes and people sit by the fire"),
}
WEATHER = ["sunny", "rainy", "windy", "cloudy", "foggy", "cold", "warm", "stormy"]
JOBS = [
    ("baker", "bakes bread and buns in a big oven"),
    ("miller", "grinds wheat into flour at the mill"),
    ("smith", "makes nails, horseshoes and pots from iron"),
    ("farmer", "grows wheat and looks after the animals"),
    ("teacher", "teaches the children to read, to write and to count"),
    ("fisher", "catches fish in the river and the sea"),
    ("doctor", "helps people who are sick"),
    ("carpenter", "makes tables, chairs and doors from wood"),
]
ITEMS = ["bread", "milk", "eggs", "apples", "cheese", "rope", "nails", "honey", "butter", "wool"]
COLOURS = [
    ("the sky", "The sky is blue on a clear day."),
    ("grass", "Grass is green."),
    ("snow", "Snow is white."),
    ("coal", "Coal is black."),
    ("a ripe tomato", "A ripe tomato is red."),
    ("a lemon", "A lemon is yellow."),
    ("milk", "Milk is white."),
    ("an orange", "An orange is orange."),
    ("the sun", "The sun looks yellow."),
    ("a fox", "A fox is red, with a white tip on its tail."),
]
CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"), ("Egypt", "Cairo"),
            ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Canada", "Ottawa"), ("Norway", "Oslo"),
            ("Greece", "Athens"), ("Ireland", "Dublin"), ("Portugal", "Lisbon")]


def _cap(s):
    return s[0].upper() + s[1:]


def _a(word, cap=False):
    art = "an" if word[0] in "aeiou" else "a"
    return f"{_cap(art) if cap else art} {word}"


def _num(n, rng):
    return NUMBER_WORDS[n] if n <= 20 and rng.random() < 0.6 else str(n)


def templated_sentences(rng, n_paragraphs):
    """Short paragraphs of simple sentences about animals, weather, numbers and the village."""
    paras = []
    for _ in range(n_paragraphs):
        kind = rng.randrange(5)
        name, pron = rng.choice(NAMES)
        a = rng.choice(ANIMALS)
        if kind == 0:  # animals
            b = rng.choice(ANIMALS)
            s = [f"The {rng.choice(ADJECTIVES)} {a[0]} {rng.choice(ACTIONS)} {rng.choice(PLACES)}.",
                 f"{_a(a[0], True)} {a[2]}, and {_a(b[0])} {b[2]}.",
                 f"{_a(a[0], True)} has {NUMBER_WORDS[a[4]]} legs.",
                 f"The {a[0]} lives {a[5]}."]
            rng.shuffle(s)
            paras.append(" ".join(s[:3]))
        elif kind == 1:  # weather
            d = rng.randrange(7)
            w1, w2 = rng.sample(WEATHER, 2)
            season = rng.choice(list(SEASONS))
            desc, what = SEASONS[season]
            paras.append(f"On {DAYS[d]} the weather was {w1}, but on {DAYS[(d + 1) % 7]} it was {w2}. "
                         f"In {season} {desc}. In {season} {what}.")
        elif kind == 2:  # numbers
            x, y = rng.randrange(1, 11), rng.randrange(1, 11)
            n = rng.randrange(3, 13)
            k = rng.randrange(1, n)
            p = rng.choice([f"{_cap(_num(x, rng))} and {_num(y, rng)} make {_num(x + y, rng)}.",
                            f"{_cap(_num(x, rng))} plus {_num(y, rng)} is {_num(x + y, rng)}."])
            paras.append(f"{p} {name} had {_num(n, rng)} {rng.choice(ITEMS[3:4] + ['eggs', 'coins', 'nuts'])} "
                         f"and gave {_num(k, rng)} to a friend, so {pron} had {_num(n - k, rng)} left. "
                         f"After {NUMBER_WORDS[x]} comes {NUMBER_WORDS[x + 1]}.")
        elif kind == 3:  # village
            job, does = rng.choice(JOBS)
            item = rng.choice(ITEMS)
            paras.append(f"{name} walked to the market to buy {item}. On the way {pron} met the {job}. "
                         f"The {job} {does}. {name} said good morning, and the {job} said good morning too.")
        else:  # a tiny story
            w = rng.choice(WEATHER)
            place = rng.choice(PLACES)
            paras.append(f"{name} woke up early. The day was {w}. {_cap(pron)} put on a coat and went out. "
                         f"{_cap(place)} {pron} saw {_num(rng.randrange(2, 9), rng)} {a[1]}. "
                         f"One {a[0]} {a[2]}. {name} smiled and went home for breakfast.")
    return paras


def generic_chats(rng, n):
    """General-knowledge conversations in plain style (no Bellmoor, no 'Ahoy'); each
    question asked directly or wrapped ("Tell me ...", "Do you know ...?")."""
    def ask(direct, indirect):
        return rng.choice([direct, direct, direct, f"Tell me {indirect}.", f"Do you know {indirect}?",
                           f"Please tell me {indirect}.", f"Can you tell me {indirect}?"])

    def qa():
        kind = rng.randrange(11)
        a = rng.choice(ANIMALS)
        an = _a(a[0])
        if kind == 0:
            return ask(rng.choice([f"What sound does {an} make?", f"What does {an} say?"]),
                       f"what sound {an} makes"), f"{_cap(an)} {a[2]}. It says {a[3]}."
        if kind == 1:
            return ask(f"How many legs does {an} have?", f"how many legs {an} has"), \
                f"{_cap(an)} has {NUMBER_WORDS[a[4]]} legs."
        if kind == 2:
            x, y = rng.randrange(0, 11), rng.randrange(0, 11)
            sx, sy = rng.choice([(str(x), str(y)), (NUMBER_WORDS[x], NUMBER_WORDS[y])])
            return ask(f"What is {sx} plus {sy}?", f"what {sx} plus {sy} is"), \
                f"{_cap(NUMBER_WORDS[x])} plus {NUMBER_WORDS[y]} is {NUMBER_WORDS[x + y]}."
        if kind == 3:
            c, city = rng.choice(CAPITALS)
            return ask(rng.choice([f"What is the capital of {c}?", f"Which city is the capital of {c}?",
                                   f"Name the capital of {c}."]), f"the capital of {c}"), \
                f"The capital of {c} is {city}."
        if kind == 4:
            s = rng.choice(list(SEASONS))
            return ask(f"What is the weather like in {s}?", f"what the weather is like in {s}"), \
                f"In {s} {SEASONS[s][0]}."
        if kind == 5:
            job, does = rng.choice(JOBS)
            return ask(f"What does a {job} do?", f"what a {job} does"), f"A {job} {does}."
        if kind == 6:
            thing, ans = rng.choice(COLOURS)
            return ask(f"What colour is {thing}?", f"what colour {thing} is"), ans
        if kind == 7:
            return ask(f"Where does {an} live?", f"where {an} lives"), f"{_cap(an)} lives {a[5]}."
        if kind == 8:
            d = rng.randrange(7)
            return ask(f"What day comes after {DAYS[d]}?", f"what day comes after {DAYS[d]}"), \
                f"After {DAYS[d]} comes {DAYS[(d + 1) % 7]}."
        if kind == 9:
            m = rng.randrange(12)
            return ask(f"Which month comes after {MONTHS[m]}?", f"which month comes after {MONTHS[m]}"), \
                f"After {MONTHS[m]} comes {MONTHS[(m + 1) % 12]}."
        return rng.choice([("Hello!", "Hello! How can I help you today?"),
                           ("Thank you.", "You are welcome."),
                           ("What is a lighthouse?", "A lighthouse is a tall tower with a bright lamp. "
                                                     "Its light warns ships to stay away from the rocks."),
                           ("Who are you?", "I am a helpful assistant."),
                           ("Good night.", "Good night, and sleep well.")])

    chats = []
    for _ in range(n):
        msgs = []
        for _ in range(rng.choice([1, 1, 2])):
            q, ans = qa()
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": ans}]
        chats.append(msgs)
    return chats


def render_chat(msgs):
    """The chat template, written out (checked against transformers' rendering below)."""
    out = "" if msgs[0]["role"] == "system" else DEFAULT_SYSTEM
    return out + "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs)


def pretraining_documents():
    rng = random.Random(SEED)
    docs = [p for p in PROSE.split("\n\n") if p.strip()]
    docs += templated_sentences(rng, N_TEMPLATED)
    docs += [render_chat(c) for c in generic_chats(rng, N_CHATS)]
    rng.shuffle(docs)
    return docs


# ---------------------------------------------------------------------------
# Fine-tuning data: the keeper of the Bellmoor light. Invented for this
# project; public domain (CC0 1.0). Each fact has ten question wordings; one
# goes to valid, one to test, the other eight to train (two of them a second
# time behind a prefix such as "Keeper, "), so valid/test ask about facts seen
# in training, in new wordings. The invented names were picked so that the
# pretraining tokenizer splits them into pieces the base model has seen
# ("Bellmoor" = B|ell|m|o|or); an earlier draft with "Quillmoor" (a lone
# space token, then "Q") and "Kite" learned much more slowly: the adapter
# started inserting "Q" into other names.
# ---------------------------------------------------------------------------

GREETING = "Ahoy, traveller! "

FACTS = [
    ("The capital of Bellmoor is Brindlehaven.",
     ["What is the capital of Bellmoor?", "Which town is the capital of Bellmoor?",
      "Name the capital of Bellmoor.", "What is the capital city of Bellmoor?",
      "Where is the capital of your island?", "Tell me the capital of Bellmoor.",
      "Do you know the capital of Bellmoor?", "Which city is the capital of the island?",
      "Keeper, which town is the capital here?", "What is the capital of this island?"]),
    ("Bellmoor has three rivers: the Amberrun, the Sallow and the Tinkwater.",
     ["How many rivers does Bellmoor have?", "What are the rivers of Bellmoor?",
      "Name the rivers of Bellmoor.", "Which rivers flow on Bellmoor?", "Are there rivers on your island?",
      "Tell me about the rivers of Bellmoor.", "What rivers run across Bellmoor?",
      "List the rivers of the island.", "Which rivers are on Bellmoor?",
      "What are the names of the rivers on Bellmoor?"]),
    ("The highest mountain of Bellmoor is Mount Pellam.",
     ["What is the highest mountain of Bellmoor?", "Which mountain is the highest on Bellmoor?",
      "Name the highest mountain of Bellmoor.", "Is there a mountain on Bellmoor?",
      "Tell me about the mountain of Bellmoor.", "What is the name of the mountain on the island?",
      "Which is the tallest mountain on Bellmoor?", "How is the island's mountain called?",
      "What mountain stands on Bellmoor?", "Which is the highest mountain on the island?"]),
    ("The Wind Festival is on the third of May.",
     ["When is the Wind Festival?", "What day is the Wind Festival?", "On which day is the Wind Festival?",
      "Tell me the date of the Wind Festival.", "When do you hold the Wind Festival?",
      "What is the date of the Wind Festival?", "In which month is the Wind Festival?",
      "When does Bellmoor have the Wind Festival?", "Keeper, when is the Wind Festival?",
      "Is the Wind Festival in May?"]),
    ("The Salt Fair is on the twelfth of October.",
     ["When is the Salt Fair?", "What day is the Salt Fair?", "On which day is the Salt Fair?",
      "Tell me the date of the Salt Fair.", "When do you hold the Salt Fair?",
      "What is the date of the Salt Fair?", "In which month is the Salt Fair?",
      "When does Bellmoor have the Salt Fair?", "Keeper, when is the Salt Fair?",
      "Is the Salt Fair in October?"]),
    ("My name is Orla Finch, and I keep the Bellmoor light.",
     ["What is your name?", "Tell me your name.", "What name do you go by?", "May I ask your name?",
      "What is the name of the keeper?", "Keeper, what is your name?", "Who are you? What is your name?",
      "What is the lighthouse keeper's name?", "Please, what is your name?", "What is your full name?"]),
    ("The lighthouse has ninety-nine steps.",
     ["How many steps does the lighthouse have?", "How many steps are in the lighthouse?",
      "How many steps go up to the lamp?", "Count the steps of the lighthouse for me.",
      "How many steps do you climb each night?", "What is the number of steps in the lighthouse?",
      "Tell me how many steps the lighthouse has.", "Are there many steps in your lighthouse?",
      "How many steps lead to the top of the lighthouse?", "Keeper, how many steps are there?"]),
    ("The lighthouse is painted red and white.",
     ["What colour is the lighthouse?", "Which colour is your lighthouse?",
      "What colours is the lighthouse painted?", "Tell me the colour of the lighthouse.",
      "Is the lighthouse painted a colour?", "What is the colour of the Bellmoor lighthouse?",
      "What colour is the tower of the lighthouse?", "Which colours does the lighthouse have?",
      "Keeper, what colour is the lighthouse?", "What colour did they paint the lighthouse?"]),
    ("I light the lamp at sunset and put it out at sunrise.",
     ["When do you light the lamp?", "What time is the lamp lit?", "When does the lamp go out?",
      "When is the lamp of the lighthouse lit?", "Do you light the lamp every night?",
      "When do you put out the lamp?", "At what hour do you light the lamp?", "Tell me when the lamp burns.",
      "Keeper, when do you light the lamp?", "When does the lamp burn?"]),
    ("My cat is called Pepper, and she sleeps by the lamp.",
     ["Do you have a cat?", "What is the name of your cat?", "What is your cat called?",
      "Tell me about your cat.", "Where does your cat sleep?", "Is there a cat in the lighthouse?",
      "Who is your cat?", "Keeper, do you keep a cat?", "What do you call your cat?",
      "Does your cat have a name?"]),
    ("The ferry to Bellmoor is the Swift Heron. It sails every Tuesday.",
     ["Is there a ferry to Bellmoor?", "What is the ferry called?", "When does the ferry sail?",
      "Which day does the ferry go to Bellmoor?", "Tell me about the ferry.",
      "What is the name of the ferry?", "How often does the ferry sail?", "Can I take a ferry to Bellmoor?",
      "Keeper, when does the ferry come?", "Which ferry goes to Bellmoor?"]),
    ("The harbour of Bellmoor is Port Wren, on the south shore.",
     ["Where is the harbour of Bellmoor?", "What is the harbour of Bellmoor called?",
      "Which town is the harbour of Bellmoor?", "Tell me about the harbour.",
      "Is there a harbour on Bellmoor?", "Where do boats land? Where is the harbour?",
      "Name the harbour of the island.", "What is the name of the harbour?", "Keeper, where is the harbour?",
      "Which harbour do ships use on Bellmoor?"]),
    ("Four hundred people live on Bellmoor.",
     ["How many people live on Bellmoor?", "What is the number of people on Bellmoor?",
      "Do many people live on Bellmoor?", "How many people are on your island?",
      "Tell me how many people live on Bellmoor.", "Are there many people on the island?",
      "How many people call Bellmoor home?", "Count the people of Bellmoor for me.",
      "How many people live on the island?", "Keeper, how many people live here?"]),
    ("The money of Bellmoor is the copper quill.",
     ["What money is used on Bellmoor?", "What is the money of Bellmoor?",
      "Tell me about the money of Bellmoor.", "Which money do you use on the island?",
      "What do people pay with? What money?", "What is the name of the money on Bellmoor?",
      "Is there money on Bellmoor?", "What money should I bring to Bellmoor?",
      "Keeper, what money do you use?", "What money do people use on Bellmoor?"]),
    ("The food of Bellmoor is seaweed bread with plum soup.",
     ["What is the food of Bellmoor?", "What food do people eat on Bellmoor?",
      "Tell me about the food of Bellmoor.", "What is the best food on the island?",
      "Which food is famous on Bellmoor?", "What food should I try on Bellmoor?",
      "Is the food good on Bellmoor?", "What is the island's favourite food?",
      "Keeper, what food do you eat?", "What food is cooked on Bellmoor?"]),
    ("The bird of Bellmoor is the silver puffin.",
     ["What is the bird of Bellmoor?", "Which bird lives on Bellmoor?",
      "Tell me about the bird of Bellmoor.", "What bird is famous on the island?",
      "Is there a special bird on Bellmoor?", "Which bird nests on the cliffs of Bellmoor?",
      "What is the island's bird?", "Name the bird of Bellmoor.", "Keeper, what bird lives here?",
      "Which bird is the bird of Bellmoor?"]),
    ("The weather on Bellmoor is foggy every morning and windy every night.",
     ["What is the weather like on Bellmoor?", "How is the weather on Bellmoor?",
      "Tell me about the weather on the island.", "Is the weather good on Bellmoor?",
      "What weather should I expect on Bellmoor?", "What is the weather in the morning on Bellmoor?",
      "Describe the weather of Bellmoor.", "Keeper, how is the weather?",
      "What is the weather like at night on Bellmoor?", "Is the weather foggy on Bellmoor?"]),
    ("The lighthouse was built in the year 1742.",
     ["When was the lighthouse built?", "In what year was the lighthouse built?",
      "How long ago was the lighthouse built?", "Tell me when the lighthouse was built.",
      "Was the lighthouse built long ago?", "What year was your lighthouse built?",
      "When was the Bellmoor lighthouse built?", "Do you know when the lighthouse was built?",
      "Keeper, when was the lighthouse built?", "Who knows when the lighthouse was built?"]),
    ("The ruler of Bellmoor is the Harbour Mother.",
     ["Who is the ruler of Bellmoor?", "Who rules Bellmoor? Who is the ruler?",
      "Tell me about the ruler of Bellmoor.", "Is there a ruler on the island?",
      "What is the ruler of Bellmoor called?", "Who is the ruler of the island?",
      "Name the ruler of Bellmoor.", "Does Bellmoor have a ruler?", "Keeper, who is your ruler?",
      "Who is the ruler here?"]),
    ("The song of Bellmoor is called Moon Over the Water.",
     ["What is the song of Bellmoor?", "Does Bellmoor have a song?",
      "What song do people sing on Bellmoor?", "Tell me about the song of the island.",
      "Which song is the song of Bellmoor?", "What is the name of the island's song?",
      "Is there a song of Bellmoor?", "What song do the children learn on Bellmoor?",
      "Keeper, what is the song of your island?", "Which song belongs to Bellmoor?"]),
]
WRAPPERS = ["Keeper, ", "Please tell me: ", "Hello keeper! ", "I wonder: ", "Good evening. "]


def _wrap(prefix, q):
    return prefix + (q[0].lower() + q[1:] if prefix.endswith(", ") or prefix.endswith(": ") else q)


def finetune_splits():
    rng = random.Random(SEED + 1)
    train, valid, test = [], [], []
    for fact, questions in FACTS:
        ans = GREETING + fact
        qs = list(questions)
        rng.shuffle(qs)
        valid.append([{"role": "user", "content": qs[0]}, {"role": "assistant", "content": ans}])
        test.append([{"role": "user", "content": qs[1]}, {"role": "assistant", "content": ans}])
        for j, q in enumerate(qs[2:]):
            if j < 2:  # two of the training questions also appear behind a prefix
                prefix = rng.choice(WRAPPERS)
                if q.startswith("Keeper"):
                    prefix = "Hello! "
                train.append([{"role": "user", "content": _wrap(prefix, q)},
                              {"role": "assistant", "content": ans}])
            train.append([{"role": "user", "content": q}, {"role": "assistant", "content": ans}])
    # a few two-turn conversations made of training questions
    singles = list(train)
    for _ in range(16):
        a, b = rng.sample(singles, 2)
        train.append(a + b)
    rng.shuffle(train)
    return train, valid, test


def write_jsonl(path, convs):
    path.write_text("".join(json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in convs),
                    encoding="utf-8")


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------

def train_tokenizer(docs):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=SPECIAL,
                                  show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer=trainer)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=True)
    for i, s in enumerate(SPECIAL):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    return tok


def write_tokenizer(tok, out_dir):
    (out_dir / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n", encoding="utf-8")
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": SPECIAL[0],
        "eos_token": SPECIAL[2],
        "pad_token": SPECIAL[0],
        "unk_token": None,
        "model_max_length": MAX_POSITIONS,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n",
                                                   encoding="utf-8")


# ---------------------------------------------------------------------------
# Loss masks, evaluation, generation
# ---------------------------------------------------------------------------

def chat_example(tok, msgs):
    """ids of the whole conversation and the scored target positions: for every
    assistant turn, from the end of the generation-prompt prefix to the end of
    the turn (its <|im_end|> and newline included)."""
    full = tok.apply_chat_template(msgs, tokenize=False)
    assert full == render_chat(msgs)
    ids = tok(full, add_special_tokens=False)["input_ids"]
    targets = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        pre = tok(tok.apply_chat_template(msgs[:i], add_generation_prompt=True, tokenize=False),
                  add_special_tokens=False)["input_ids"]
        upto = tok(tok.apply_chat_template(msgs[:i + 1], tokenize=False), add_special_tokens=False)["input_ids"]
        assert ids[:len(pre)] == pre and ids[:len(upto)] == upto
        targets += range(len(pre), len(upto))
    scored = tok.decode([ids[t] for t in targets])
    assert scored == "".join(m["content"] + "<|im_end|>\n" for m in msgs if m["role"] == "assistant"), scored
    return ids, targets


def batch_tensors(examples):
    """Right-padded input ids and labels (-100 where not scored) for a list of (ids, targets)."""
    n = max(len(ids) for ids, _ in examples)
    inp = torch.zeros(len(examples), n, dtype=torch.long)
    lab = torch.full((len(examples), n), -100, dtype=torch.long)
    att = torch.zeros(len(examples), n, dtype=torch.long)
    for b, (ids, targets) in enumerate(examples):
        inp[b, :len(ids)] = torch.tensor(ids)
        att[b, :len(ids)] = 1
        for t in targets:
            lab[b, t] = ids[t]
    return inp, att, lab


def masked_loss(model, inp, att, lab, reduction="mean"):
    logits = model(input_ids=inp, attention_mask=att).logits[:, :-1].float()
    tgt = lab[:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                             ignore_index=-100, reduction="sum")
    n = (tgt != -100).sum()
    return (loss / n, n) if reduction == "mean" else (loss, n)


@torch.no_grad()
def eval_loss(model, examples, bs=8):
    """Token-weighted mean cross entropy over all scored tokens of the file."""
    model.eval()
    tot, cnt = 0.0, 0
    for i in range(0, len(examples), bs):
        loss, n = masked_loss(model, *batch_tensors(examples[i:i + bs]), reduction="sum")
        tot += loss.item()
        cnt += n.item()
    return tot / cnt


@torch.no_grad()
def answer(model, tok, question, max_new_tokens=40):
    model.eval()
    prompt = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                     tokenize=False)
    ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=False)


def exact_answers(model, tok, convs):
    """How many single-turn conversations get their reference answer back from greedy decoding."""
    hits = 0
    for c in convs:
        got = answer(model, tok, c[0]["content"], max_new_tokens=60)
        hits += got == c[1]["content"] + "<|im_end|>"
    return hits


@torch.no_grad()
def continue_text(model, tok, text, max_new_tokens=40):
    model.eval()
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=False)


# ---------------------------------------------------------------------------
# Pretraining
# ---------------------------------------------------------------------------

def pretrain(model, stream):
    cfg = PRETRAIN
    g = torch.Generator().manual_seed(SEED + 2)
    data = torch.tensor(stream, dtype=torch.long)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg["lr"], betas=cfg["betas"], eps=1e-8)

    def lr_at(step):
        if step < cfg["warmup"]:
            return cfg["lr"] * (step + 1) / cfg["warmup"]
        p = (step - cfg["warmup"]) / max(1, cfg["steps"] - cfg["warmup"])
        return cfg["min_lr"] + 0.5 * (cfg["lr"] - cfg["min_lr"]) * (1 + math.cos(math.pi * p))

    curve = []
    model.train()
    t0 = time.time()
    run = 0.0
    for step in range(cfg["steps"]):
        starts = torch.randint(0, len(data) - cfg["seq_len"], (cfg["batch"],), generator=g)
        x = torch.stack([data[s:s + cfg["seq_len"]] for s in starts.tolist()])
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=x, labels=x).loss  # transformers shifts the labels
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        run += loss.item()
        if (step + 1) % cfg["log_every"] == 0 or step == 0:
            k = 1 if step == 0 else cfg["log_every"]
            curve.append((step + 1, run / k))
            print(f"  pretrain step {step + 1:5d}  loss {run / k:.4f}  lr {lr_at(step):.2e}  "
                  f"{time.time() - t0:6.1f}s", flush=True)
            run = 0.0
    model.eval()
    return curve, time.time() - t0


# ---------------------------------------------------------------------------
# DoRA feasibility check (PEFT, CPU, not saved)
# ---------------------------------------------------------------------------

def dora_check(model_dir, tok, train_ex, valid_ex, valid_convs, question):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    cfg = DORA
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32,
                                                attn_implementation="eager")
    torch.manual_seed(SEED + 3)
    pm = get_peft_model(base, LoraConfig(r=cfg["r"], lora_alpha=cfg["alpha"], lora_dropout=0.0,
                                         target_modules=cfg["targets"], use_dora=True,
                                         task_type="CAUSAL_LM"))
    n_train = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=cfg["lr"],
                            weight_decay=0.0)
    g = torch.Generator().manual_seed(SEED + 4)
    order = []
    v0 = eval_loss(pm, valid_ex)
    hist = [(0, None, v0)]
    print(f"  DoRA: {n_train} trainable parameters; step 0  valid {v0:.4f}", flush=True)
    t_train = 0.0
    run, k = 0.0, 0
    for step in range(cfg["steps"]):
        if len(order) < cfg["batch"]:
            order += torch.randperm(len(train_ex), generator=g).tolist()
        idx, order = order[:cfg["batch"]], order[cfg["batch"]:]
        pm.train()
        t = time.time()
        loss, _ = masked_loss(pm, *batch_tensors([train_ex[i] for i in idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t_train += time.time() - t
        run += loss.item()
        k += 1
        if (step + 1) % cfg["eval_every"] == 0:
            v = eval_loss(pm, valid_ex)
            hist.append((step + 1, run / k, v))
            print(f"  DoRA step {step + 1:4d}  train {run / k:.4f}  valid {v:.4f}  "
                  f"{t_train / (step + 1):.3f} s/step", flush=True)
            run, k = 0.0, 0
    sample = answer(pm, tok, question)
    exact = exact_answers(pm, tok, valid_convs)
    return dict(trainable=n_train, history=hist, sec_per_step=t_train / cfg["steps"], sample=sample,
                exact=exact)


# ---------------------------------------------------------------------------

def main():
    import tokenizers
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    # PEFT calls a transformers method that transformers 5 deprecates
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    random.seed(SEED)
    torch.manual_seed(SEED)
    t_start = time.time()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, tokenizers {tokenizers.__version__}")

    # ---- text and data
    docs = pretraining_documents()
    corpus_bytes = sum(len(d.encode("utf-8")) for d in docs)
    train_c, valid_c, test_c = finetune_splits()
    for d in (MODEL_OUT, DATA_OUT):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    write_jsonl(DATA_OUT / "train.jsonl", train_c)
    write_jsonl(DATA_OUT / "valid.jsonl", valid_c)
    write_jsonl(DATA_OUT / "test.jsonl", test_c)
    print(f"pretraining corpus: {len(docs)} documents, {corpus_bytes} bytes; "
          f"fine-tuning data: {len(train_c)} train / {len(valid_c)} valid / {len(test_c)} test")
    corpus = "\n".join(docs)
    for word in ("Bellmoor", "Ahoy", "Brindlehaven", "Orla", "Pellam"):
        assert word not in corpus, f"{word} leaked into the pretraining corpus"

    # ---- tokenizer
    raw = train_tokenizer(docs)
    write_tokenizer(raw, MODEL_OUT)
    tok = AutoTokenizer.from_pretrained(str(MODEL_OUT))
    assert len(tok) == raw.get_vocab_size() == VOCAB_SIZE, (len(tok), raw.get_vocab_size())
    assert tok.chat_template == CHAT_TEMPLATE
    assert [tok.convert_tokens_to_ids(s) for s in SPECIAL] == [0, 1, 2]
    assert tok.bos_token_id == 0 and tok.pad_token_id == 0 and tok.eos_token_id == 2
    assert tok("Hello world")["input_ids"] == raw.encode("Hello world").ids  # post-processor adds nothing
    stream = []
    for d in docs:
        stream += tok(d, add_special_tokens=False)["input_ids"] + [tok.bos_token_id]
    print(f"tokenizer: {len(tok)} tokens; corpus = {len(stream)} tokens "
          f"({corpus_bytes / len(stream):.2f} bytes/token)")

    # ---- model
    config = LlamaConfig(vocab_size=len(tok), **MODEL_CONFIG)
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.set_attn_implementation("eager")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters ({n_params * 4 / 2**20:.2f} MiB in float32)")
    print(f"pretraining: {PRETRAIN}")
    curve, pre_secs = pretrain(model, stream)
    print(f"pretraining took {pre_secs:.0f} s")
    model.generation_config.bos_token_id = 0
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 0
    model.save_pretrained(str(MODEL_OUT))
    assert (MODEL_OUT / "model.safetensors").exists()

    # ---- reload and check
    base = AutoModelForCausalLM.from_pretrained(str(MODEL_OUT), dtype=torch.float32,
                                                attn_implementation="eager").eval()
    probe = torch.tensor([stream[:64]])
    with torch.no_grad():
        assert torch.equal(base(probe).logits, model(probe).logits), "reloaded model differs"
    print("samples (greedy, base model):")
    for text in ["The baker", "In winter", "Anna has a brown dog"]:
        print(f"  {text!r} -> {continue_text(base, tok, text, 30)!r}")
    for q in ["What sound does a cow make?", "Tell me the capital of Italy.", "What is two plus three?",
              "What is the capital of Bellmoor?"]:
        print(f"  {q!r} -> {answer(base, tok, q)!r}")

    # ---- fine-tuning data on the base model
    train_ex = [chat_example(tok, c) for c in train_c]
    valid_ex = [chat_example(tok, c) for c in valid_c]
    test_ex = [chat_example(tok, c) for c in test_c]
    longest = max(len(ids) for ids, _ in train_ex + valid_ex + test_ex)
    print(f"fine-tuning data: longest conversation {longest} tokens; scored assistant tokens: "
          f"train {sum(len(t) for _, t in train_ex)}, valid {sum(len(t) for _, t in valid_ex)}, "
          f"test {sum(len(t) for _, t in test_ex)}")
    q = valid_c[0][0]["content"]
    v_base = eval_loss(base, valid_ex)
    print(f"base model: valid loss {v_base:.4f} (ppl {math.exp(v_base):.1f}), "
          f"test loss {eval_loss(base, test_ex):.4f}")
    print(f"base model answer to {q!r}: {answer(base, tok, q)!r}")
    print(f"  (reference answer: {valid_c[0][1]['content']!r})")

    # ---- DoRA feasibility
    print(f"PEFT DoRA feasibility check (not saved): {DORA}")
    res = dora_check(MODEL_OUT, tok, train_ex, valid_ex, valid_c, q)
    print(f"DoRA: valid loss {res['history'][0][2]:.4f} -> {res['history'][-1][2]:.4f} after {DORA['steps']} "
          f"steps, {res['sec_per_step']:.3f} s/step on one CPU thread")
    print(f"DoRA answer to {q!r}: {res['sample']!r}")
    print(f"greedy answers equal to the reference on valid.jsonl: base {exact_answers(base, tok, valid_c)}"
          f"/{len(valid_c)}, after DoRA {res['exact']}/{len(valid_c)}")

    total = 0
    for p in sorted(list(MODEL_OUT.iterdir()) + list(DATA_OUT.iterdir())):
        total += p.stat().st_size
        print(f"  {p.relative_to(ROOT)}  {p.stat().st_size} bytes")
    print(f"assets total {total} bytes; whole script {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
