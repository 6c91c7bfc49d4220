"""The Android app's shared vectors: fresh (regenerated and compared with the committed file),
and true to ExecuTorch's runner: its tokenizer turns every prompt string into exactly the ids
llama-edge feeds, and the runner, given the app's prompt string, generates llama-edge's greedy
text (`llama-edge run -m model.pte` with the same messages)."""

from __future__ import annotations

import json

import pytest

import android_vectors as av  # tests/android_demo/, the vectors' generator

# Greedy tokens compared per prompt between the runner and llama-edge's engine: enough to
# cover several decode steps after the prompt's chunked prefill, cheap on the 2-layer program.
GREEDY_TOKENS = 24


@pytest.fixture(scope="module")
def table(smollm2_gguf, llama32_tokenizer_dir):
    return av.models(smollm2_gguf, llama32_tokenizer_dir)


@pytest.fixture(scope="module")
def vectors() -> dict:
    return json.loads(av.VECTORS.read_text(encoding="utf-8"))


def _cpp_tokenizer(tok, directory):
    """ExecuTorch's C++ HF tokenizer (the one LlmModule's runner uses) on the tokenizer.json
    llama-export writes beside model.pte."""
    from pytorch_tokenizers import CppHFTokenizer

    tok.save(directory)
    cpp = CppHFTokenizer()
    cpp.load(str(directory / "tokenizer.json"))
    return cpp


def test_vectors_are_fresh(smollm2_gguf, llama32_tokenizer_dir, table):
    want = av.dumps(av.build(smollm2_gguf, llama32_tokenizer_dir, table))
    assert av.VECTORS.read_text(encoding="utf-8") == want, (
        "tests/android_demo/vectors.json is stale: run python tests/android_demo/android_vectors.py")


def test_vectors_cover_what_the_app_must_agree_on(vectors):
    prompts = vectors["prompts"]
    formats = {vectors["models"][p["model"]]["chat_format"] for p in prompts}
    assert formats == {"chatml", "llama3", "raw"}
    assert {p["task"] for p in prompts} == {"summarize", "rewrite"}
    assert any(p["system"] for p in prompts) and any(p["system"] is None for p in prompts)
    assert any(any(ord(c) > 0x7F for c in p["text"]) for p in prompts)
    assert any("<|im_start|>" in p["text"] and "<|eot_id|>" in p["text"] for p in prompts)
    assert vectors["models"]["llama3.2"]["llama3_preamble"] is not None
    assert vectors["models"]["llama3"]["llama3_preamble"] is None
    assert {s["finish"] for s in vectors["stops"]} == {"eos", "length", "context"}


def test_the_runners_tokenizer_reads_each_prompt_as_our_ids(table, vectors, tmp_path):
    cpp = {name: _cpp_tokenizer(tok, tmp_path / name) for name, (tok, _) in table.items()}
    for p in vectors["prompts"]:
        assert cpp[p["model"]].encode(p["prompt"], 0, 0) == p["ids"], (p["model"], p["text"][:40])


def test_unbroken_special_strings_would_forge_turns(table, tmp_path):
    """Without neutralizing, the runner's tokenizer makes a special token of user text that
    llama-edge's runtime keeps as text: the two would see different conversations."""
    from edge.chat import encode_chat

    tok, cfg = table["smollm2"]
    cpp = _cpp_tokenizer(tok, tmp_path)
    msgs = [{"role": "user", "content": av.INJECTION}]
    ids = encode_chat(tok, msgs, "chatml")
    assert cpp.encode(tok.decode(ids), 0, 0) != ids
    prompt, ids = av.app_prompt(tok, cfg, msgs)
    assert cpp.encode(prompt, 0, 0) == ids


def _runner_pieces(runner, prompt: str, n: int):
    from executorch.extension.llm.runner import GenerationConfig

    pieces, stats = [], []
    runner.reset()  # what LlmModule.resetContext does before each of the app's requests
    runner.generate(prompt, GenerationConfig(max_new_tokens=n, temperature=0.0, echo=False),
                    token_callback=pieces.append, stats_callback=stats.append)
    return pieces, stats[-1]


@pytest.mark.slow
def test_app_prompt_in_the_runner_equals_our_engine(smollm2_ptes, vectors):
    """Each SmolLM2 vector that fits the program's context: the prompt string (rebuilt from the
    exported directory's own llama_edge_app.json and tokenizer) in ExecuTorch's runner gives,
    after the app's end-of-generation handling, the greedy text of llama-edge's engine fed the
    vector's ids; the runner counts the same prompt tokens and reports statistics in the format
    the vectors use."""
    import executorch.kernels.quantized  # noqa: F401 (the app links these kernels too)
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401
    from executorch.extension.llm.runner import TextLLMRunner

    from edge.engines import open_model
    from edge.generate import Generation
    from edge.sampling import SamplingParams
    from export.targets.app_config import APP_CONFIG, app_prompt

    _, ptes = smollm2_ptes
    _, pte = ptes["mobile"]
    engine = open_model(str(pte))
    cfg = json.loads((pte.parent / APP_CONFIG).read_text(encoding="utf-8"))
    ends = {e["text"] for e in cfg["end_of_generation"]}
    runner = TextLLMRunner(str(pte), str(pte.parent / "tokenizer.json"))
    checked = 0
    for v in vectors["prompts"]:
        if v["model"] != "smollm2" or len(v["ids"]) + GREEDY_TOKENS > cfg["max_context"]:
            continue
        msgs = av.task_messages(v["task"], v["text"], v["style"])
        if v["system"] is not None and v["system"].strip():
            msgs = [{"role": "system", "content": v["system"]}, *msgs]
        prompt, ids = app_prompt(engine.tokenizer, cfg, msgs, v["date"])
        assert (prompt, ids) == (v["prompt"], v["ids"])

        gen = Generation(engine.session(), engine.tokenizer, ids,
                         SamplingParams(max_new_tokens=GREEDY_TOKENS, temperature=0.0),
                         engine.eos_ids)
        ours = "".join(gen)
        pieces, stats = _runner_pieces(runner, prompt, GREEDY_TOKENS)
        shown = []
        for piece in pieces:  # the app's rule: an end-of-generation piece ends the text
            if piece in ends:
                break
            shown.append(piece)
        assert "".join(shown) == ours, v["text"][:40]
        assert stats.num_prompt_tokens == len(ids)
        fields = {k: getattr(stats, k) for k in ("num_prompt_tokens", "num_generated_tokens",
                                                  *av.STATS_KEYS)}
        assert stats.to_json_string() == av.runner_stats_json(fields)
        checked += 1
    assert checked >= 8
