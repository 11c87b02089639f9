//! What a property's generated cases exercised, counted over the whole run, so that a property
//! that passes without reaching the case it is about (a keepalive whose reply is removed from
//! the middle of the client's traffic) fails instead of passing vacuously.

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseResult, TestRunner};
use std::cell::Cell;

#[derive(Default, Debug)]
pub struct Coverage {
    /// Cases that passed.
    pub cases: Cell<u32>,
    /// Cases in which the filter sent at least one keepalive PING.
    pub pinged: Cell<u32>,
    /// Cases in which a PING's reply was removed from a Redis read that also carried bytes for
    /// the client (before or after it), before the scenario's final flush.
    pub removed_amid: Cell<u32>,
    /// PINGs sent over all cases.
    pub pings: Cell<u32>,
}

impl Coverage {
    /// One passing case: `pings` PINGs sent, `amid` of their replies removed amid client bytes.
    pub fn case(&self, pings: u32, amid: u32) {
        self.cases.set(self.cases.get() + 1);
        self.pings.set(self.pings.get() + pings);
        self.pinged.set(self.pinged.get() + u32::from(pings > 0));
        self.removed_amid
            .set(self.removed_amid.get() + u32::from(amid > 0));
    }

    /// At least `pinged_pct` % of the cases sent a PING and `amid_pct` % removed a reply amid
    /// client bytes.
    pub fn assert_floor(&self, name: &str, pinged_pct: u32, amid_pct: u32) {
        let n = self.cases.get().max(1);
        let (p, a) = (
            self.pinged.get() * 100 / n,
            self.removed_amid.get() * 100 / n,
        );
        eprintln!(
            "{name}: {} cases, {} PINGs; {p}% of cases sent a PING (floor {pinged_pct}%), \
             {a}% removed a PING's reply amid client bytes (floor {amid_pct}%)",
            self.cases.get(),
            self.pings.get()
        );
        assert!(
            p >= pinged_pct && a >= amid_pct,
            "{name}: the generated cases rarely exercise keepalives ({self:?})"
        );
    }
}

/// Run `test` over `cases` generated values as `proptest!` does (failing cases persisted beside
/// `file`), panic on a failure, and return what the passing cases covered.
#[allow(clippy::panic)] // a failed property fails the test, as proptest! does
pub fn check<S: Strategy>(
    file: &'static str,
    cases: u32,
    strategy: &S,
    test: impl Fn(S::Value, &Coverage) -> TestCaseResult,
) -> Coverage {
    let coverage = Coverage::default();
    let mut runner = TestRunner::new(Config {
        cases,
        source_file: Some(file),
        ..Config::default()
    });
    if let Err(e) = runner.run(strategy, |v| test(v, &coverage)) {
        panic!("{e}\n{runner}");
    }
    coverage
}
