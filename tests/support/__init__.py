"""The tests' harnesses: helpers (the repo, a tiny config, the CLI in a subprocess, a trial's results), a
real two-node Ray cluster in network namespaces (cluster), a real S3-compatible server (s3), headless
Chromium on the dashboard and the report (browser), the smoke search the suite shares (smoke)."""
