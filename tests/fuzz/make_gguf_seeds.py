#!/usr/bin/env python3
"""tests/fuzz/make_gguf_seeds.py DIR [MODEL] - seed inputs for fuzz_gguf.

Writes a few small, valid GGUF files (every value type, nested arrays,
tensors of several types, a BPE vocabulary) and, given the default model,
its metadata with the tensor data cut off, so the fuzzer starts from files
that parse and mutates toward the edges.
"""
import os
import struct
import sys

T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR, T_U64, T_I64, T_F64 = range(13)


def s(x):
    b = x.encode() if isinstance(x, str) else x
    return struct.pack("<Q", len(b)) + b


def kv(key, typ, payload):
    return s(key) + struct.pack("<I", typ) + payload


def arr(elem, items, enc):
    return struct.pack("<IQ", elem, len(items)) + b"".join(enc(i) for i in items)


def gguf(kvs, tensors, data, align=32):
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs)
    for name, dims, typ, off in tensors:
        out += s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", typ, off)
    out += b"\0" * ((-len(out)) % align)
    return out + data


def main():
    d = sys.argv[1]
    os.makedirs(d, exist_ok=True)
    every = [
        kv("a.u8", T_U8, b"\x07"), kv("a.i8", T_I8, b"\xff"), kv("a.u16", T_U16, b"\x01\x02"),
        kv("a.i16", T_I16, b"\xfe\xff"), kv("a.u32", T_U32, struct.pack("<I", 9)),
        kv("a.i32", T_I32, struct.pack("<i", -9)), kv("a.f32", T_F32, struct.pack("<f", 0.5)),
        kv("a.bool", T_BOOL, b"\x01"), kv("a.str", T_STR, s("text")),
        kv("a.u64", T_U64, struct.pack("<Q", 1 << 40)), kv("a.i64", T_I64, struct.pack("<q", -1)),
        kv("a.f64", T_F64, struct.pack("<d", 2.5)),
        kv("a.nested", T_ARR, arr(T_ARR, [["x", "y"], ["z"]], lambda a: arr(T_STR, a, s))),
        kv("general.alignment", T_U32, struct.pack("<I", 32)),
    ]
    tensors = [("f32", [4, 2], 0, 0), ("q8_0", [32], 8, 32), ("q4_k", [256], 12, 96)]
    data = struct.pack("<8f", *range(8)) + b"\0" * 64 + b"\x00\x3c" + bytes(range(32)) + b"\0" * 30
    data += b"\x00\x3c\x00\x38" + bytes(range(12)) + bytes(range(128))
    open(os.path.join(d, "every_type.gguf"), "wb").write(gguf(every, tensors, data))

    toks = ["a", "b", "c", "ab", "abc", "<s>", "\u0120a"]
    vocab = [
        kv("tokenizer.ggml.model", T_STR, s("gpt2")), kv("tokenizer.ggml.pre", T_STR, s("qwen2")),
        kv("tokenizer.ggml.tokens", T_ARR, arr(T_STR, toks, s)),
        kv("tokenizer.ggml.token_type", T_ARR, arr(T_I32, [1, 1, 1, 1, 1, 3, 1], lambda i: struct.pack("<i", i))),
        kv("tokenizer.ggml.merges", T_ARR, arr(T_STR, ["a b", "ab c"], s)),
        kv("tokenizer.ggml.bos_token_id", T_U32, struct.pack("<I", 5)),
    ]
    open(os.path.join(d, "bpe_vocab.gguf"), "wb").write(gguf(vocab, [], b""))
    spm = ["<unk>", "<s>", "</s>", "\u2581a", "a", "b", "\u2581"]
    vocab = [
        kv("tokenizer.ggml.model", T_STR, s("llama")),
        kv("tokenizer.ggml.tokens", T_ARR, arr(T_STR, spm, s)),
        kv("tokenizer.ggml.scores", T_ARR, arr(T_F32, [0, 0, 0, -1, -2, -3, -4], lambda f: struct.pack("<f", f))),
        kv("tokenizer.ggml.token_type", T_ARR, arr(T_I32, [2, 3, 3, 1, 1, 1, 1], lambda i: struct.pack("<i", i))),
    ]
    open(os.path.join(d, "spm_vocab.gguf"), "wb").write(gguf(vocab, [], b""))

    if len(sys.argv) > 2 and os.path.exists(sys.argv[2]):
        with open(sys.argv[2], "rb") as f:
            head = f.read(4 << 20)
        open(os.path.join(d, "model_head.gguf"), "wb").write(head)


if __name__ == "__main__":
    main()
