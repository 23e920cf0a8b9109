"""JUnit XML test reports → one summary per job.

Parsing goes through `defusedxml` first, which refuses entity expansion (the "billion
laughs"), external entities and DTD tricks, then `junitparser` reads the suites."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from xml.etree.ElementTree import ParseError

import defusedxml.ElementTree as safe_xml
from defusedxml import DefusedXmlException

from schemas.messages import TestSummary

MAX_FAILURES = 100  # listed per job; the counts cover all
MAX_TEXT = 8_000  # characters of each failure's text


class ReportError(ValueError):
    pass


def parse_file(path: Path, name: str) -> TestSummary:
    # imported when a job has reports: ~4 MiB an idle agent does not carry
    from junitparser import Error, Failure, JUnitXml, Skipped, TestSuite

    try:
        text = path.read_bytes()
        safe_xml.fromstring(text)  # refuses what could blow up; junitparser re-reads it
        xml = JUnitXml.fromstring(text.decode("utf-8", errors="replace"))
    except DefusedXmlException as exc:
        raise ReportError(f"{name}: refused, unsafe XML ({type(exc).__name__})") from None
    except (ParseError, ValueError) as exc:
        raise ReportError(f"{name}: not JUnit XML ({exc})") from None
    root: Any = xml  # <testsuites> or a lone <testsuite>, whatever the stubs say
    suites = [root] if isinstance(root, TestSuite) else list(root)
    summary = TestSummary()
    for suite in suites:
        for case in suite:
            summary.total += 1
            summary.duration += float(case.time or 0.0)
            results = list(case.result)
            if any(isinstance(r, Skipped) for r in results):
                summary.skipped += 1
            elif bad := [r for r in results if isinstance(r, Failure | Error)]:
                if isinstance(bad[0], Error):
                    summary.errors += 1
                else:
                    summary.failed += 1
                if len(summary.failures) < MAX_FAILURES:
                    summary.failures.append(
                        {
                            "name": f"{case.classname}.{case.name}"
                            if case.classname
                            else case.name,
                            "kind": "error" if isinstance(bad[0], Error) else "failure",
                            "message": bad[0].message or "",
                            "text": (bad[0].text or "")[:MAX_TEXT],
                            "file": name,
                        }
                    )
            else:
                summary.passed += 1
    return summary


def merge(summaries: list[TestSummary]) -> TestSummary:
    total = TestSummary()
    for s in summaries:
        total.total += s.total
        total.passed += s.passed
        total.failed += s.failed
        total.skipped += s.skipped
        total.errors += s.errors
        total.duration += s.duration
        total.failures += s.failures[: MAX_FAILURES - len(total.failures)]
    return total
