"""Records -> per-category metrics -> terminal table, Markdown and PNG plots.

Metrics (per method and category, `none` in the same run as the baseline):
    speedup        mean over questions of tokens/s, over the same mean for `none` (Spec-Bench)
    speedup_total  total tokens / total time, over the same for `none`
    tau            total new tokens / total steps (bonus included; tokens cut by EOS or the
                   length limit are not counted)
    alpha          accepted draft tokens / drafted tokens
    alpha@i        per draft position i: of the steps that drafted a token at position i and
                   accepted every token before it, the share that accepted position i too
    ± spread       the standard deviation of speedup across repeats (with --repeats > 1)
    identical      outputs equal to `none`'s, id for id
    diff margin    where outputs differ: the largest of the target's top-2 logit margins at the
                   first differing position (near 0: every difference is rounding at a near tie;
                   large: a real difference, e.g. a lossy rule or a bug)
A method whose runs used a lossy acceptance rule (a record with `lossless: false`) is shown as
`NAME (lossy)` in every table, Markdown report and plot.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

ALL = "overall"


def _mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def position_acceptance(records: list[dict], positions: int = 4) -> list[float | None]:
    reached, kept = [0] * positions, [0] * positions
    for r in records:
        for drafted, accepted in zip(r.get("drafted_per_step") or [], r.get("accepted_per_step") or []):
            for i in range(min(drafted, accepted + 1, positions)):
                reached[i] += 1
                kept[i] += accepted > i
    return [k / n if n else None for k, n in zip(kept, reached)]


def _std(xs: list[float]) -> float | None:
    if len(xs) < 2:
        return None
    m = _mean(xs)
    return (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5


def summarize(records: list[dict]) -> list[dict]:
    """One row per (method, category) plus one per method over everything."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["method"], r["category"])].append(r)
        groups[(r["method"], ALL)].append(r)
    methods = list(dict.fromkeys(r["method"] for r in records))
    categories = [*dict.fromkeys(r["category"] for r in records), ALL]
    baseline = methods[0]

    def tps(rs):
        return _mean(r["new_tokens"] / r["wall_time"] for r in rs if r["wall_time"] > 0)

    def total_tps(rs):
        return sum(r["new_tokens"] for r in rs) / sum(r["wall_time"] for r in rs)

    lossy = {r["method"] for r in records if r.get("lossless") is False}
    rows = []
    for cat in categories:
        base = groups[(baseline, cat)]
        for m in methods:
            rs = groups[(m, cat)]
            if not rs:
                continue
            steps = [r["steps"] for r in rs if r["steps"] is not None]
            drafted = sum(r["drafted"] or 0 for r in rs)
            wall = sum(r["wall_time"] for r in rs)
            drafter = [r["drafter_time"] for r in rs if r["drafter_time"] is not None]
            divs = [r["first_divergence"] for r in rs if r["first_divergence"] is not None]
            margins = [r["divergence_margin"] for r in rs if r.get("divergence_margin") is not None]
            repeats = sorted({r.get("repeat", 0) for r in rs})
            per_repeat = [tps([r for r in rs if r.get("repeat", 0) == k]) / tps([r for r in base if r.get("repeat", 0) == k])
                          for k in repeats]
            rows.append({
                "method": f"{m} (lossy)" if m in lossy else m, "name": m, "lossless": m not in lossy,
                "category": cat, "turns": len(rs),
                "new_tokens": sum(r["new_tokens"] for r in rs),
                "tokens_per_s": tps(rs),
                "speedup": tps(rs) / tps(base),
                "speedup_std": _std(per_repeat),
                "speedup_total": total_tps(rs) / total_tps(base),
                "tau": sum(r["new_tokens"] for r in rs) / sum(steps) if steps else None,
                "alpha": sum(r["accepted"] or 0 for r in rs) / drafted if drafted else None,
                "alpha_pos": position_acceptance(rs) if drafted else None,
                "drafter_share": sum(drafter) / wall if drafter and wall else None,
                "identical": sum(r["matches_baseline"] for r in rs),
                "first_divergence": min(divs) if divs else None,
                "divergence_margin": max(margins) if margins else None,
            })
    return rows


def _fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


COLUMNS = [
    ("method", "method", str),
    ("category", "category", str),
    ("speedup", "speedup", None),
    ("speedup_total", "speedup (total)", lambda v: _fmt(v) + "x"),
    ("tau", "τ", _fmt),
    ("alpha", "α", _fmt),
    ("alpha_pos", "α@1/2/3/4", lambda v: "-" if v is None else "/".join(_fmt(a) for a in v)),
    ("tokens_per_s", "tok/s", lambda v: _fmt(v, ".1f")),
    ("drafter_share", "drafter share", lambda v: "-" if v is None else f"{100 * v:.0f}%"),
    ("identical", "= none", None),
    ("first_divergence", "first diff", lambda v: "-" if v is None else str(v)),
    ("divergence_margin", "diff margin", lambda v: "-" if v is None else f"{v:.3f}"),
]


def table_rows(rows: list[dict]) -> list[list[str]]:
    out = []
    for r in rows:
        cells = []
        for key, _, fmt in COLUMNS:
            if key == "identical":
                cells.append(f"{r['identical']}/{r['turns']}")
            elif key == "speedup":
                spread = f" ±{r['speedup_std']:.2f}" if r.get("speedup_std") is not None else ""
                cells.append(f"{r['speedup']:.2f}x{spread}")
            else:
                cells.append(fmt(r[key]))
        out.append(cells)
    return out


def print_table(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title))
    for _, header, _ in COLUMNS:
        table.add_column(header, justify="left" if header in ("method", "category") else "right")
    last_cat = None
    for r, cells in zip(rows, table_rows(rows)):
        if last_cat is not None and r["category"] != last_cat:
            table.add_section()
        last_cat = r["category"]
        table.add_row(*map(escape, cells))  # specs nest in brackets: text, not rich markup
    console = Console()
    if not console.is_terminal:  # a log file or a pipe: do not squeeze the table into 80 columns
        console = Console(width=200)
    console.print(table)


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(rows)]
    return "\n".join(lines)


def plot(rows: list[dict], records: list[dict], out_dir: Path, title: str) -> list[Path]:
    """speedup.png (per category and method) and tau_hist.png (tokens per step, per method)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in rows))
    categories = list(dict.fromkeys(r["category"] for r in rows))
    by = {(r["method"], r["category"]): r for r in rows}
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(min(16.0, max(6.0, 0.3 * len(categories) * len(methods))), 4.5))
    for i, m in enumerate(methods):
        xs = [c + (i - (len(methods) - 1) / 2) * width for c in range(len(categories))]
        ax.bar(xs, [by[(m, c)]["speedup"] if (m, c) in by else 0 for c in categories], width, label=m)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
    ax.set_ylabel("speedup over none (x)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths = [out_dir / "speedup.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    name = {r["method"]: r.get("name", r["method"]) for r in rows}  # row label ("x (lossy)") -> records' method
    spec = [m for m in methods if any(r["method"] == name[m] and r["accepted_per_step"] for r in records)]
    if spec:
        fig, ax = plt.subplots(figsize=(6, 4))
        top = max(a for r in records if r["accepted_per_step"] for a in r["accepted_per_step"]) + 1
        for m in spec:
            taus = [a + 1 for r in records if r["method"] == name[m] and r["accepted_per_step"] for a in r["accepted_per_step"]]
            ax.hist(taus, bins=range(1, top + 2), alpha=0.5, label=m, density=True, align="left")
        ax.set_xlabel("tokens per step (τ, bonus included)")
        ax.set_ylabel("share of steps")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(out_dir / "tau_hist.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def report_head(title: str, script: str, setup: str) -> list[str]:
    """A benchmark report's first lines: the title, the command that made it (`script` with this
    process's arguments), and when, on what machine, with what `setup`."""
    import datetime as dt
    import platform
    import sys

    return [f"# {title}", "", "`python " + " ".join([script, *sys.argv[1:]]) + "`", "",
            f"{dt.datetime.now().isoformat(timespec='seconds')}, {platform.machine()}, {setup}", ""]
