"""A CPU model of the narrow FP8 kernel's index maps (csrc/mla_decode_fp8_narrow.cuh), for both shapes (n16 with one
consumer warpgroup, n32 with two): every thread's shared-memory reads and writes are replayed from the same formulas
as the kernel's, and the contractions they imply are checked against wgmma's fragment rules:

- Q as the B operand (load_q): every (query row, k column) of the operand is written once, and holds the Q value the
  K side pairs it with;
- K as the A operand (scores): each lane's register for (token row, k-step, k column) holds the latent byte of that
  token whose dim the operand's column holds;
- V as the A operand (values) and P' as the B operand (stmatrix .trans of the S^T accumulator): each (output value,
  token) pair of V^T meets P' at that token, and store_item writes each output value once from the right tile.

The swizzled addresses are decoded back to (row, 16-byte unit): TMA's 128B swizzle XORs the unit with row % 8."""
import itertools

import pytest

SHAPES = [(16, 1), (32, 2)]  # (rows, consumer warpgroups): NarrowShape16, NarrowShape32


def swizzle(row, unit):
    return row * 128 + ((unit ^ (row & 7)) << 4)


def unswizzle(offset):
    row, rest = divmod(offset, 128)
    return row, (rest >> 4) ^ (row & 7), rest & 15


def lanes(warpgroups):
    for wg, w, lane in itertools.product(range(warpgroups), range(4), range(32)):
        yield wg, w, lane // 4, lane % 4, lane


def contraction_col(step, q, e):
    return 16 * step + 2 * q + 8 * e


def operand_offset(rows, n, col):
    return (col // 64) * rows * 128 + swizzle(n, (col % 64) // 8) + (col % 8) * 2


def q_operand(rows, warpgroups, writers=None):
    """load_q: byte offset in the latent / rope operand -> the Q dim (latent 0..511, rope 512..575) written there."""
    threads_per_row = 128 // rows
    latent_units = 64 // warpgroups // threads_per_row
    written = {}
    for wg in range(warpgroups):
        rope_units = 8 // threads_per_row // warpgroups
        for tid in range(128):
            n, kq = divmod(tid, threads_per_row)
            for i in range(latent_units):
                unit = wg * 64 // warpgroups + kq + threads_per_row * i
                g, qq, s0 = unit // 16, (unit % 16) // 4, 2 * (unit % 4)
                for j in range(4):
                    off = operand_offset(rows, n, contraction_col(8 * g + s0 + j // 2, qq, j % 2))
                    for b in range(2):  # the two halves of the 32-bit store: dims 8 unit + 2j, + 1
                        key = ("latent", off + 2 * b)
                        assert key not in written
                        written[key] = (n, 8 * unit + 2 * j + b)
                        if writers is not None:
                            writers[key] = wg
            for i in range(rope_units):
                unit = warpgroups * (kq + threads_per_row * i) + wg  # rope_unit: with two, units of parity wg
                qq, s0 = unit // 2, 2 * (unit % 2)
                for j in range(4):
                    off = operand_offset(rows, n, contraction_col(s0 + j // 2, qq, j % 2))
                    for b in range(2):
                        key = ("rope", off + 2 * b)
                        assert key not in written
                        written[key] = (n, 512 + 8 * unit + 2 * j + b)
                        if writers is not None:
                            writers[key] = wg
    return written


@pytest.mark.parametrize("rows,warpgroups", SHAPES)
def test_q_operand_is_written_once_per_element(rows, warpgroups):
    written = q_operand(rows, warpgroups)
    assert len(written) == rows * 576
    assert sorted(written.values()) == sorted((n, d) for n in range(rows) for d in range(576))


@pytest.mark.parametrize("rows,warpgroups", SHAPES)
def test_k_fragments_meet_the_q_values_of_their_columns(rows, warpgroups):
    """scores: a[4 step' + half] (+2) of k-step 8g + 4h + s holds token t's bytes 0, 1 (2, 3) of word s of its 16-byte
    load; wgmma pairs A(row, k) with B(n, k) of the same k-step."""
    writers = {}
    written = q_operand(rows, warpgroups, writers)
    groups = 4 // warpgroups
    for wg, w, r, q, _ in lanes(warpgroups):
        t0 = 16 * w + r
        for gi in range(groups + 1):
            for h, half in itertools.product(range(2), range(2)):
                if gi == groups and warpgroups == 2 and h != wg:
                    continue  # with two warpgroups, each takes rope k-steps 2 wg, 2 wg + 1 (h = wg)
                t = t0 + 8 * half
                if gi < groups:
                    g = groups * wg + gi
                    row, unit, _ = unswizzle(swizzle(t, 2 * q + h))
                    assert row == t
                    for s, byte in itertools.product(range(4), range(4)):
                        dim = 128 * g + 16 * unit + 4 * s + byte     # the latent byte's dim
                        step, e, lo = 8 * g + 4 * h + s, byte // 2, byte % 2
                        k = 2 * q + 8 * e + lo                     # a0/a1 (e 0) or a2/a3 (e 1), low or high half
                        for n in range(rows):
                            key = ("latent", operand_offset(rows, n, 16 * step + k))
                            assert written[key] == (n, dim) and writers[key] == wg  # its own barrier orders it
                else:
                    row, unit, _ = unswizzle(swizzle(t, 2 * q + h))
                    for s, word, lo in itertools.product(range(2), range(2), range(2)):
                        dim = 512 + 8 * unit + 4 * s + 2 * word + lo
                        step, k = 2 * h + s, 2 * q + 8 * word + lo
                        for n in range(rows):
                            key = ("rope", operand_offset(rows, n, 16 * step + k))
                            assert written[key] == (n, dim) and writers[key] == wg


def acc_entries(rows):
    """An m64 x rows accumulator: register i -> (row offset 0 / 8, column 8 (i / 4) + 2q + i % 2) for lane q."""
    return [(8 * ((i // 2) % 2), 8 * (i // 4), i % 2) for i in range(rows // 2)]


@pytest.mark.parametrize("rows,warpgroups", SHAPES)
def test_p_is_written_once_where_the_v_side_reads_each_token(rows, warpgroups):
    """stmatrix .trans: warpgroup h owns columns 16h .. 16h + 15 (half16 = h) and writes them for every group; lane
    (matrix mi, row) addresses P' row n = 16 half16 + 8 (mi / 2) + row, tokens 16w + 8 (mi & 1) ..; register m of
    every lane holds its accumulator values 8 half16 + 2m, + 1 (its own entries 2m, 2m + 1)."""
    placed = {}
    assert rows // 16 == warpgroups
    for wg, w, r, q, lane in lanes(warpgroups):
        mi = lane // 8
        for half16 in (wg,):
            n = 16 * half16 + 8 * (mi // 2) + lane % 8
            offset = swizzle(n, 2 * w + (mi & 1))
            # The 8 tokens stored at that row come from the 8 lanes of matrix mi's fragment (thread r of the
            # matrix holds its row r): for stmatrix .trans, stored row n's element j is the fragment's (j, n).
            for j in range(8):
                token = 16 * w + 8 * (mi & 1) + j
                placed.setdefault((n, token), []).append(offset + 2 * j)
    assert sorted(placed) == sorted(itertools.product(range(rows), range(64)))
    for (n, token), offsets in placed.items():
        assert offsets == [operand_offset(rows, n, token)]  # the B operand's (n, k = token), one chunk of 64 tokens
    # The registers: m = 0..3 hold (t0 | t1 block) x (columns 8 (2 half16 + m / 2) ..), from accumulator entries
    # 8 half16 + 2m, + 1, which acc_entries places at row half m % 2 and column group 2 half16 + m / 2.
    entries = acc_entries(rows)
    for half16, m in itertools.product(range(rows // 16), range(4)):
        for e in range(2):
            row_half, col_group, col_lo = entries[8 * half16 + 2 * m + e]
            assert (row_half, col_group, col_lo) == (8 * (m % 2), 8 * (2 * half16 + m // 2), e)


@pytest.mark.parametrize("rows,warpgroups", SHAPES)
def test_v_fragments_and_the_stores_cover_every_output_value_once(rows, warpgroups):
    """values: tile 2b + j (j = 0, 1) row 16w + r + 8i is output value 128 b + 4 (8w + r) + 2j + i; its k columns
    2q + {0, 1} (+8) are tokens 16s + 2q + 8 pair + {0, 1}, the bytes permuted out of two 4-byte loads.
    store_item writes value 128 b + 4 (8w + r) + {0..3} from tiles 2b, 2b + 1, rows i = 0, 1."""
    groups = 4 // warpgroups
    seen_v, stored = {}, set()
    for wg, w, r, q, _ in lanes(warpgroups):
        unit_base, byte = 2 * w + r // 4, 4 * (r % 4)
        for bi, s, pair, tok in itertools.product(range(groups), range(4), range(2), range(2)):
            b = groups * wg + bi
            t = 16 * s + 2 * q + 8 * pair + tok
            row, unit, within = unswizzle(swizzle(t, unit_base) + byte)
            assert row == t
            for v in range(4):  # byte v of the word: value 4 (8w + r) + v = tile 2b + v // 2, row i = v % 2
                dim = 128 * b + 16 * unit + within + v
                tile, i = 2 * b + v // 2, v % 2
                m_row = 16 * w + r + 8 * i
                k = 2 * q + 8 * pair + tok  # a0/a1: k 2q + tok; a2/a3: 2q + 8 + tok (register order pair, i)
                assert dim == 128 * (tile // 2) + 4 * (8 * w + r) + 2 * (tile % 2) + i
                key = (tile, m_row, 16 * s + k)
                assert key not in seen_v
                seen_v[key] = (dim, t)
        for c, bi, v in itertools.product(range(rows // 4), range(groups), range(4)):
            n = 8 * (c // 2) + 2 * q + c % 2  # store_item's column c
            key = (128 * (groups * wg + bi) + 4 * (8 * w + r) + v, n)
            assert key not in stored
            stored.add(key)
    # V^T: every (output value, token) exactly once, and the k column is the token (P' is in token order).
    assert len(seen_v) == 512 * 64
    assert sorted(seen_v.values()) == sorted(itertools.product(range(512), range(64)))
    assert all(key[2] == token for key, (_, token) in seen_v.items())
    assert stored == set(itertools.product(range(512), range(rows)))


@pytest.mark.parametrize("rows,warpgroups", SHAPES)
def test_each_column_is_owned_by_one_warpgroup(rows, warpgroups):
    """consume: warpgroup h runs the softmax of its threads' columns col(4h + c) and accumulator entries 8h + i
    (i, c < 8, 4: acc_col(i) = 2 (i / 4) + i % 2 is the own column): columns 16h .. 16h + 15, each column's 8 lanes q
    and 4 warps together holding its 64 tokens once."""
    def col(c, q):
        return 8 * (c // 2) + 2 * q + c % 2

    owner = {}
    for wg, w, r, q, _ in lanes(warpgroups):
        for i in range(8):
            c = 4 * wg + 2 * (i // 4) + i % 2
            full = 8 * wg + i  # the accumulator entry: column 8 (full / 4) + 2q + full % 2, token half (full / 2) % 2
            assert col(c, q) == 8 * (full // 4) + 2 * q + full % 2
            token = 16 * w + r + 8 * ((full // 2) % 2)
            key = (col(c, q), token)
            assert key not in owner
            owner[key] = wg
    assert sorted(owner) == sorted(itertools.product(range(rows), range(64)))
    assert all(16 * wg <= n < 16 * wg + 16 for (n, _), wg in owner.items())
