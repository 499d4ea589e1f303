# Liveness-based arena layout, shared by the board (the inference arena of a model without a
# plan) and the host planner (the training arena): one mechanism, the same offsets.
#
# A buffer lives over a closed interval of steps [first, last]: the forward pass runs layer i at
# step i, the backward pass at the steps after the last layer.  Buffers whose intervals overlap
# get disjoint bytes; the others may share them.  Placement is greedy, largest first, each at the
# lowest 4-aligned offset free of every placed buffer that is alive at the same time (the
# heuristic of TFLite Micro's greedy planner): not always optimal, always valid and deterministic.


def a4(n):
    return (n + 3) & ~3


def place(items):
    """items: [(name, size, first, last)] -> ({name: offset}, arena size)."""
    order = sorted(range(len(items)), key=lambda k: (-items[k][1], items[k][2], k))
    placed = []
    offs = {}
    total = 0
    for k in order:
        name, size, first, last = items[k]
        n = a4(size)
        busy = sorted([(o, e) for o, e, f, l in placed if f <= last and first <= l])
        off = 0
        for o, e in busy:
            if off + n <= o:
                break
            if e > off:
                off = e
        placed.append((off, off + n, first, last))
        offs[name] = off
        if off + n > total:
            total = off + n
    return offs, total


def activations(inputs, sizes, in_size, until=None, inplace=()):
    """The forward activations as place() items: "input" (the sample) and "act<i>" (layer i's
    output) live from their producer's step to their last reader's; until: {producer: step}
    extends a lifetime (kept for the backward pass; -1 is the input).  inplace: layers that may
    write their output over their first input where that input dies there and has their size
    (element-wise operators: ADD); such an output becomes part of its input's buffer.  Returns
    (items, alias) with alias {layer: layer or -1 whose buffer it shares}."""
    until = until or {}
    n = len(inputs)
    last = {-1: 0}
    for i in range(n):
        last[i] = i
        for j in inputs[i]:
            if last.get(j, -1) < i:
                last[j] = i
    for j, s in until.items():
        if s > last[j]:
            last[j] = s
    alias = {}
    for i in inplace:
        j = inputs[i][0]
        if last[j] == i and (in_size if j < 0 else sizes[j]) == sizes[i]:
            alias[i] = alias.get(j, j)
    root = {}
    for i in range(-1, n):
        r = alias.get(i, i)
        f, l = (0 if i < 0 else i), last[i]
        if r in root:
            f0, l0 = root[r]
            root[r] = (min(f, f0), max(l, l0))
        else:
            root[r] = (f, l)
    items = []
    for r in sorted(root):
        f, l = root[r]
        items.append(("input" if r < 0 else "act%d" % r, in_size if r < 0 else sizes[r], f, l))
    return items, alias


def name_of(i, alias):
    """The buffer that holds layer i's output ("input" for -1)."""
    r = alias.get(i, i)
    return "input" if r < 0 else "act%d" % r
