/* weldiag._ceval: the CPU fast path of weldiag.metrics.coco (see nbs/06b_eval_coco.ipynb, "A compiled matching kernel").

   match(): pycocotools' evaluateImg greedy matching for every (image, class) group, area range and IoU threshold:
   per group, detections in score order (already sorted by the caller), for each area range and threshold the
   not-yet-taken GT of highest IoU >= the threshold (the last of equal IoUs; regular GTs first, ignored ones only
   when no regular one qualifies; crowd GTs are never used up). IoU is pycocotools' bbIou op for op (xywh, no +1,
   crowd: intersection / detection area), built with -ffp-contract=off so it is bit-identical to the torch path.
   Writes matched / matched-an-ignored-GT flags (N, A, T) and the matched GT (N, T) at area range 0: og[its position].

   Detections outside an area range and not matched there are ignored in it (as pycocotools' dtIgnore).

   accumulate(): pycocotools' accumulate for every class, area range and max-dets from the matched / ignored flags
   (N, A, T) and the detections' score order (class buckets are made here, stably: class, score, input order): precision at the recall points and the final recall, written into the (T, R, K, A, M) and
   (T, K, A, M) arrays; the same IEEE operations in the same order as the torch path (pr_at_recall).
   score_order(): the stable descending order of the scores (torch.sort(-s, stable=True)) by a radix sort.
   group_order(): the detections in (image, class) group order, score order inside (a stable counting sort of the
   score order), the first max_det of each group and their rank in it.
   best_gt(): for TIDE, each detection's largest IoU with a GT of its image of its own class and of another class,
   and that GT (the lowest index on ties; -1 / -1 when there is none): all pairs of an image without materialising them.
   Nothing is allocated but per-call scratch; the GIL is released while it runs. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <float.h>

static inline double bbiou(const double *b, const double *c, double da, int crowd) {
    /* pycocotools' bbIou of xywh boxes b (detection, area da) and c (GT), op for op as coco_iou */
    double x2 = b[2] + b[0] < c[2] + c[0] ? b[2] + b[0] : c[2] + c[0];
    double y2 = b[3] + b[1] < c[3] + c[1] ? b[3] + b[1] : c[3] + c[1];
    double w = x2 - (b[0] > c[0] ? b[0] : c[0]);
    double h = y2 - (b[1] > c[1] ? b[1] : c[1]);
    double i = w * h, ga = c[2] * c[3];
    double u = crowd ? da : da + ga - i;
    return (w > 0 && h > 0) ? i / u : 0.0;
}

static void match_group(const double *db, int64_t nd, const double *gb, int64_t ng, const uint8_t *crowd,
                        const uint8_t *ign, int64_t Ng, int64_t A, const double *thr, int64_t T,
                        double *iou, double *rmax, uint8_t *taken, uint8_t *mt, uint8_t *dig, int64_t *gt, const int64_t *og) {
    double tmin = thr[0];
    int sorted = 1;                                                     /* ascending thresholds: stop at the row max */
    for (int64_t t = 1; t < T; t++) { tmin = thr[t] < tmin ? thr[t] : tmin; sorted &= thr[t] >= thr[t - 1]; }
    for (int64_t d = 0; d < nd; d++) {
        const double *b = db + 4 * d;
        double da = b[2] * b[3], mx = -1.0;
        for (int64_t g = 0; g < ng; g++) {
            double v = bbiou(b, gb + 4 * g, da, crowd[g]);
            iou[d * ng + g] = v; mx = v > mx ? v : mx;
        }
        rmax[d] = mx;                                                   /* below tmin: matches no GT at any threshold */
    }
    for (int64_t a = 0; a < A; a++) {
        const uint8_t *ig = ign + a * Ng;
        memset(taken, 0, (size_t)(T * ng));
        for (int64_t d = 0; d < nd; d++) {
            if (rmax[d] < tmin) continue;
            const double *row = iou + d * ng;
            for (int64_t t = 0; t < T; t++) {
                if (rmax[d] < thr[t]) { if (sorted) break; continue; }  /* no GT reaches this threshold (nor higher ones) */
                uint8_t *tk = taken + t * ng;
                int64_t m = -1;
                for (int pass = 0; pass < 2 && m < 0; pass++) {          /* regular GTs first, then ignored ones */
                    double best = thr[t];
                    for (int64_t g = 0; g < ng; g++) {
                        if (ig[g] != pass || (tk[g] && !crowd[g]) || row[g] < best) continue;
                        best = row[g]; m = g;
                    }
                }
                if (m < 0) continue;
                tk[m] = 1;
                mt[(d * A + a) * T + t] = 1;
                dig[(d * A + a) * T + t] = ig[m];
                if (a == 0) gt[d * T + t] = og[m];                         /* the GT's index into targets */
            }
        }
    }
}

static PyObject *match(PyObject *self, PyObject *args) {
    unsigned long long p_db, p_gb, p_crowd, p_ign, p_thr, p_sd, p_cd, p_sg, p_cg, p_mt, p_dig, p_gt, p_lo, p_hi, p_og;
    Py_ssize_t Ng, A, T, n_groups, N;
    if (!PyArg_ParseTuple(args, "KKKKnnKnKKKKnnKKKKKK", &p_db, &p_gb, &p_crowd, &p_ign, &Ng, &A, &p_thr, &T,
                          &p_sd, &p_cd, &p_sg, &p_cg, &n_groups, &N, &p_mt, &p_dig, &p_gt, &p_lo, &p_hi, &p_og)) return NULL;
    const int64_t *sd = (const int64_t *)p_sd, *cd = (const int64_t *)p_cd, *sg = (const int64_t *)p_sg,
                  *cg = (const int64_t *)p_cg;
    int64_t dmax = 0, gmax = 0;
    for (Py_ssize_t k = 0; k < n_groups; k++) { if (cd[k] > dmax) dmax = cd[k]; if (cg[k] > gmax) gmax = cg[k]; }
    double *iou = malloc(sizeof(double) * (size_t)(dmax * gmax + 1));
    uint8_t *taken = malloc((size_t)(T * gmax + 1));
    uint8_t *ign_g = malloc((size_t)(A * gmax + 1));
    double *rmax = malloc(sizeof(double) * (size_t)(dmax + 1));
    if (!iou || !taken || !ign_g || !rmax) { free(iou); free(taken); free(ign_g); free(rmax); return PyErr_NoMemory(); }
    const double *lo = (const double *)p_lo, *hi = (const double *)p_hi;
    const int64_t *og = (const int64_t *)p_og;
    const uint8_t *ign = (const uint8_t *)p_ign, *crowd = (const uint8_t *)p_crowd;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t k = 0; k < n_groups; k++) {
        for (int64_t a = 0; a < A; a++) memcpy(ign_g + a * cg[k], ign + a * Ng + sg[k], (size_t)cg[k]);
        match_group((const double *)p_db + 4 * sd[k], cd[k], (const double *)p_gb + 4 * sg[k], cg[k],
                    crowd + sg[k], ign_g, cg[k], A, (const double *)p_thr, T, iou, rmax, taken,
                    (uint8_t *)p_mt + sd[k] * A * T, (uint8_t *)p_dig + sd[k] * A * T, (int64_t *)p_gt + sd[k] * T, og + sg[k]);
    }
    uint8_t *mt = (uint8_t *)p_mt, *dig = (uint8_t *)p_dig;
    for (Py_ssize_t d = 0; d < N; d++) {                                /* unmatched and outside the area range */
        const double *b = (const double *)p_db + 4 * d;
        double da = b[2] * b[3];
        for (Py_ssize_t a = 0; a < A; a++)
            if (da < lo[a] || da > hi[a])
                for (Py_ssize_t t = 0; t < T; t++) dig[(d * A + a) * T + t] |= !mt[(d * A + a) * T + t];
    }
    Py_END_ALLOW_THREADS
    free(iou); free(taken); free(ign_g); free(rmax);
    Py_RETURN_NONE;
}

static PyObject *accumulate(PyObject *self, PyObject *args) {
    unsigned long long p_mt, p_ig, p_rank, p_so, p_lab, p_npig, p_md, p_rec, p_prec, p_recall;
    Py_ssize_t N, A, T, K, M, R;
    if (!PyArg_ParseTuple(args, "KKKKKnnnnKKnKnKK", &p_mt, &p_ig, &p_rank, &p_so, &p_lab, &N, &A, &T, &K, &p_npig,
                          &p_md, &M, &p_rec, &R, &p_prec, &p_recall)) return NULL;
    const uint8_t *mt = (const uint8_t *)p_mt, *ig = (const uint8_t *)p_ig;
    const int64_t *rank = (const int64_t *)p_rank, *so = (const int64_t *)p_so, *lab = (const int64_t *)p_lab,
                  *npig = (const int64_t *)p_npig, *mdets = (const int64_t *)p_md;
    const double *rec = (const double *)p_rec;
    double *prec = (double *)p_prec, *recall = (double *)p_recall;
    int64_t *start = calloc((size_t)(K + 2), sizeof(int64_t)), *order = malloc(sizeof(int64_t) * (size_t)(N + 1));
    double *tpc = malloc(sizeof(double) * (size_t)(M * A * T + 1)), *fpc = malloc(sizeof(double) * (size_t)(M * A * T + 1));
    int64_t *ntp = malloc(sizeof(int64_t) * (size_t)(M * A * T + 1));
    double *fpa = malloc(sizeof(double) * (size_t)(M * A + 1));
    int bad = 0;
    if (!start || !order || !tpc || !fpc || !ntp || !fpa) {
        free(start); free(order); free(tpc); free(fpc); free(ntp); free(fpa); return PyErr_NoMemory(); }
    const double eps = DBL_EPSILON;                                     /* np.spacing(1) */
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < N; i++) start[lab[i] + 1]++;             /* stable bucket sort of the score order by class */
    for (Py_ssize_t k = 0; k < K; k++) start[k + 1] += start[k];
    {
        int64_t *fill = malloc(sizeof(int64_t) * (size_t)(K + 1));
        for (Py_ssize_t k = 0; k <= K; k++) fill[k] = start[k];
        for (Py_ssize_t j = 0; j < N; j++) order[fill[lab[so[j]]]++] = so[j];
        free(fill);
    }
    /* One pass per class over its detections in accumulate order updates every (max-dets, area, IoU) curve. Only the
       precision at true positives is kept: at a false positive it can only drop, so the envelope (suffix max) at any
       recall point is the max over the true positives from there on; the recall point's first index is the first
       true-positive count c with c / npig >= the point (the same division as the torch path's tp / npig). A detection
       that is a plain false positive at every threshold of an area range (most of them) only adds to that range's
       count `fpa`: fpc + fpa are whole numbers, their sum exact, so the precision is the torch path's fp / (fp + tp + eps). */
    const Py_ssize_t AT = A * T, MAT = M * AT;
    for (Py_ssize_t k = 0; k < K && !bad; k++) {
        int64_t cap = 1;
        for (Py_ssize_t a = 0; a < A; a++) cap = npig[a * K + k] > cap ? npig[a * K + k] : cap;
        double *buf = malloc(sizeof(double) * (size_t)(MAT * cap));
        if (!buf) { bad = 2; break; }
        for (Py_ssize_t x = 0; x < MAT; x++) { tpc[x] = 0; fpc[x] = 0; ntp[x] = 0; }
        for (Py_ssize_t x = 0; x < M * A; x++) fpa[x] = 0;
        for (int64_t j = start[k]; j < start[k + 1]; j++) {
            int64_t o = order[j], r = rank[o];
            for (Py_ssize_t a = 0; a < A; a++) {
                const uint8_t *m = mt + o * AT + a * T, *g = ig + o * AT + a * T;
                uint8_t any_m = 0, any_g = 0, all_g = 1;
                for (Py_ssize_t t = 0; t < T; t++) { any_m |= m[t]; any_g |= g[t]; all_g &= g[t]; }
                if (all_g) continue;                                    /* ignored at every threshold */
                for (Py_ssize_t mi = 0; mi < M; mi++) {
                    if (r >= mdets[mi]) continue;
                    if (!any_m && !any_g) { fpa[mi * A + a] += 1; continue; }
                    for (Py_ssize_t t = 0; t < T; t++) {
                        Py_ssize_t x = mi * AT + a * T + t;
                        if (g[t]) continue;
                        if (m[t]) {
                            tpc[x] += 1;
                            if (ntp[x] >= cap) { bad = 1; continue; }
                            buf[x * cap + ntp[x]++] = tpc[x] / ((fpc[x] + fpa[mi * A + a]) + tpc[x] + eps);
                        } else fpc[x] += 1;
                    }
                }
            }
        }
        for (Py_ssize_t mi = 0; mi < M; mi++) for (Py_ssize_t a = 0; a < A; a++) {
            double np_ = (double)npig[a * K + k];
            for (Py_ssize_t t = 0; t < T; t++) {
                Py_ssize_t x = mi * AT + a * T + t, n = ntp[x];
                fpc[x] += fpa[mi * A + a];
                if (np_ == 0) continue;
                double *p = buf + x * cap;
                int nonempty = tpc[x] + fpc[x] > 0;
                for (Py_ssize_t i = n - 1; i > 0; i--) if (p[i] > p[i - 1]) p[i - 1] = p[i];   /* envelope */
                Py_ssize_t c = 0;
                for (Py_ssize_t q = 0; q < R; q++) {
                    while (c <= n && (double)c / np_ < rec[q]) c++;
                    double v = 0.0;
                    if (c == 0) v = nonempty && n ? p[0] : 0.0;
                    else if (c <= n) v = p[c - 1];
                    prec[(((t * R + q) * K + k) * A + a) * M + mi] = v;
                }
                recall[((t * K + k) * A + a) * M + mi] = nonempty ? tpc[x] / np_ : 0.0;
            }
        }
        free(buf);
    }
    Py_END_ALLOW_THREADS
    free(start); free(order); free(tpc); free(fpc); free(ntp); free(fpa);
    if (bad == 2) return PyErr_NoMemory();
    if (bad) { PyErr_SetString(PyExc_RuntimeError, "more true positives than ground truth: inconsistent matching input"); return NULL; }
    Py_RETURN_NONE;
}

static PyObject *score_order(PyObject *self, PyObject *args) {
    /* The stable descending order of N float64 scores (no NaN): torch.sort(-s, stable=True).indices, by an LSD radix
       sort of the scores' bits (-0.0 counted as 0.0, as the comparison sort does), 16 bits a pass, passes where every
       key has the same digit skipped. */
    unsigned long long p_s, p_out;
    Py_ssize_t N;
    if (!PyArg_ParseTuple(args, "KnK", &p_s, &N, &p_out)) return NULL;
    const double *s = (const double *)p_s;
    int64_t *out = (int64_t *)p_out;
    uint64_t *key = malloc(sizeof(uint64_t) * (size_t)(N + 1)), *key2 = malloc(sizeof(uint64_t) * (size_t)(N + 1));
    int64_t *idx2 = malloc(sizeof(int64_t) * (size_t)(N + 1));
    size_t *cnt = malloc(sizeof(size_t) * 65536);
    if (!key || !key2 || !idx2 || !cnt) { free(key); free(key2); free(idx2); free(cnt); return PyErr_NoMemory(); }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < N; i++) {
        double v = -s[i];
        if (v == 0.0) v = 0.0;                                          /* -0.0 and 0.0 tie */
        uint64_t u; memcpy(&u, &v, sizeof u);
        key[i] = (u >> 63) ? ~u : (u | 0x8000000000000000ULL);          /* ascending bits = ascending -s */
        out[i] = i;
    }
    uint64_t *k1 = key, *k2 = key2; int64_t *i1 = out, *i2 = idx2;
    for (int pass = 0; pass < 4; pass++) {
        int sh = 16 * pass;
        memset(cnt, 0, sizeof(size_t) * 65536);
        for (Py_ssize_t i = 0; i < N; i++) cnt[(k1[i] >> sh) & 0xFFFF]++;
        if (N == 0 || cnt[(k1[0] >> sh) & 0xFFFF] == (size_t)N) continue;   /* one digit for all: nothing to move */
        size_t sum = 0;
        for (int d = 0; d < 65536; d++) { size_t c = cnt[d]; cnt[d] = sum; sum += c; }
        for (Py_ssize_t i = 0; i < N; i++) { size_t at = cnt[(k1[i] >> sh) & 0xFFFF]++; k2[at] = k1[i]; i2[at] = i1[i]; }
        uint64_t *tk = k1; k1 = k2; k2 = tk; int64_t *ti = i1; i1 = i2; i2 = ti;
    }
    if (i1 != out) memcpy(out, i1, sizeof(int64_t) * (size_t)N);
    Py_END_ALLOW_THREADS
    free(key); free(key2); free(idx2); free(cnt);
    Py_RETURN_NONE;
}

static PyObject *group_order(PyObject *self, PyObject *args) {
    unsigned long long p_so, p_key, p_keep, p_rank;
    Py_ssize_t N, n_keys, max_det;
    if (!PyArg_ParseTuple(args, "KKnnnKK", &p_so, &p_key, &N, &n_keys, &max_det, &p_keep, &p_rank)) return NULL;
    const int64_t *so = (const int64_t *)p_so, *key = (const int64_t *)p_key;
    int64_t *keep = (int64_t *)p_keep, *rank = (int64_t *)p_rank;
    int64_t *fill = calloc((size_t)(n_keys + 1), sizeof(int64_t)), *tmp = malloc(sizeof(int64_t) * (size_t)(N + 1));
    if (!fill || !tmp) { free(fill); free(tmp); return PyErr_NoMemory(); }
    Py_ssize_t n = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < N; i++) fill[key[i] + 1]++;             /* stable counting sort of the score order by key */
    for (Py_ssize_t k = 0; k < n_keys; k++) fill[k + 1] += fill[k];
    for (Py_ssize_t j = 0; j < N; j++) tmp[fill[key[so[j]]]++] = so[j];
    int64_t cur = -1, r = 0;                                            /* rank inside the group; keep the first max_det */
    for (Py_ssize_t j = 0; j < N; j++) {
        int64_t k = key[tmp[j]];
        r = k == cur ? r + 1 : 0; cur = k;
        if (r < max_det) { keep[n] = tmp[j]; rank[n] = r; n++; }
    }
    Py_END_ALLOW_THREADS
    free(fill); free(tmp);
    return PyLong_FromSsize_t(n);
}

static PyObject *best_gt(PyObject *self, PyObject *args) {
    unsigned long long p_db, p_dimg, p_dlab, p_gb, p_gidx, p_glab, p_gcrowd, p_gstart, p_s, p_gs, p_o, p_go;
    Py_ssize_t F;
    if (!PyArg_ParseTuple(args, "KKKnKKKKKKKKK", &p_db, &p_dimg, &p_dlab, &F, &p_gb, &p_gidx, &p_glab, &p_gcrowd, &p_gstart,
                          &p_s, &p_gs, &p_o, &p_go)) return NULL;
    const double *db = (const double *)p_db, *gb = (const double *)p_gb;
    const int64_t *dimg = (const int64_t *)p_dimg, *dlab = (const int64_t *)p_dlab, *gidx = (const int64_t *)p_gidx,
                  *glab = (const int64_t *)p_glab, *gstart = (const int64_t *)p_gstart;
    const uint8_t *gcrowd = (const uint8_t *)p_gcrowd;
    double *s = (double *)p_s, *o = (double *)p_o;
    int64_t *gs = (int64_t *)p_gs, *go = (int64_t *)p_go;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t f = 0; f < F; f++) {
        const double *b = db + 4 * f;
        double da = b[2] * b[3], bs = -1.0, bo = -1.0;
        int64_t as = -1, ao = -1;
        for (int64_t g = gstart[dimg[f]]; g < gstart[dimg[f] + 1]; g++) {  /* GTs of the image, index order */
            double v = bbiou(b, gb + 4 * g, da, gcrowd[g]);
            if (glab[g] == dlab[f]) { if (v > bs) { bs = v; as = gidx[g]; } }   /* ties: the lowest GT index */
            else if (v > bo) { bo = v; ao = gidx[g]; }
        }
        s[f] = bs; gs[f] = as; o[f] = bo; go[f] = ao;
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"score_order", score_order, METH_VARARGS, "score_order(scores, N, out): the stable descending order of float64 scores "
     "(torch.sort(-scores, stable=True).indices) by a radix sort (pointers)"},
    {"best_gt", best_gt, METH_VARARGS, "best_gt(dbox, dimg, dlab, F, gbox, gidx, glab, gcrowd, gstart, s, gs, o, go): per "
     "detection the best IoU with a GT of its image of its own class and of another class, and that GT (pointers)"},
    {"group_order", group_order, METH_VARARGS, "group_order(score_order, key, N, n_keys, max_det, keep, rank) -> kept: the "
     "detections by (image, class) key, score order inside, the first max_det of each, and their rank (pointers)"},
    {"match", match, METH_VARARGS, "match(dbox, gbox, crowd, ign, Ng, A, thr, T, sd, cd, sg, cg, n_groups, N, matched, dig, gt, area_lo, area_hi, og): "
     "greedy COCO matching of every (image, class) group (pointers to contiguous CPU arrays)"},
    {"accumulate", accumulate, METH_VARARGS, "accumulate(matched, ignored, rank, score_order, labels, N, A, T, K, npig, max_dets, M, rec_thrs, R, "
     "precision, recall): pycocotools' accumulate over every class, area range and max-dets (pointers)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ceval", "weldiag's compiled COCO matching and accumulation", -1, methods};

PyMODINIT_FUNC PyInit__ceval(void) { return PyModule_Create(&module); }
