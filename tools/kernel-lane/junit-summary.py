"""Count a pytest JUnit XML report: the kernel lane's own verdict, independent of the guest's rc.

    python3 junit-summary.py JUNIT.xml

Prints the failed/errored/skipped test ids with their messages, then one closing line
``kernel-lane: N passed, N failed, N skipped`` (errors count as failed). Exit status: 0 when at least one test
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
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    try:
        root = ET.parse(sys.argv[1]).getroot()
    except (OSError, ET.ParseError) as exc:
        print(f"kernel-lane: no usable JUnit report ({exc})")
        return 3
    counts = {"passed": 0, "failure": 0, "error": 0, "skipped": 0}
    lines = []
    for case in root.iter("testcase"):
        kind, message = outcome(case)
        counts[kind] += 1
        if kind != "passed":
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            lines.append(f"  {kind.upper():8} {name}: {message}")
    # errors at collection time are testsuite-level in some pytest versions
    for suite in root.iter("testsuite"):
        reported = int(suite.get("errors", 0))
        seen = sum(1 for c in suite.iter("testcase") if c.find("error") is not None)
        counts["error"] += max(0, reported - seen)
    for line in lines:
        print(line)
    if counts["error"]:
        print(f"kernel-lane: {counts['error']} of the failed are errors (setup, teardown, collection)")
    # the plain closing line CI reads: errors count as failed
    print(
        f"kernel-lane: {counts['passed']} passed, {counts['failure'] + counts['error']} failed, "
        f"{counts['skipped']} skipped"
    )
    if counts["failure"] or counts["error"]:
        return 1
    if counts["passed"] == 0:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
