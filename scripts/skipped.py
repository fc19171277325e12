#!/usr/bin/env python3
"""List the tests that skipped, from their "skipped: <why>" line, grouped by why.

  skipped.py junit target/nextest/test-sh/junit.xml   (cargo nextest, profile test-sh)
  skipped.py libtest LOG                              (cargo test -- --show-output)

Prints nothing when no test skipped. Used by scripts/test.sh at the end of the run, so that a
run without the servers does not look like a run that tested everything.
"""
import re
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict


def from_junit(path):
    for suite in ET.parse(path).getroot().iter("testsuite"):
        for case in suite.iter("testcase"):
            text = "".join((e.text or "") for e in case if e.tag in ("system-out", "system-err"))
            for why in skips(text):
                yield f"{suite.get('name')} {case.get('name')}", why


def from_libtest(path):
    # `---- name stdout ----` heads each passing test's output; `Running unittests ...
    # (target/debug/deps/flow_core-...)` names the binary.
    binary, name = "?", None
    with open(path, errors="replace") as f:
        for line in f:
            m = re.match(r"\s*Running (?:unittests )?(\S+) \((.*)\)", line)
            if m:
                binary, name = m.group(1), None
                continue
            m = re.match(r"---- (\S+) stdout ----", line)
            if m:
                name = m.group(1)
                continue
            for why in skips(line):
                yield f"{binary} {name or '?'}", why


def skips(text):
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("skipped: "):
            yield line[len("skipped: "):]


def main():
    kind, path = sys.argv[1], sys.argv[2]
    found = from_junit(path) if kind == "junit" else from_libtest(path)
    by_why = defaultdict(set)
    for test, why in found:
        by_why[why].add(test)
    if not by_why:
        return
    total = len(set().union(*by_why.values()))
    print(f"\n==> NOT TESTED: {total} tests skipped, or ran without their server")
    for why, tests in sorted(by_why.items()):
        print(f"  {len(tests)}: {why}")
        for t in sorted(tests):
            print(f"      {t}")
    print("Start the servers (scripts/test.sh does, when it can install them) to run them; "
          "with CI set, a missing server is a failure.")


if __name__ == "__main__":
    main()
