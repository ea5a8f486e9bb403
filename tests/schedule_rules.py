"""The schedule rules of hf_flashmla/schedule.py restated with Python ints (which mode applies, the snapped
bounds), shared by the schedule tests (tests/test_schedule.py, tests/test_schedule_kernel_host.py)."""
from hf_flashmla import schedule
from hf_flashmla.schedule import (MIN_PIECE_PAGES, MIN_PIECES_PER_SEQUENCE, PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES,
                                  SPLIT_COMBINE_PAGES)

F = SEQUENCE_OVERHEAD_PAGES


def pages_of(lengths):
    return [-(-max(n, 0) // PAGE_SIZE) for n in lengths]


def pieces_per_sequence(lengths, num_parts, combine_pages=SPLIT_COMBINE_PAGES, min_piece_pages=MIN_PIECE_PAGES):
    """The pieces rule, restated: k = parts // b >= 1 and the largest piece (ceil(max pages / k) + overhead)
    within the balanced payload + the combine cost; then k halved while pieces would hold fewer than
    min_piece_pages pages, k / 2 >= MIN_PIECES_PER_SEQUENCE and b min(max pages, k) > parts / 2. Returns k, or 0
    where the rule declines."""
    pages = pages_of(lengths)
    payload = -(-(sum(pages) + F * len(pages)) // num_parts)
    k = num_parts // len(lengths)
    if k < 1 or -(-max(pages) // k) + F > payload + combine_pages:
        return 0
    while (k >= 2 * MIN_PIECES_PER_SEQUENCE and -(-max(pages) // k) < min_piece_pages
           and 2 * len(pages) * min(max(pages), k) > num_parts):
        k //= 2
    return k


def piece_of_part(part, k, batch, num_parts):
    """The piece (index i k + j) whose bound is part bound `part`: the part itself, or, where the fewer-pieces rule
    halved k (k < parts // b), ceil(part k b / parts): the pieces spread over the parts."""
    return -(-part * k * batch // num_parts) if k < num_parts // batch else part


def one_part_per_sequence(lengths, num_parts, combine_pages=SPLIT_COMBINE_PAGES, min_piece_pages=MIN_PIECE_PAGES):
    return pieces_per_sequence(lengths, num_parts, combine_pages, min_piece_pages) == 1


def snapped_bounds(lengths, num_parts, combine_pages=SPLIT_COMBINE_PAGES):
    """The snapped schedule's bounds (each balanced bound moved to the nearer end of the sequence holding it; or
    by count, part p from sequence floor(p b / P), where that gives a strictly smaller largest part) where the
    rule takes it: b > parts (<= MAX_SNAPPED_PARTS) and its largest part within payload + combine cost; else None."""
    costs = [n + F for n in pages_of(lengths)]
    total = sum(costs)
    payload = -(-total // num_parts)
    if len(lengths) <= num_parts or num_parts > schedule.MAX_SNAPPED_PARTS:
        return None
    ends = [sum(costs[:i + 1]) for i in range(len(costs))]
    nearest = []
    for p in range(num_parts + 1):
        x = min(p * payload, total)
        i = min(sum(1 for e in ends if e <= x), len(costs) - 1)
        begin, end = ends[i] - costs[i], ends[i]
        nearest.append(begin if x - begin <= end - x else end)
    # By count: part p starts at sequence floor(p b / P); taken where its largest part is strictly smaller.
    by_count = [ends[p * len(costs) // num_parts] - costs[p * len(costs) // num_parts] for p in range(num_parts)]
    by_count.append(total)
    largest_of = lambda bounds: max(b - a for a, b in zip(bounds, bounds[1:]))  # noqa: E731
    bounds = by_count if largest_of(by_count) < largest_of(nearest) else nearest
    return bounds if largest_of(bounds) <= payload + combine_pages else None
