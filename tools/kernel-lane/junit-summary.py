"""Count a pytest JUnit XML report: the kernel lane's own verdict, independent of the guest's rc.

    python3 junit-summary.py [--label NAME] JUNIT.xml [JUNIT.xml ...]

Prints the failed/errored/skipped test ids with their messages, then one closing line
``kernel-lane: N passed, N failed, N skipped`` (errors count as failed; ``--label`` replaces
``kernel-lane``; several reports are added up, which tests/run uses for both lanes together). Exit status: 0 when at least one test
ran (passed or failed) and none failed or errored; 1 when something failed; 3 when no test ran at
all (everything skipped, or nothing collected): a lane that tested nothing must not look green.
Standard library only: it runs on the host, outside any venv.
"""

import sys
import xml.etree.ElementTree as ET


def outcome(case: ET.Element) -> tuple[str, str]:
    for tag in ("failure", "error", "skipped"):
        child = case.find(tag)
        if child is not None:
            message = (child.get("message") or child.text or "").strip().splitlines()
            return tag, message[0] if message else ""
    return "passed", ""


def main() -> int:
    args = sys.argv[1:]
    label = "kernel-lane"
    if args[:1] == ["--label"] and len(args) >= 2:
        label, args = args[1], args[2:]
    if not args:
        raise SystemExit(__doc__)
    roots = []
    for path in args:
        try:
            roots.append(ET.parse(path).getroot())
        except (OSError, ET.ParseError) as exc:
            print(f"{label}: no usable JUnit report {path} ({exc})")
            return 3
    counts = {"passed": 0, "failure": 0, "error": 0, "skipped": 0}
    lines = []
    cases = [case for root in roots for case in root.iter("testcase")]
    suites = [suite for root in roots for suite in root.iter("testsuite")]
    for case in cases:
        kind, message = outcome(case)
        counts[kind] += 1
        if kind != "passed":
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            lines.append(f"  {kind.upper():8} {name}: {message}")
    # errors at collection time are testsuite-level in some pytest versions
    for suite in suites:
        reported = int(suite.get("errors", 0))
        seen = sum(1 for c in suite.iter("testcase") if c.find("error") is not None)
        counts["error"] += max(0, reported - seen)
    for line in lines:
        print(line)
    if counts["error"]:
        print(f"{label}: {counts['error']} of the failed are errors (setup, teardown, collection)")
    # the plain closing line CI reads: errors count as failed
    print(
        f"{label}: {counts['passed']} passed, {counts['failure'] + counts['error']} failed, "
        f"{counts['skipped']} skipped"
    )
    if counts["failure"] or counts["error"]:
        return 1
    if counts["passed"] == 0:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
