"""Run reports: metrics.jsonl written as the job runs, report.html rendered from it."""

from tlt.report.log import MetricsLog, read_records
from tlt.report.html import render_report, write_report

__all__ = ["MetricsLog", "read_records", "render_report", "write_report"]
