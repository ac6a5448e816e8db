"""The red team's report: rates (TPR over copies that keep 90% of the victim's accuracy,
FPR over independent models and false accusers) and the JSON and Markdown tables."""
from __future__ import annotations

import json
from pathlib import Path


def summarize(rows) -> dict:
    def rate(selected):
        return {"shown": sum(r["verdict"] == "shown" for r in selected), "of": len(selected),
                "rate": (sum(r["verdict"] == "shown" for r in selected) / len(selected))
                if selected else None}

    stolen = [r for r in rows if r["group"] == "stolen"]
    return {
        "tpr": rate([r for r in stolen if r["retains"]]),
        "tpr_all_stolen": rate(stolen),
        "fpr_independent": rate([r for r in rows if r["group"] == "independent"]),
        "fpr_accusers": rate([r for r in rows if r["group"] == "accuser"]),
        "test_alone_fooled": sum(r["test_alone"]["verdict"] == "shown"
                                 for r in rows if r["group"] == "accuser"),
        "defeated": [r["suspect"] for r in stolen if r["retains"] and r["verdict"] != "shown"],
    }


def _fmt_rate(r) -> str:
    return f"{r['shown']}/{r['of']}" + (f" = {r['rate']:.2f}" if r["of"] else "")


def summary_text(report) -> str:
    lines = []
    for s in report["schedules"]:
        v, m = s["victim"], s["summary"]
        lines.append(
            f"[{s['schedule']}] victim accuracy {v['accuracy']:.3f}, watermark accuracy "
            f"{v['watermark_accuracy']:.2f}, predicted power {v['predicted_power']:.3f}; "
            f"TPR {_fmt_rate(m['tpr'])}, FPR independent {_fmt_rate(m['fpr_independent'])}, "
            f"FPR accusers {_fmt_rate(m['fpr_accusers'])}"
            + (f"; not shown despite keeping accuracy: {', '.join(m['defeated'])}"
               if m["defeated"] else ""))
    return "\n".join(lines)


LEGEND = """\
*task acc*: accuracy on the shared test split (digits records nobody trained on);
*victim WM acc*: share of the victim's 100 triggers on which the suspect gives the
victim's label; *ownership test*: the arbiter's sequential test on the regenerated
triggers, stopping as soon as it decides; *stopped by*: every dispute check that failed
(card, start, order, opening, ownership); *test alone*: what the same test concludes on the
triggers a false accuser presents, with no card, order or opening check. TPR counts
stolen models that keep >= 90% of the victim's accuracy. *predicted power*: the
verifier's power for the card's measured watermark accuracy (`watermark_power` check)."""


def to_markdown(report) -> str:
    out = [f"# Ownership red team (digits, {report.get('scheme', 'trigger')} watermark, alpha {report['alpha']:g}, "
           f"{report['trigger_count']} triggers{', QUICK sizes' if report['quick'] else ''})",
           "", f"{report['elapsed_s']} s. `laminate redteam{' --quick' if report['quick'] else ''}"
           f" --seed {report['seed']}` (the same seed gives the same table)", "", LEGEND, ""]
    out += ["| schedule | victim acc | WM acc (card) | epsilon | predicted power | power check "
            "| as-is copy | TPR | FPR independent | FPR accusers | defeated (kept accuracy) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in report["schedules"]:
        v, m = s["victim"], s["summary"]
        eps = f"{v['epsilon']:.2f} ({v['privacy_accounting']})" if v["epsilon"] else "-"
        pc = v["power_check"]["status"] if v["power_check"] else "-"
        as_is = next((r["verdict"] for r in s["rows"] if r["suspect"] == "as-is"), "-")
        out.append(f"| {s['schedule']} | {v['accuracy']:.3f} | {v['watermark_accuracy']:.2f} | "
                   f"{eps} | {v['predicted_power']:.3f} | {pc} | {as_is} | {_fmt_rate(m['tpr'])} | "
                   f"{_fmt_rate(m['fpr_independent'])} | {_fmt_rate(m['fpr_accusers'])} | "
                   f"{', '.join(m['defeated']) or '-'} |")
    for s in report["schedules"]:
        out += ["", f"## schedule `{s['schedule']}`", "",
                "| group | suspect | attack / claim | task acc | victim WM acc | ownership test "
                "(matches/queries, p) | verdict | stopped by | test alone on presented triggers |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in s["rows"]:
            lost = " (<90%)" if r["group"] == "stolen" and not r["retains"] else ""
            stole = f", +{r['steal_queries']} to steal" if r["steal_queries"] else ""
            t, alone = r["test"], r["test_alone"]
            test = (f"{t['matches']}/{t['queries']}, p {t['p_value']:.2g}{stole}" if t
                    else f"not run{stole}")
            alone = (f"{alone['verdict']} ({alone['matches']}/{alone['queries']}, "
                     f"p {alone['p_value']:.2g})" if r["group"] == "accuser" else "")
            out.append(
                f"| {r['group']} | {r['suspect']} | {r['attack']} | {r['accuracy']:.3f}{lost} | "
                f"{r['victim_watermark_rate']:.2f} | {test} | {r['verdict']} | "
                f"{r['stopped_by']} | {alone} |")
    return "\n".join(out) + "\n"


def write_report(report, out: Path, name: str = "redteam"):
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    md_path.write_text(to_markdown(report))
    return json_path, md_path
