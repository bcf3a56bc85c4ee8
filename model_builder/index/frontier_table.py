"""The index search's record (build_info.json "index_search") as a plain-text table for `inspect --frontier`."""

from __future__ import annotations

_COLUMNS = (
    "family",
    "leaves",
    "dpb",
    "codes",
    "build s",
    "leaves_to_search",
    "reorder",
    "recall",
    "margin",
    "us/query",
    "final us/query",
    "status",
)


def _rows(record: dict) -> list[tuple]:
    rows = []
    for structure in record.get("frontier", []):
        knobs = (
            structure["family"],
            structure.get("num_leaves") or "-",
            structure.get("dimensions_per_block") or "-",
            structure.get("hash_type") or "-",
            "-" if structure.get("build_s") is None else f"{structure['build_s']:.1f}",
        )
        # A structure with no setting reaching the goal shows the best recall it measured.
        settings = structure.get("settings") or [{"best_recall": structure.get("best_recall")}]
        for setting in settings:
            cost, final = setting.get("cost_us_per_query"), setting.get("final_us_per_query")
            recall = (
                f"{setting['recall']:.4f}"
                if setting.get("recall") is not None
                else f"best {setting['best_recall']:.4f}"
                if setting.get("best_recall") is not None
                else "-"
            )
            rows.append(
                knobs
                + (
                    _dash(setting.get("leaves_to_search")),
                    _dash(setting.get("reorder")),
                    recall,
                    "-" if setting.get("margin") is None else f"{setting['margin']:.4f}",
                    "-" if cost is None else f"{cost:.0f}",
                    "-" if final is None else f"{final:.0f}",
                    structure["status"],
                )
            )
    return rows


def _confidence(record: dict) -> str:
    if record.get("confidence_z") is None:
        return ""
    return f" with a margin of {record['confidence_z']:g} standard errors ({record['gate_queries']}-query gate)"


def _dash(value) -> str:
    return "-" if value is None else str(value)


def render(record: dict | None) -> str:
    """One line per timed or skipped setting, then the choice and the budget."""
    if not record:
        return "no index search recorded (built with --no-tune, or by an older model_builder)"
    rows = [_COLUMNS] + [tuple(map(str, row)) for row in _rows(record)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    chosen = record["chosen"]
    lines += [
        "",
        f"objective: {record['objective']} (calls of {record['batch']} queries); "
        f"recall goal {record['goal']}{_confidence(record)}; "
        f"search {record['seconds']} s of a {record['budget_s']} s budget"
        f"{'' if record['within_budget'] else ' (OVER BUDGET)'}",
        f"chosen: {chosen['family']} leaves={chosen.get('num_leaves')} dpb={chosen.get('dimensions_per_block')} "
        f"{chosen.get('hash_type') or ''} leaves_to_search={chosen.get('leaves_to_search')} "
        f"reorder={chosen.get('reorder')} "
        f"recall {chosen.get('recall')}: {chosen['why']}",
        f"cost: {record['timing_method']}",
    ]
    return "\n".join(lines)
