"""Run the openai and anthropic SDKs' own unit tests with the middleware off and on, and compare.

The issue's contract: the SDKs' own tests pass the same with the middleware enabled as without
it, except tests that mock the provider host itself, which routing bypasses by design. This
package is what `scripts/sdk-suites` runs:

- `environment`: one virtualenv per SDK under .venv/sdk-suites/ (the checkout, the SDK at the
  version the project's test extra resolves, the SDK's test dependencies) and the SDK's
  published source release, which holds its tests;
- `modes`: the environment each of the three runs gets (off, routed, hooks on with nothing
  routed), with nothing able to leave the machine;
- `outcomes`: per-test outcomes from pytest's JUnit XML, their comparison across modes, and
  the checked-in list of expected differences (expected.txt).

Only the standard library is used here: the script runs on the machine's own python3 before
any virtualenv exists.
"""
