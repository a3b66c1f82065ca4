"""Plain-loop reference computations shared by the golden tests (nested lists, no torch),
written from REFERENCE.md independently of kdbench's code."""


def naive_avg_pool(f, out_h, out_w):
    """Average pool of a B×C×H×W nested list with integer ratios (test maps are divisible)."""
    B, C, H, W = len(f), len(f[0]), len(f[0][0]), len(f[0][0][0])
    kh, kw = H // out_h, W // out_w
    return [[[[sum(f[b][c][i * kh + u][j * kw + v] for u in range(kh) for v in range(kw)) / (kh * kw)
               for j in range(out_w)] for i in range(out_h)] for c in range(C)] for b in range(B)]


def naive_common(fs, ft):
    """Both maps average-pooled to the smaller of the two spatial sizes."""
    hs, ws, ht, wt = len(fs[0][0]), len(fs[0][0][0]), len(ft[0][0]), len(ft[0][0][0])
    h, w = min(hs, ht), min(ws, wt)
    if (hs, ws) != (h, w):
        fs = naive_avg_pool(fs, h, w)
    if (ht, wt) != (h, w):
        ft = naive_avg_pool(ft, h, w)
    return fs, ft
