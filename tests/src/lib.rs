//! Scenario and property tests live in `tests/`.
