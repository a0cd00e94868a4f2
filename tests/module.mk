# Integration tests (tests/integration/test_<name>.c) and benchmarks.
# Unit tests and fuzz targets are listed by the module that owns them.
INTEGRATION_TESTS += foundation lifecycle audit audit_sinks registry keys policy_api attest tasks delegations
INTEGRATION_TESTS += approvals last_active revocation access walkthrough audit_writer jwks_uri

BENCH_BINS += $(BUILD)/tests/bench/audit_bench $(BUILD)/tests/bench/audit_rows_bench
