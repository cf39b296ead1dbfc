"""The real-shape GGUF generator: llama.cpp's Q4_K_M tensor types, valid blocks, the real tokenizer."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

from thyme_cli.devtools import real_shape_gguf as rs


def _data_dir() -> Path:
    try:
        return rs.data_dir()
    except FileNotFoundError as e:
        pytest.skip(str(e))


def test_q4_k_m_plan_follows_llama_cpp_rules() -> None:
    plan = {name: (shape, kind) for name, shape, kind in rs.text_tensor_plan(rs.SHAPES["7b"])}
    # 28 layers: "more bits" for layers < 3, >= 24, and (i - 3) % 3 == 2 -> 5, 8, ..., 23
    more = [i for i in range(28) if plan[f"blk.{i}.attn_v.weight"][1] == "q6_k"]
    assert more == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27]
    assert all(plan[f"blk.{i}.ffn_down.weight"][1] == ("q6_k" if i in more else "q4_k") for i in range(28))
    assert plan["output.weight"] == ((152064, 3584), "q6_k")
    assert plan["token_embd.weight"] == ((152064, 3584), "q4_k")
    assert plan["blk.0.attn_k.weight"] == ((512, 3584), "q4_k")  # 4 KV heads x 128
    assert plan["blk.0.ffn_gate.weight"] == ((18944, 3584), "q4_k")
    assert plan["blk.0.attn_q.bias"][1] == "f32" and plan["blk.0.attn_norm.weight"][1] == "f32"
    three = {name: (shape, kind) for name, shape, kind in rs.text_tensor_plan(rs.SHAPES["3b"])}
    assert "output.weight" not in three  # tied: the embedding is the output matrix, so it gets Q6_K
    assert three["token_embd.weight"] == ((151936, 2048), "q6_k")
    assert len([n for n in three if n.endswith("attn_q.weight")]) == 36


def test_projector_plan_has_the_qwen25_vl_vision_shapes() -> None:
    plan = {name: (shape, kind) for name, shape, kind in rs.vision_tensor_plan(3584)}
    assert len([n for n in plan if n.endswith("ln1.weight")]) == 32
    assert plan["v.blk.31.ffn_gate.weight"] == ((3420, 1280), "f16")
    assert plan["v.blk.0.attn_q.bias"] == ((1280,), "f32")
    assert plan["mm.0.weight"] == ((5120, 5120), "f16") and plan["mm.2.weight"] == ((3584, 5120), "f16")
    assert plan["v.patch_embd.weight"] == ((1280, 3, 14, 14), "f16")


def test_weight_bytes_match_the_published_file_sizes() -> None:
    # ggml-org's Qwen2.5-VL-3B/7B-Instruct Q4_K_M files are ~1.93 GB and ~4.68 GB; their f16 mmproj ~1.34 GB
    three, seven = rs.weight_bytes("3b"), rs.weight_bytes("7b")
    assert 1.85e9 < three["total"] < 1.95e9 and 4.5e9 < seven["total"] < 4.75e9
    assert 1.3e9 < three["projector"] < 1.4e9
    assert seven["per_token"] == seven["total"] - 152064 * 3584 // 256 * 144  # all but the embedding rows


@pytest.mark.slow
def test_a_small_model_written_the_same_way_has_valid_blocks_and_the_real_tokenizer(tmp_path: Path) -> None:
    import gguf
    import llama_cpp

    data = _data_dir()
    shape = rs.Shape(
        "test", n_embd=256, n_layer=2, n_head=2, n_head_kv=1, n_ff=512, n_vocab=151936, tied_embeddings=False
    )
    path = rs.write_text_model(tmp_path / "m.gguf", shape, data=data)
    reader = gguf.GGUFReader(path)
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.1.attn_v.weight"] == gguf.GGMLQuantizationType.Q6_K  # 2 layers: the last has more bits
    assert types["blk.0.attn_v.weight"] == gguf.GGMLQuantizationType.Q4_K
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q4_K
    assert types["output_norm.weight"] == gguf.GGMLQuantizationType.F32
    q4 = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    values = gguf.dequantize(q4.data, q4.tensor_type)
    assert values.shape == (256, 256) and np.isfinite(values).all() and 0 < np.abs(values).max() < 1
    q6 = next(t for t in reader.tensors if t.name == "output.weight")
    assert np.isfinite(gguf.dequantize(q6.data[:4], q6.tensor_type)).all()
    # The vocabulary alone loads in llama.cpp and tokenizes as Qwen2.5 does.
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    assert model
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        buf = (llama_cpp.llama_token * 32)()
        text = b"Hello world<|im_end|>"
        n = llama_cpp.llama_tokenize(vocab, text, len(text), buf, 32, False, True)
        assert list(buf[:n]) == [9707, 1879, 151645]
        assert llama_cpp.llama_vocab_eos(vocab) == 151645
        assert llama_cpp.llama_vocab_n_tokens(vocab) == 151936
        template = llama_cpp.llama_model_chat_template(model, None)
        assert template and b"<|im_start|>" in ctypes.string_at(template)
    finally:
        llama_cpp.llama_model_free(model)
