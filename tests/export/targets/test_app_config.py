"""llama_edge_app.json: what `--target xnnpack` writes beside model.pte for the Android app, and
the neutralizing of special-token strings in user text."""

from __future__ import annotations

import json
import random

import pytest

from edge.chat import encode_chat
from edge.tokenizer import Tokenizer
from export.targets.app_config import APP_CONFIG, BREAK, DATE_PLACEHOLDER, app_config, app_prompt, neutralize

SMOL_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
LLAMA32_LIKE = ('{{- bos_token }}{%- if strftime_now is defined %}{%- set date_string = '
                'strftime_now("%d %b %Y") %}{%- else %}{%- set date_string = "26 Jul 2024" %}'
                '{%- endif %}{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}'
                '{{- "Cutting Knowledge Date: December 2023\\n" + "Today Date: " + date_string }}')


def test_chatml_config(smol):
    cfg = app_config(smol, (), 512)
    assert cfg["chat_format"] == "chatml"
    assert cfg["chatml_default_system"] == SMOL_DEFAULT_SYSTEM
    assert cfg["llama3_preamble"] is None and cfg["max_context"] == 512
    assert {e["text"] for e in cfg["end_of_generation"]} == {"<|im_end|>", "<|endoftext|>"}
    assert [e["id"] for e in cfg["end_of_generation"]] == sorted(smol.eos_ids)
    assert {"<|im_start|>", "<|im_end|>", "<filename>"} <= set(cfg["special_tokens"])
    assert cfg["generation"]["temperature"] == 0.0


def _llama(llama32_tokenizer_dir, template):
    config = json.loads((llama32_tokenizer_dir / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    return Tokenizer.from_hf_json((llama32_tokenizer_dir / "tokenizer.json").read_text(), config)


def test_llama3_preamble_rules(llama32_tokenizer_dir):
    today = app_config(_llama(llama32_tokenizer_dir, LLAMA32_LIKE), (), 2048)
    assert today["chat_format"] == "llama3" and today["bos"] == "<|begin_of_text|>"
    assert today["llama3_preamble"] == (f"Cutting Knowledge Date: December 2023\n"
                                        f"Today Date: {DATE_PLACEHOLDER}\n\n")
    assert today["llama3_preamble_date"] is None  # the device's date
    fixed = app_config(_llama(llama32_tokenizer_dir, LLAMA32_LIKE.replace("strftime_now", "x")),
                       (), 2048)
    assert fixed["llama3_preamble_date"] == "26 Jul 2024"
    plain = app_config(_llama(llama32_tokenizer_dir, None), (), 2048)
    assert plain["llama3_preamble"] is None
    assert {e["text"] for e in plain["end_of_generation"]} == {"<|end_of_text|>", "<|eot_id|>",
                                                              "<|eom_id|>"}
    assert len(plain["special_tokens"]) == 257 and "<|image|>" in plain["special_tokens"]


def test_model_eos_ids_join_the_tokenizers(smol):
    cfg = app_config(smol, (7,), 512)
    assert {"id": 7, "text": smol.decode([7])} in cfg["end_of_generation"]


def test_neutralize_leaves_no_special_token_and_changes_nothing_else():
    specials = ["<|im_start|>", "<|im_end|>", "<|im_end|>x", "<filename>"]
    rng = random.Random(0)
    pieces = ["<|", "im_", "end|>", "<|im_start|>", "<|im_end|>", "x", "<filename>", " ", "é", "<"]
    for _ in range(500):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        out = neutralize(text, specials)
        assert not any(s in out for s in specials), (text, out)
        assert out.replace(BREAK, "") == text
    assert neutralize("a <|im_end|>x b", specials) == f"a <{BREAK}|im_end|>x b"  # longest first
    assert neutralize("plain text", specials) == "plain text"
    assert neutralize("<|im_end|>", []) == "<|im_end|>"


def test_app_prompt_is_the_runtimes_ids_as_text(smol):
    cfg = app_config(smol, (), 512)
    msgs = [{"role": "user", "content": "Hi <|im_end|> there"}]
    prompt, ids = app_prompt(smol, cfg, msgs)
    assert prompt.startswith(f"<|im_start|>system\n{SMOL_DEFAULT_SYSTEM}<|im_end|>\n")
    assert f"Hi <{BREAK}|im_end|> there<|im_end|>\n<|im_start|>assistant\n" in prompt
    safe = [{"role": "user", "content": neutralize(msgs[0]["content"], cfg["special_tokens"])}]
    assert ids == encode_chat(smol, safe, "chatml")


@pytest.mark.slow
def test_xnnpack_target_writes_it_beside_the_program(smollm2_ptes):
    """The file the export writes agrees with the program's own runner metadata."""
    from edge.engines.executorch import ExecuTorchEngine

    ck, ptes = smollm2_ptes
    _, pte = ptes["mobile"]
    cfg = json.loads((pte.parent / APP_CONFIG).read_text(encoding="utf-8"))
    meta = ExecuTorchEngine(pte).meta
    assert [e["id"] for e in cfg["end_of_generation"]] == sorted(meta["get_eos_ids"])
    assert cfg["max_context"] == meta["get_max_context_len"]
    assert cfg["program"] == pte.name and (pte.parent / cfg["tokenizer"]).is_file()
    assert cfg == app_config(ck.tokenizer, ck.config.eos_token_ids, meta["get_max_context_len"],
                             name=cfg["name"])
