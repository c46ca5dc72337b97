/* weldiag._cstats: the CPU fast path of weldiag.activations (see nbs/02_activations.ipynb, "A fused CPU pass").

   One call per recorded float32 CPU tensor and step writes a whole (float64) buffer row in place:
     [Σa, Σa², min, max, NaN count, Inf count, histogram range, near-zero count, fastai near-zero count,
      histogram (bins + 2)]
   - whole tensor, one pass: Σa and Σa² (float lanes within blocks of 1024 elements, blocks added in double),
     min / max (NaN if the tensor holds a NaN, as torch.amin / amax), exact NaN and ±Inf counts;
   - the histogram range: the stream's range (a float32 the caller owns), with `grow` doubled in place until it holds
     max(|min|, |max|) is inside it (the smallest power of two > it, exactly, from frexpf; 1 for a first step with no finite non-zero
     value; a NaN or ±Inf never grows it), as the torch path's _grow_ranges;
   - every k-th element, m of them (the documented strided sample): the two near-zero counts and the histogram,
     binned exactly like the torch path: idx = clamp(floor((v - lo) * scale), -1, bins) + 1, NaN dropped.
   Nothing is allocated; the GIL is released while it runs. The torch path (any device, dtype or layout) stays the
   reference, and tests/test_activations_props.py checks that both give the same rows. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>

#define BLOCK 1024
#define FASTAI_NEAR_ZERO 0.05f

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif

CLONES
static void whole(const float *x, int64_t n, double *row) {
    double s = 0, s2 = 0;
    float mn = INFINITY, mx = -INFINITY;
    int64_t nnan = 0, ninf = 0;
    for (int64_t i0 = 0; i0 < n; i0 += BLOCK) {
        int64_t i1 = i0 + BLOCK < n ? i0 + BLOCK : n;
        float bs = 0, bs2 = 0, bmn = INFINITY, bmx = -INFINITY;
        float bnan = 0, binf = 0;      /* exact: at most BLOCK per block */
#pragma omp simd reduction(+ : bs, bs2, bnan, binf) reduction(min : bmn) reduction(max : bmx)
        for (int64_t i = i0; i < i1; i++) {
            float v = x[i];
            bs += v;
            bs2 += v * v;
            bmn = v < bmn ? v : bmn;      /* a NaN compares false: skipped here, propagated below */
            bmx = v > bmx ? v : bmx;
            bnan += v != v;
            binf += fabsf(v) == INFINITY;
        }
        s += bs; s2 += bs2;
        mn = bmn < mn ? bmn : mn; mx = bmx > mx ? bmx : mx;
        nnan += (int64_t)bnan; ninf += (int64_t)binf;
    }
    if (nnan) mn = mx = NAN;
    row[0] = s; row[1] = s2; row[2] = mn; row[3] = mx;
    row[4] = (double)nnan; row[5] = (double)ninf;
}

static float grow_range(float range, float mn, float mx) {
    float m = fmaxf(fabsf(mn), fabsf(mx));           /* NaN if the tensor holds a NaN */
    if (isfinite(m) && m >= range) {
        int e;
        frexpf(m, &e);                                /* m = mant * 2^e, 0.5 <= mant < 1: m < 2^e */
        float p = ldexpf(1.0f, e);
        if (isfinite(p)) range = p;
    }
    return range > 0 ? range : 1.0f;
}

static void sample(const float *x, int64_t k, int64_t m, float range, int bins, int sgn, float near_zero,
                   double *row) {
    float lo = sgn ? -range : 0.0f, scale = (float)bins / (range - lo);
    double *hist = row + 9;
    int64_t nz = 0, nzf = 0;
    for (int i = 0; i < bins + 2; i++) hist[i] = 0;
    for (int64_t j = 0; j < m; j++) {
        float v = x[j * k], a = fabsf(v);
        nz += a <= near_zero;
        nzf += v <= FASTAI_NEAR_ZERO;
        float u = floorf(((sgn ? v : a) - lo) * scale);
        if (u != u) continue;                               /* NaN: in no bin, as in the torch path */
        u = u < -1.0f ? -1.0f : (u > (float)bins ? (float)bins : u);
        hist[(int)u + 1] += 1.0;
    }
    row[6] = (double)range; row[7] = (double)nz; row[8] = (double)nzf;
}

static PyObject *row(PyObject *self, PyObject *args) {
    unsigned long long px, prange, pout;
    long long n, k, m;
    int bins, sgn, grow;
    float near_zero;
    if (!PyArg_ParseTuple(args, "KLLLKipfpK", &px, &n, &k, &m, &prange, &bins, &sgn, &near_zero, &grow, &pout))
        return NULL;
    if (n <= 0 || k <= 0 || m <= 0 || (m - 1) * k >= n || bins <= 0) {
        PyErr_SetString(PyExc_ValueError, "_cstats.row: inconsistent sizes");
        return NULL;
    }
    const float *x = (const float *)(uintptr_t)px;
    double *out = (double *)(uintptr_t)pout;
    float *range = (float *)(uintptr_t)prange;
    Py_BEGIN_ALLOW_THREADS
    whole(x, n, out);
    if (grow) *range = grow_range(*range, (float)out[2], (float)out[3]);
    sample(x, k, m, *range, bins, sgn, near_zero, out);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"row", row, METH_VARARGS,
     "row(x_ptr, n, k, m, range_ptr, bins, signed, near_zero, grow, out_ptr): one ActivationStats float64 buffer row "
     "of a contiguous float32 CPU tensor, written in place (with grow, the float32 range at range_ptr too)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cstats", "The CPU fast path of weldiag.activations.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__cstats(void) { return PyModule_Create(&module); }
