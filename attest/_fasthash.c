/* Dataset leaf hashes and the streaming Merkle fold, in C so that many small records do
 * not cost a Python call each. Byte for byte the same rule as attest/fasthash.py's
 * pure-Python path (FORMAT.md, "Records and the dataset Merkle root"):
 *   leaf = SHA-256(0x00 || dcbor([label, x as little-endian float32 bytes]))
 *   node = SHA-256(0x01 || left || right)
 * Both functions release the GIL, so callers spread a batch over threads. */
#define PY_SSIZE_T_CLEAN
#define OPENSSL_SUPPRESS_DEPRECATED
#include <Python.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <string.h>

/* SHA-256(a || b): OpenSSL's own dispatch picks the CPU's SHA extensions where present. */
static void hash2(unsigned char out[32], const unsigned char *a, size_t alen,
                          const unsigned char *b, size_t blen)
{
    SHA256_CTX ctx;   /* not SHA256(): OpenSSL 3 fetches an EVP method per call */
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, a, alen);
    SHA256_Update(&ctx, b, blen);
    SHA256_Final(out, &ctx);
}


/* Shortest-form CBOR head (RFC 8949 section 4.2.1); returns its length. */
static size_t cbor_head(unsigned char *out, unsigned major, uint64_t value)
{
    if (value < 24) { out[0] = (unsigned char)(major << 5 | value); return 1; }
    int size = value < 0x100ULL ? 1 : value < 0x10000ULL ? 2 : value < 0x100000000ULL ? 4 : 8;
    out[0] = (unsigned char)(major << 5 | (size == 1 ? 24 : size == 2 ? 25 : size == 4 ? 26 : 27));
    for (int i = 0; i < size; i++)
        out[1 + i] = (unsigned char)(value >> (8 * (size - 1 - i)));
    return 1 + (size_t)size;
}

/* leaf_hashes(features, labels, out, feature_bytes, start, stop): for each record i in
 * [start, stop), out[32 i:32 i + 32] = its leaf hash; features is n * feature_bytes bytes
 * (little-endian float32), labels n native int64 values. */
static PyObject *leaf_hashes(PyObject *self, PyObject *args)
{
    Py_buffer x, labels, out;
    Py_ssize_t fbytes, start, stop;
    if (!PyArg_ParseTuple(args, "y*y*w*nnn", &x, &labels, &out, &fbytes, &start, &stop))
        return NULL;
    Py_ssize_t n = labels.len / (Py_ssize_t)sizeof(int64_t);
    if (fbytes < 0 || start < 0 || stop < start || stop > n || x.len != n * fbytes
        || out.len != n * 32) {
        PyBuffer_Release(&x); PyBuffer_Release(&labels); PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "leaf_hashes: buffer sizes do not match");
        return NULL;
    }
    const unsigned char *xb = x.buf;
    const int64_t *lb = labels.buf;
    unsigned char *ob = out.buf;
    Py_BEGIN_ALLOW_THREADS
    unsigned char prefix[32];
    unsigned char tail[10];
    size_t tail_len = cbor_head(tail, 2, (uint64_t)fbytes);
    int64_t last = -1;
    size_t plen = 0;
    for (Py_ssize_t i = start; i < stop; i++) {
        int64_t label = lb[i];
        if (i == start || label != last) {
            prefix[0] = 0x00;
            prefix[1] = 0x82;
            size_t h = label >= 0 ? cbor_head(prefix + 2, 0, (uint64_t)label)
                                  : cbor_head(prefix + 2, 1, (uint64_t)(-1 - label));
            memcpy(prefix + 2 + h, tail, tail_len);
            plen = 2 + h + tail_len;
            last = label;
        }
        hash2(ob + 32 * i, prefix, plen, xb + i * fbytes, (size_t)fbytes);
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&x); PyBuffer_Release(&labels); PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

/* fold(stack, size, leaves) -> (stack, size): append leaf hashes to a streaming RFC 9162
 * tree whose state is the roots of its perfect subtrees (one per set bit of size),
 * concatenated, largest first. */
static PyObject *fold(PyObject *self, PyObject *args)
{
    Py_buffer st, lv;
    unsigned long long size;
    if (!PyArg_ParseTuple(args, "y*Ky*", &st, &size, &lv))
        return NULL;
    int depth = __builtin_popcountll(size);
    if (st.len != 32 * depth || lv.len % 32) {
        PyBuffer_Release(&st); PyBuffer_Release(&lv);
        PyErr_SetString(PyExc_ValueError, "fold: stack or leaves have the wrong length");
        return NULL;
    }
    unsigned char stack[65 * 32];
    memcpy(stack, st.buf, (size_t)st.len);
    const unsigned char *leaves = lv.buf;
    Py_ssize_t count = lv.len / 32;
    Py_BEGIN_ALLOW_THREADS
    unsigned char node[65];
    node[0] = 0x01;
    for (Py_ssize_t i = 0; i < count; i++) {
        unsigned char h[32];
        memcpy(h, leaves + 32 * i, 32);
        unsigned long long m = size;
        while (m & 1) {
            depth--;
            memcpy(node + 1, stack + 32 * depth, 32);
            memcpy(node + 33, h, 32);
            hash2(h, node, 1, node + 1, 64);
            m >>= 1;
        }
        memcpy(stack + 32 * depth, h, 32);
        depth++;
        size++;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&st); PyBuffer_Release(&lv);
    return Py_BuildValue("(y#K)", (const char *)stack, (Py_ssize_t)(32 * depth), size);
}

static PyMethodDef methods[] = {
    {"leaf_hashes", leaf_hashes, METH_VARARGS, "Leaf hashes of records [start, stop)."},
    {"fold", fold, METH_VARARGS, "Append leaf hashes to a streaming Merkle tree."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fasthash", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fasthash(void) { return PyModule_Create(&module); }
