//! The workspace's policy for tests that cannot find their data or model:
//! they skip with a message on a developer's machine, and fail when
//! `FIRSTRANK_REQUIRE_DATA=1` (CI sets it), so a green CI run never hides a
//! test that checked nothing.

/// Whether a test that cannot find its data or model must fail.
pub fn data_required() -> bool {
    std::env::var("FIRSTRANK_REQUIRE_DATA").as_deref() == Ok("1")
}

/// Reports a test that cannot run for want of something (`why` says what and
/// how to provide it): panics under [`data_required`], else prints a SKIP
/// line on stderr and returns, for the caller to return too.
pub fn skip_or_fail(why: &str) {
    if data_required() {
        panic!("FIRSTRANK_REQUIRE_DATA=1, but {why}");
    }
    eprintln!("SKIP: {why}");
}

/// Cases per property test: `PROPTEST_CASES`, else 64 (a quick CI run).
pub fn property_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}
