// tokenizer/spm_c.cc - the C API of spm_c.h over libsentencepiece.
//
// Builds a serialized ModelProto by hand (protobuf wire format: only the
// handful of fields SentencePiece reads when encoding) because Debian's
// libsentencepiece-dev ships no .proto headers, and reads the pieces back
// out of a tokenizer.model the same way.  Every entry point catches
// exceptions and reports errors as negative codes; none aborts.

#include "tokenizer/spm_c.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <new>
#include <sentencepiece_processor.h>
#include <string>
#include <vector>

struct spm_c {
    sentencepiece::SentencePieceProcessor proc;
    std::vector<std::string> text;
    std::vector<spm_c_bytes> pieces;
    std::vector<float> scores;
    std::vector<int32_t> types;
    int add_dummy_prefix = 1;
};

namespace
{

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };
enum {
    TYPE_NORMAL = 1,
    TYPE_UNKNOWN = 2,
    TYPE_CONTROL = 3,
    TYPE_USER = 4,
    TYPE_UNUSED = 5,
    TYPE_BYTE = 6
};
const size_t kMaxModelFile = 256u << 20;

void put_varint(std::string &s, uint64_t v)
{
    while (v >= 0x80) {
        s.push_back(static_cast<char>((v & 0x7f) | 0x80));
        v >>= 7;
    }
    s.push_back(static_cast<char>(v));
}

void put_tag(std::string &s, uint32_t field, uint32_t wt)
{
    put_varint(s, (static_cast<uint64_t>(field) << 3) | wt);
}

void put_bytes(std::string &s, uint32_t field, const char *p, size_t n)
{
    put_tag(s, field, WT_LEN);
    put_varint(s, n);
    s.append(p, n);
}

void put_int(std::string &s, uint32_t field, int64_t v)
{
    put_tag(s, field, WT_VARINT);
    put_varint(s, static_cast<uint64_t>(v)); // negative int32 is sign-extended to 10 bytes
}

void put_float(std::string &s, uint32_t field, float f)
{
    uint32_t u;
    std::memcpy(&u, &f, 4);
    put_tag(s, field, WT_I32);
    for (int i = 0; i < 4; i++)
        s.push_back(static_cast<char>((u >> (8 * i)) & 0xff));
}

void set_err(char *err, size_t errlen, const std::string &msg)
{
    if (err && errlen)
        std::snprintf(err, errlen, "%s", msg.c_str());
}

int32_t norm_type(int32_t t)
{
    return (t >= TYPE_NORMAL && t <= TYPE_BYTE) ? t : TYPE_NORMAL;
}

// ModelProto { pieces = 1; trainer_spec = 2; normalizer_spec = 3; }
std::string build_proto(const spm_c_vocab *v)
{
    std::string out, sub;
    bool has_bytes = false;
    for (size_t i = 0; i < v->n; i++) {
        int32_t t = norm_type(v->types ? v->types[i] : TYPE_NORMAL);
        has_bytes = has_bytes || t == TYPE_BYTE;
        sub.clear();
        put_bytes(sub, 1, v->pieces[i].p, v->pieces[i].n);
        put_float(sub, 2, v->scores ? v->scores[i] : 0.0f);
        put_int(sub, 3, t);
        put_bytes(out, 1, sub.data(), sub.size());
    }
    // TrainerSpec: model_type = BPE (scores rank the merges, as llama.cpp reads them)
    sub.clear();
    put_int(sub, 3, 2);
    put_int(sub, 4, static_cast<int64_t>(v->n));
    put_int(sub, 35, has_bytes ? 1 : 0); // byte_fallback
    put_bytes(out, 2, sub.data(), sub.size());
    // NormalizerSpec: identity rules, as Llama-family tokenizers use
    sub.clear();
    put_bytes(sub, 1, "identity", 8);
    put_int(sub, 3, v->add_dummy_prefix ? 1 : 0);
    put_int(sub, 4, v->remove_extra_whitespaces ? 1 : 0);
    put_int(sub, 5, 1); // escape_whitespaces
    put_bytes(out, 3, sub.data(), sub.size());
    return out;
}

struct reader {
    const unsigned char *p, *end;
    bool ok = true;

    uint64_t varint()
    {
        uint64_t v = 0;
        for (int shift = 0; shift < 64; shift += 7) {
            if (p >= end) {
                ok = false;
                return 0;
            }
            unsigned char c = *p++;
            v |= static_cast<uint64_t>(c & 0x7f) << shift;
            if (!(c & 0x80))
                return v;
        }
        ok = false;
        return 0;
    }

    // Reads a length-delimited field body; returns false when it does not fit.
    bool len(const unsigned char **q, size_t *n)
    {
        uint64_t l = varint();
        if (!ok || l > static_cast<uint64_t>(end - p))
            return ok = false;
        *q = p;
        *n = static_cast<size_t>(l);
        p += l;
        return true;
    }

    bool skip(uint32_t wt)
    {
        const unsigned char *q;
        size_t n;
        switch (wt) {
        case WT_VARINT:
            varint();
            return ok;
        case WT_I64:
        case WT_I32: {
            size_t k = wt == WT_I64 ? 8 : 4;
            if (static_cast<size_t>(end - p) < k)
                return ok = false;
            p += k;
            return true;
        }
        case WT_LEN:
            return len(&q, &n);
        default:
            return ok = false;
        }
    }
};

// Pulls pieces, scores, types and add_dummy_prefix out of a serialized ModelProto.
bool read_proto(const std::string &bytes, spm_c *sp)
{
    reader r{reinterpret_cast<const unsigned char *>(bytes.data()),
             reinterpret_cast<const unsigned char *>(bytes.data()) + bytes.size()};
    while (r.ok && r.p < r.end) {
        uint64_t tag = r.varint();
        uint32_t field = static_cast<uint32_t>(tag >> 3), wt = tag & 7;
        if (!r.ok)
            break;
        if ((field == 1 || field == 3) && wt == WT_LEN) {
            const unsigned char *q;
            size_t n;
            if (!r.len(&q, &n))
                break;
            reader s{q, q + n};
            std::string piece;
            float score = 0;
            int32_t type = TYPE_NORMAL;
            while (s.ok && s.p < s.end) {
                uint64_t t2 = s.varint();
                uint32_t f2 = static_cast<uint32_t>(t2 >> 3), w2 = t2 & 7;
                if (!s.ok)
                    break;
                if (field == 1 && f2 == 1 && w2 == WT_LEN) {
                    const unsigned char *pq;
                    size_t pn;
                    if (s.len(&pq, &pn))
                        piece.assign(reinterpret_cast<const char *>(pq), pn);
                } else if (field == 1 && f2 == 2 && w2 == WT_I32 && s.end - s.p >= 4) {
                    uint32_t u = s.p[0] | (s.p[1] << 8) | (s.p[2] << 16) |
                                 (static_cast<uint32_t>(s.p[3]) << 24);
                    std::memcpy(&score, &u, 4);
                    s.p += 4;
                } else if (field == 1 && f2 == 3 && w2 == WT_VARINT) {
                    type = norm_type(static_cast<int32_t>(s.varint()));
                } else if (field == 3 && f2 == 3 && w2 == WT_VARINT) {
                    sp->add_dummy_prefix = s.varint() != 0;
                } else {
                    s.skip(w2);
                }
            }
            if (!s.ok)
                return false;
            if (field == 1) {
                sp->text.push_back(piece);
                sp->scores.push_back(score);
                sp->types.push_back(type);
            }
        } else if (!r.skip(wt)) {
            break;
        }
    }
    if (!r.ok)
        return false;
    sp->pieces.resize(sp->text.size());
    for (size_t i = 0; i < sp->text.size(); i++)
        sp->pieces[i] = spm_c_bytes{sp->text[i].data(), sp->text[i].size()};
    return true;
}

int load_bytes(spm_c *sp, const std::string &bytes, char *err, size_t errlen)
{
    auto st = sp->proc.LoadFromSerializedProto(bytes);
    if (!st.ok()) {
        set_err(err, errlen, std::string("sentencepiece refused the vocabulary: ") + st.ToString());
        return -EINVAL;
    }
    if (!read_proto(bytes, sp)) {
        set_err(err, errlen, "malformed SentencePiece model");
        return -EINVAL;
    }
    return 0;
}

} // namespace

extern "C" int spm_c_model_proto(const spm_c_vocab *v, char **out, size_t *len)
{
    try {
        std::string s = build_proto(v);
        *out = static_cast<char *>(std::malloc(s.size() ? s.size() : 1));
        if (!*out)
            return -ENOMEM;
        std::memcpy(*out, s.data(), s.size());
        *len = s.size();
        return 0;
    } catch (...) {
        return -ENOMEM;
    }
}

namespace
{

// A processor from a serialized ModelProto; never throws.
int create_from_bytes(const std::string &bytes, spm_c **out, char *err, size_t errlen)
{
    spm_c *sp = nullptr;
    try {
        sp = new spm_c();
        int rc = load_bytes(sp, bytes, err, errlen);
        if (rc) {
            delete sp;
            return rc;
        }
    } catch (const std::bad_alloc &) {
        delete sp;
        set_err(err, errlen, "out of memory");
        return -ENOMEM;
    } catch (...) {
        delete sp;
        set_err(err, errlen, "sentencepiece failed to load the vocabulary");
        return -EINVAL;
    }
    *out = sp;
    return 0;
}

} // namespace

extern "C" int spm_c_create(const spm_c_vocab *v, spm_c **out, char *err, size_t errlen)
{
    *out = nullptr;
    for (size_t i = 0; i < v->n; i++)
        if (v->pieces[i].n == 0) {
            set_err(err, errlen, "token " + std::to_string(i) + " is empty");
            return -EINVAL;
        }
    std::string bytes;
    try {
        bytes = build_proto(v);
    } catch (...) {
        set_err(err, errlen, "out of memory");
        return -ENOMEM;
    }
    return create_from_bytes(bytes, out, err, errlen);
}

extern "C" int spm_c_create_from_file(const char *path, spm_c **out, char *err, size_t errlen)
{
    *out = nullptr;
    std::string bytes;
    try {
        std::ifstream f(path, std::ios::binary);
        if (!f) {
            set_err(err, errlen, std::string("cannot open ") + path + ": " + std::strerror(errno));
            return -ENOENT;
        }
        char buf[65536];
        while (f.read(buf, sizeof(buf)) || f.gcount() > 0) {
            bytes.append(buf, static_cast<size_t>(f.gcount()));
            if (bytes.size() > kMaxModelFile) {
                set_err(err, errlen, std::string(path) + " is too large for a tokenizer model");
                return -EINVAL;
            }
        }
    } catch (...) {
        set_err(err, errlen, std::string("cannot read ") + path);
        return -ENOMEM;
    }
    int rc = create_from_bytes(bytes, out, err, errlen);
    if (rc && err && errlen) {
        std::string m = std::string(path) + ": " + err;
        set_err(err, errlen, m);
    }
    return rc;
}

extern "C" void spm_c_destroy(spm_c *sp)
{
    delete sp;
}

extern "C" int spm_c_get_vocab(const spm_c *sp, spm_c_vocab *out)
{
    out->n = sp->pieces.size();
    out->pieces = sp->pieces.data();
    out->scores = sp->scores.data();
    out->types = sp->types.data();
    out->add_dummy_prefix = sp->add_dummy_prefix;
    out->remove_extra_whitespaces = 0;
    return 0;
}

extern "C" int spm_c_encode(const spm_c *sp, const char *text, size_t len, int32_t **ids, size_t *n,
                            size_t *cap)
{
    try {
        std::vector<int> v;
        auto st = sp->proc.Encode(std::string_view(text, len), &v);
        if (!st.ok())
            return -EINVAL;
        if (v.size() > *cap - *n) {
            size_t c = *cap ? *cap : 64;
            while (c - *n < v.size())
                c *= 2;
            int32_t *p = static_cast<int32_t *>(std::realloc(*ids, c * sizeof(int32_t)));
            if (!p)
                return -ENOMEM;
            *ids = p;
            *cap = c;
        }
        for (int id : v)
            (*ids)[(*n)++] = id;
        return 0;
    } catch (const std::bad_alloc &) {
        return -ENOMEM;
    } catch (...) {
        return -EINVAL;
    }
}
