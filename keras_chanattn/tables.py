"""Text and Markdown tables of result rows: the one formatter that run, bench and params share."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of a table.

    Attributes:
        key: the row key it shows.
        title: its header.
        fmt: a format string (`"{:.3f}"`) or a function `value -> str`. Defaults to `"{}"`.
        align: `"left"` or `"right"` in text tables. Defaults to `"right"`.
    """

    key: str
    title: str
    fmt: object = "{}"
    align: str = "right"


def cell(value, fmt="{}"):
    """`value` as table text: `-` for None, `yes`/`NO` for booleans, a count for lists."""
    if value is None:
        return "-"
    if callable(fmt):
        return fmt(value)
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, list):
        return str(len(value))
    return fmt.format(value)


def format_table(rows, columns, markdown=True):
    """`rows` (dicts) as a Markdown table, or an aligned text table with `markdown=False`."""
    header = [c.title for c in columns]
    lines = [[cell(row.get(c.key), c.fmt) for c in columns] for row in rows]
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines])
    widths = [max([len(h)] + [len(line[i]) for line in lines]) for i, h in enumerate(header)]

    def render(parts):
        return "  ".join(
            p.ljust(w) if c.align == "left" else p.rjust(w)
            for p, w, c in zip(parts, widths, columns, strict=True)
        )

    rule = "-" * len(render(header))
    return "\n".join([render(header), rule] + [render(line) for line in lines])
