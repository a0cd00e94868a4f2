#!/usr/bin/env bash
# The shipped policies' test cases (policies/tests/*.json), run by idpd itself.
# Sourced by tests/support/run-tests.sh, which reads the last line:
# "N passed, N failed".
cd "$(dirname "${BASH_SOURCE[0]}")/../../.." || exit 1
"$IDPD_BIN" policy test policies
